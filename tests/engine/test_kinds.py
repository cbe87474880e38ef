"""Module kinds: python functions under the allow-list, dspy modules, retrieval."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from engine_specs import program

from dspex.backends.mock import MockBackend
from dspex.engine.engine import Engine
from dspex.engine.kinds import import_allowed
from dspex.engine.program import Program
from dspex.errors import SecurityError
from dspex.records import ExecutionStatus

USER_CODE = """
import asyncio

CALLS = []

def shout(text):
    CALLS.append(text)
    return {"loud": text.upper()}

async def count(text):
    await asyncio.sleep(0)
    return len(text)

def broken(text):
    raise KeyError("nope")
"""


@pytest.fixture
def userpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pkg = tmp_path / "enginetest_userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "funcs.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "enginetest_userpkg"
    for name in [m for m in sys.modules if m.startswith("enginetest_userpkg")]:
        del sys.modules[name]


def python_module(ref: str, signature: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "python", "function": ref, "signature": signature, **fields}


@pytest.mark.parametrize(
    ("ref", "prefixes", "allowed"),
    [
        ("myproj.x:f", ("myproj",), True),
        ("myproj:f", ("myproj",), True),
        ("myproject.x:f", ("myproj",), False),
        ("os:system", ("myproj",), False),
        ("myproj.x:f", ("myproj.x:f",), True),
        ("myproj.x:g", ("myproj.x:f",), False),
        ("myproj.x:f", (), False),
    ],
)
def test_import_allow_list_matches_on_dotted_boundaries(
    ref: str, prefixes: tuple[str, ...], allowed: bool
) -> None:
    assert import_allowed(ref, prefixes) is allowed


async def test_python_reference_outside_the_allow_list_is_refused_before_import() -> None:
    spec = program({"a": python_module("os:system", "q: str -> y: str", inputs={"q": "$input.q"})})
    engine = Engine(backends={"default": MockBackend()}, allowed_imports=("myproj",))
    with pytest.raises(SecurityError) as info:
        await engine.run(Program.from_dict(spec), {"q": "echo hi"})
    assert info.value.code == "import_not_allowed"


async def test_python_modules_run_sync_and_async_functions(userpkg: str) -> None:
    spec = program(
        {
            "s": python_module(
                f"{userpkg}.funcs:shout", "text: str -> loud: str", inputs={"text": "$input.q"}
            ),
            "c": python_module(
                f"{userpkg}.funcs:count", "text: str -> n: int", inputs={"text": "s.loud"}
            ),
        },
        signature="q: str -> loud: str, n: int",
    )
    async with Engine(backends={}, allowed_imports=(userpkg,)) as engine:
        result = await engine.run(Program.from_dict(spec), {"q": "hey"})
    assert result.outputs == {"loud": "HEY", "n": 3}
    assert result.step("s").backend is None


async def test_python_module_exception_becomes_module_failed(userpkg: str) -> None:
    spec = program(
        {
            "y": python_module(
                f"{userpkg}.funcs:broken", "text: str -> y: str", inputs={"text": "$input.q"}
            )
        }
    )
    async with Engine(backends={}, allowed_imports=(userpkg,)) as engine:
        result = await engine.run(Program.from_dict(spec), {"q": "x"})
    step = result.step("y")
    assert (step.error_code, result.status) == ("module_failed", ExecutionStatus.FAILED)
    assert "KeyError" in (step.error_message or "")


DSPY_CODE = """
import dspy

class Answer(dspy.Module):
    def __init__(self):
        super().__init__()
        self.predict = dspy.Predict("question -> answer")

    async def aforward(self, question):
        return await self.predict.acall(question=question)
"""


async def test_dspy_module_runs_with_the_backends_lm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dspy.utils import DummyLM

    (tmp_path / "enginetest_dspymod.py").write_text(DSPY_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))

    class LMBackend(MockBackend):
        lm = DummyLM([{"answer": "Paris"}])

    spec = program(
        {
            "a": {
                "kind": "dspy",
                "module": "enginetest_dspymod:Answer",
                "signature": "question: str -> answer: str",
                "backend": "default",
            }
        },
        signature="question: str -> answer: str",
    )
    engine = Engine(backends={"default": LMBackend()}, allowed_imports=("enginetest_dspymod",))
    result = await engine.run(Program.from_dict(spec), {"question": "Capital of France?"})
    assert result.outputs == {"answer": "Paris"}
    sys.modules.pop("enginetest_dspymod", None)


class BagOfWords:
    """A tiny deterministic embedder (the retriever accepts any ``Embedder``)."""

    name = "bag-of-words"
    vocabulary = ("paris", "france", "rome", "italy", "capital")

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(word in text.lower()) + 1e-3 for word in self.vocabulary] for text in texts]


async def test_retrieve_returns_top_k_passages_from_a_corpus_next_to_the_program(
    tmp_path: Path,
) -> None:
    (tmp_path / "corpus.txt").write_text(
        "Rome is the capital of Italy.\nParis is the capital of France.\nBread is baked.\n"
    )
    (tmp_path / "rag.yaml").write_text(
        textwrap.dedent(
            """
            name: rag
            signature: "q: str -> passages: list[str]"
            modules:
              r: {kind: retrieve, corpus: corpus.txt, k: 1, inputs: {query: $input.q}}
            """
        )
    )
    engine = Engine(backends={}, embedder=BagOfWords())
    result = await engine.run(Program.from_file(tmp_path / "rag.yaml"), {"q": "paris france"})
    assert result.outputs == {"passages": ["Paris is the capital of France."]}
    await engine.aclose()


async def test_missing_corpus_and_unknown_backend_are_reported_together(tmp_path: Path) -> None:
    from dspex.errors import GraphError

    spec = program(
        {
            "r": {"kind": "retrieve", "corpus": "nope.txt", "inputs": {"query": "$input.q"}},
            "g": {
                "kind": "predict",
                "signature": "passages: list[str] -> y: str",
                "inputs": {"passages": "r.passages"},
                "backend": "gpt",
            },
        }
    )
    engine = Engine(backends={"default": MockBackend()})
    problems = engine.validate(Program.from_dict(spec, base_dir=tmp_path))
    assert [(p.field, p.code) for p in problems] == [
        ("modules.r.corpus", "corpus_not_found"),
        ("modules.g.backend", "unknown_backend"),
    ]
    with pytest.raises(GraphError):
        engine.check(Program.from_dict(spec, base_dir=tmp_path))
