"""A ``predict``/``chain_of_thought`` module with ``instructions:`` and ``demos:`` sends the LM
exactly what ``dspy.Predict``/``dspy.ChainOfThought`` with the same signature, instructions and
demos send through the same adapter.

Both sides talk to the loopback OpenAI-compatible server through one ``dspy.LM``; the messages
each request carried are compared as the JSON text the server received.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import dspy
import pytest
from tests.support.openai_server import OpenAIServer

from dspex.backends.dspy_backend import DspyBackend
from dspex.engine.engine import Engine
from dspex.engine.program import Program
from dspex.errors import SpecError
from dspex.records import ExecutionStatus

INSTRUCTIONS = "Answer the question in one word, then rate how sure you are."
SIGNATURE = "question: str, context: list[str] -> answer: str, score: int"
DEMOS: list[dict[str, Any]] = [
    {
        "question": "Capital of France?",
        "context": ["Paris is in France."],
        "answer": "Paris",
        "score": 9,
    },
    {"question": "2 + 2?", "context": [], "answer": "4", "score": 10},
    # a demo with only some fields, as a bootstrapped or hand-written one may be
    {"question": "Colour of the sky?", "answer": "blue"},
]
INPUTS = {"question": "Largest planet?", "context": ["Jupiter is the largest planet."]}


@pytest.fixture
async def lm(openai_server: OpenAIServer) -> AsyncIterator[Any]:
    lm = dspy.LM("openai/test", api_base=openai_server.url, api_key="x", cache=False, num_retries=0)
    yield lm
    await lm.aclose()


def _sent(server: OpenAIServer) -> list[str]:
    """Each request's messages as the exact JSON text of what arrived."""
    return [json.dumps(r.json["messages"], ensure_ascii=False) for r in server.requests]


def _program(kind: str, **module: Any) -> Program:
    return Program.from_dict(
        {
            "name": "qa",
            "signature": SIGNATURE,
            "modules": {"qa": {"kind": kind, "signature": SIGNATURE, **module}},
        }
    )


async def _run_dspex(lm: Any, program: Program, adapter: Any = None) -> None:
    backend = DspyBackend("default", lm=lm, adapter=adapter)
    async with Engine(backends={"default": backend}) as engine:
        result = await engine.run(program, INPUTS)
    assert result.status is ExecutionStatus.COMPLETED, result.error


async def _run_dspy(lm: Any, kind: str, adapter: Any, instructions: str | None) -> None:
    signature = dspy.Signature(SIGNATURE, instructions)
    module = (
        dspy.ChainOfThought(signature) if kind == "chain_of_thought" else dspy.Predict(signature)
    )
    predictor = module.predict if kind == "chain_of_thought" else module
    predictor.demos = [dspy.Example(**demo) for demo in DEMOS]
    with dspy.context(lm=lm, adapter=adapter):
        await module.acall(**INPUTS)


@pytest.mark.parametrize("kind", ["predict", "chain_of_thought"])
@pytest.mark.parametrize("adapter", ["chat", "json"])
async def test_instructions_and_demos_send_the_messages_dspy_sends(
    openai_server: OpenAIServer, lm: Any, kind: str, adapter: str
) -> None:
    def make() -> Any:
        return dspy.JSONAdapter() if adapter == "json" else dspy.ChatAdapter()

    program = _program(kind, instructions=INSTRUCTIONS, demos=DEMOS)
    # the chat case runs on the backend's default adapter, as a program normally does
    await _run_dspex(lm, program, make() if adapter == "json" else None)
    await _run_dspy(lm, kind, make(), INSTRUCTIONS)
    ours, stock = _sent(openai_server)
    assert ours == stock
    assert INSTRUCTIONS in ours
    assert "Capital of France?" in ours


async def test_demos_without_instructions_send_dspys_default_instructions(
    openai_server: OpenAIServer, lm: Any
) -> None:
    await _run_dspex(lm, _program("predict", demos=DEMOS))
    await _run_dspy(lm, "predict", dspy.ChatAdapter(), None)
    ours, stock = _sent(openai_server)
    assert ours == stock


async def test_module_instructions_replace_those_of_the_module_signature(
    openai_server: OpenAIServer, lm: Any
) -> None:
    signature = {
        "instructions": "Say something else entirely.",
        "inputs": {"question": "str", "context": "list[str]"},
        "outputs": {"answer": "str", "score": "int"},
    }
    program = Program.from_dict(
        {
            "name": "qa",
            "signature": SIGNATURE,
            "modules": {
                "qa": {
                    "kind": "predict",
                    "signature": signature,
                    "instructions": INSTRUCTIONS,
                    "demos": DEMOS,
                }
            },
        }
    )
    assert program.module_signature("qa").instructions == INSTRUCTIONS
    await _run_dspex(lm, program)
    await _run_dspy(lm, "predict", dspy.ChatAdapter(), INSTRUCTIONS)
    ours, stock = _sent(openai_server)
    assert ours == stock


