"""An optimized DSPy program, end to end on SQLite and PostgreSQL: a forward-only module with
constructor arguments, optimized by BootstrapFewShot on DummyLM, saved with ``.save("x.json")``,
registered with ``state: x.json`` (stored inline), executed and run as a batch.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dspy.utils import DummyLM
from tests.engine.dspy_native_modules import REF, bootstrapped_qa
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind

from dspex.backends.dspy_backend import DspyBackend
from dspex.config import Settings
from dspex.errors import PathNotAllowedError, SpecError
from dspex.runtime import Runtime
from dspex.telemetry import Telemetry

QUESTIONS = ("alpha", "bravo", "charlie", "delta")
ANSWERS = {q: {"reasoning": f"thinking about {q}", "answer": q.upper()} for q in QUESTIONS}


@pytest.fixture(params=["sqlite", POSTGRES])
async def runtime(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Runtime, DummyLM]]:
    """A started runtime whose default backend is DSPy on a DummyLM, ``REF`` allow-listed."""
    lm = DummyLM(ANSWERS)
    async with (
        open_kind(request.param, request, FakeClock()) as store,
        Runtime(
            Settings(allowed_imports=(REF,)),
            store,
            backends={"default": DspyBackend("default", lm=lm)},
            worker_id="worker-1",
            telemetry=Telemetry(spans=False),
        ) as rt,
    ):
        yield rt, lm


def write_program(directory: Path, state: str = "qa.json") -> Path:
    spec: dict[str, Any] = {
        "name": "qa",
        "signature": "question: str -> answer: str",
        "modules": {
            "qa": {
                "kind": "dspy",
                "module": f"{REF}:QA",
                "signature": "question: str -> answer: str",
                "init": {"prefix": "Q: "},
                "state": state,
            }
        },
    }
    path = directory / "qa.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


async def test_an_optimized_forward_only_module_executes_and_runs_as_a_batch(
    runtime: tuple[Runtime, DummyLM], tmp_path: Path
) -> None:
    rt, lm = runtime
    bootstrapped_qa().save(str(tmp_path / "qa.json"))
    info = await rt.register(write_program(tmp_path))
    info = await rt.initialize(info.name, info.version)
    assert info.status == "ready", info.error

    result = await rt.execute("qa", {"question": "alpha"})
    assert (result.status, result.outputs) == ("completed", {"answer": "ALPHA"})
    assert "train question 0" in json.dumps(lm.history[-1]["messages"])  # the demos were used

    batch = await rt.run_batch("qa", [{"question": q} for q in QUESTIONS], max_concurrency=4)
    assert batch.stats.completed == len(QUESTIONS)
    assert batch.results is not None
    assert [r.outputs for r in batch.results] == [{"answer": q.upper()} for q in QUESTIONS]


async def test_the_state_is_stored_inline_and_a_new_state_is_a_new_version(
    runtime: tuple[Runtime, DummyLM], tmp_path: Path
) -> None:
    rt, _ = runtime
    bootstrapped_qa().save(str(tmp_path / "qa.json"))
    first = await rt.register(write_program(tmp_path))
    again = await rt.register(write_program(tmp_path))
    assert again.version == first.version  # same file, same content: the same version

    stored = (await rt.load_program("qa", first.version)).to_dict()["modules"]["qa"]
    demos = stored["state"]["answer.predict"]["demos"]
    assert [d["answer"] for d in demos] == ["train answer 0", "train answer 1"]

    # re-optimized (other demos), saved over the same file: a new version, the old one intact
    bootstrapped_qa(prefix="Again: ").save(str(tmp_path / "qa.json"))
    second = await rt.register(write_program(tmp_path))
    assert second.version == first.version + 1
    old = (await rt.load_program("qa", first.version)).to_dict()["modules"]["qa"]
    assert old["state"]["answer.predict"]["demos"][0]["question"] == "Q: train question 0"


async def test_a_missing_state_file_fails_registration_and_stores_nothing(
    runtime: tuple[Runtime, DummyLM], tmp_path: Path
) -> None:
    rt, _ = runtime
    with pytest.raises(SpecError) as info:
        await rt.register(write_program(tmp_path, state="missing.json"))
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("modules.qa.state", "state_not_found")
    ]
    assert await rt.list_programs() == []


async def test_a_state_path_in_a_mapping_must_be_in_corpus_dirs(
    runtime: tuple[Runtime, DummyLM], tmp_path: Path
) -> None:
    rt, _ = runtime
    bootstrapped_qa().save(str(tmp_path / "qa.json"))
    spec = yaml.safe_load(write_program(tmp_path, state=str(tmp_path / "qa.json")).read_text())
    with pytest.raises(PathNotAllowedError):
        await rt.register(spec)  # what the HTTP service passes: no program directory


@pytest.mark.parametrize("allow_pickle", [False, True])
async def test_allow_pickle_in_the_settings_decides_whether_a_saved_program_loads(
    request: pytest.FixtureRequest, tmp_path: Path, allow_pickle: bool
) -> None:
    bootstrapped_qa().save(str(tmp_path / "saved"), save_program=True)
    lm = DummyLM(ANSWERS)
    async with (
        open_kind("sqlite", request, FakeClock()) as store,
        Runtime(
            Settings(allowed_imports=(REF,), allow_pickle=allow_pickle),
            store,
            backends={"default": DspyBackend("default", lm=lm)},
            worker_id="worker-1",
            telemetry=Telemetry(spans=False),
        ) as rt,
    ):
        info = await rt.register(write_program(tmp_path, state="saved"))
        info = await rt.initialize(info.name, info.version)
        if not allow_pickle:
            assert info.status == "error"
            assert "allow_pickle = true" in (info.error or "")
            return
        assert info.status == "ready", info.error
        result = await rt.execute("qa", {"question": "bravo"})
    assert (result.status, result.outputs) == ("completed", {"answer": "BRAVO"})