def test_instructions_on_a_module_kind_without_an_lm_prompt_are_refused() -> None:
    with pytest.raises(SpecError, match="'instructions' applies only to predict"):
        Program.from_dict(
            {
                "name": "p",
                "signature": "q: str -> y: str",
                "modules": {
                    "m": {
                        "kind": "python",
                        "signature": "q: str -> y: str",
                        "function": "pkg.mod:f",
                        "instructions": "x",
                    }
                },
            }
        )


def test_a_dict_form_module_signature_keeps_its_field_order() -> None:
    signature = {
        "inputs": {"question": "str", "context": "list[str]"},
        "outputs": {"score": "int", "answer": "str"},
    }
    program = Program.from_dict(
        {
            "name": "qa",
            "signature": SIGNATURE,
            "modules": {"qa": {"kind": "predict", "signature": signature}},
        }
    )
    module = program.module_signature("qa")
    assert module.input_names == ("question", "context")
    assert module.output_names == ("score", "answer")


async def test_demos_and_inputs_with_dspy_types_send_what_dspy_sends(
    openai_server: OpenAIServer, lm: Any
) -> None:
    text = "image: Image, history: History, question: str -> answer: str"
    cat, dog = "https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="
    demos = [{"image": cat, "history": [], "question": "What animal?", "answer": "A cat."}]
    inputs = {"image": dog, "history": [{"question": "Hi?", "answer": "Hello."}], "question": "Q?"}
    program = Program.from_dict(
        {
            "name": "see",
            "signature": text,
            "modules": {"see": {"kind": "predict", "signature": text, "demos": demos}},
        }
    )
    async with Engine(backends={"default": DspyBackend("default", lm=lm)}) as engine:
        result = await engine.run(program, inputs)
    assert result.status is ExecutionStatus.COMPLETED, result.error
    predict = dspy.Predict(
        dspy.Signature(text.replace("Image", "dspy.Image").replace("History", "dspy.History"))
    )
    predict.demos = [
        dspy.Example(
            image=dspy.Image(url=cat),
            history=dspy.History(messages=[]),
            question="What animal?",
            answer="A cat.",
        )
    ]
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        await predict.acall(
            image=dspy.Image(url=dog),
            history=dspy.History(messages=inputs["history"]),
            question="Q?",
        )
    ours, stock = _sent(openai_server)
    assert ours == stock
    assert '"image_url"' in ours


def test_a_demo_whose_image_is_not_a_url_is_refused_when_the_program_loads() -> None:
    text = "image: Image, question: str -> answer: str"
    demos = [
        {"image": "https://example.com/cat.png", "question": "q", "answer": "a"},
        {"image": "/etc/passwd", "question": "q", "answer": "a"},
    ]
    with pytest.raises(SpecError) as info:
        Program.from_dict(
            {
                "name": "see",
                "signature": text,
                "modules": {"see": {"kind": "predict", "signature": text, "demos": demos}},
            }
        )
    (problem,) = info.value.errors
    assert (problem.field, problem.code) == ("modules.see.demos[1].image", "wrong_type")


async def test_the_openai_backend_sends_dspy_typed_values_as_dspy_does(
    openai_server: OpenAIServer, lm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dspex.backends.base import PredictRequest
    from dspex.backends.openai_backend import OpenAIBackend
    from dspex.signatures.signature import Signature

    monkeypatch.setenv("DSPEX_TEST_OPENAI_KEY", "x")
    sig = Signature.parse("image: Image, question: str -> answer: str, snippet: Code")
    cat = "https://example.com/cat.png"
    demo = {"image": cat, "question": "What?", "answer": "A cat.", "snippet": "print(1)"}
    backend = OpenAIBackend(
        "loopback",
        base_url=openai_server.base_url,
        model="test",
        api_key_env="DSPEX_TEST_OPENAI_KEY",
    )
    inputs = sig.validate_inputs({"image": {"url": cat}, "question": "And now?"})
    try:
        result = await backend.complete(PredictRequest(signature=sig, inputs=inputs, demos=[demo]))
    finally:
        await backend.aclose()
    assert isinstance(result.outputs["snippet"], str)
    assert sig.validate_outputs(result.outputs) == result.outputs
    predict = dspy.Predict(sig.to_dspy())
    predict.demos = [dspy.Example(**{**demo, "image": dspy.Image(url=cat)})]
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        await predict.acall(image=dspy.Image(url=cat), question="And now?")
    ours, stock = _sent(openai_server)
    assert ours == stock
    assert '"image_url"' in ours
