"""A program as a ``dspy.Module`` (what optimizers see), and the way back to a spec."""

from __future__ import annotations

import asyncio
from typing import Any

import dspy
import pytest
from dspy.utils import DummyLM

import dspex
from dspex.backends.base import BackendHealth, PredictRequest, PredictResult
from dspex.backends.dspy_backend import DspyBackend
from dspex.config import Settings
from dspex.engine.dspy_program import PredictorBackend, optimized_spec, program_module
from dspex.errors import ConfigError, ModuleError

HERE = "tests.optimize.test_dspy_program"

TRIAGE: dict[str, Any] = {
    "name": "triage",
    "signature": "ticket: str -> urgent: bool",
    "modules": {
        "summarize": {
            "kind": "predict",
            "signature": "ticket: str -> summary: str",
            "demos": [{"ticket": "printer on fire", "summary": "fire"}],
        },
        "flag": {
            "kind": "chain_of_thought",
            "signature": "summary: str -> urgent: bool",
            "inputs": {"summary": "summarize.summary"},
            "instructions": "Say whether it is urgent.",
        },
    },
}


class Recording:
    """A backend that answers every call and keeps each request."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.requests: list[PredictRequest] = []

    async def complete(self, request: PredictRequest) -> PredictResult:
        self.requests.append(request)
        if request.module == "summarize":
            return PredictResult({"summary": f"sum of {request.inputs['ticket']}"})
        return PredictResult({"urgent": True}, extras={"reasoning": "it burns"})

    async def health(self) -> BackendHealth:
        return BackendHealth("healthy")

    async def aclose(self) -> None:
        pass


def _module(backend: Recording) -> tuple[dspex.Program, Any, dspex.Engine]:
    program = dspex.Program.from_dict(TRIAGE)
    engine = dspex.Engine({"default": PredictorBackend(backend)})
    return program, program_module(program, engine), engine


async def test_lm_modules_are_predictors_named_as_the_modules_are() -> None:
    _program, module, engine = _module(Recording())
    names = [name for name, _ in module.named_predictors()]
    assert names == ["summarize", "flag.predict"]
    assert isinstance(module.summarize, dspy.Predict)
    assert isinstance(module.flag, dspy.ChainOfThought)
    assert [dict(d.items()) for d in module.summarize.demos] == [
        {"ticket": "printer on fire", "summary": "fire"}
    ]
    assert module.flag.predict.signature.instructions == "Say whether it is urgent."
    await engine.aclose()


async def test_forward_runs_the_graph_and_records_each_predictor_call_in_the_trace() -> None:
    backend = Recording()
    _, module, engine = _module(backend)

    def call() -> tuple[Any, list[Any]]:
        with dspy.context(trace=[]):
            prediction = module(ticket="server down")
            return prediction, list(dspy.settings.trace)

    prediction, trace = await asyncio.to_thread(call)
    assert prediction.urgent is True
    assert [(step[0], step[1]) for step in trace] == [
        (module.summarize, {"ticket": "server down"}),
        (module.flag.predict, {"summary": "sum of server down"}),
    ]
    assert trace[1][2].reasoning == "it burns"  # what a ChainOfThought's trace holds
    assert [r.module for r in backend.requests] == ["summarize", "flag"]
    await engine.aclose()


async def test_calls_use_the_demos_and_instructions_the_predictor_holds_now() -> None:
    backend = Recording()
    program, module, engine = _module(backend)
    copy = module.deepcopy()
    copy.summarize.demos = [dspy.Example(ticket="t", summary="s", augmented=True)]
    copy.flag.predict.signature = copy.flag.predict.signature.with_instructions("Be brief.")
    await copy.acall(ticket="x")
    await module.acall(ticket="y")
    first, second, third, fourth = backend.requests
    assert list(first.demos) == [{"ticket": "t", "summary": "s", "augmented": True}]
    assert second.signature.instructions == "Be brief."
    assert list(third.demos) == [{"ticket": "printer on fire", "summary": "fire"}]
    assert fourth.signature.instructions == "Say whether it is urgent."

    spec = optimized_spec(program, copy, metadata={"note": 1})
    assert spec["modules"]["summarize"]["demos"] == [
        {"ticket": "t", "summary": "s", "augmented": True}
    ]
    assert spec["modules"]["flag"]["instructions"] == "Be brief."
    assert spec["metadata"] == {"note": 1}
    unchanged = optimized_spec(program, module)
    assert unchanged == program.to_dict()
    dspex.Program.from_dict(spec)  # the way back loads
    await engine.aclose()


async def test_a_failed_run_raises_and_a_sync_call_on_the_loop_is_refused() -> None:
    program = dspex.Program.from_dict(TRIAGE)
    failing = dspex.Engine({"default": PredictorBackend(dspex.MockBackend(failure_rate=1.0))})
    module = program_module(program, failing)
    with pytest.raises(ModuleError, match="run failed"):
        await module.acall(ticket="x")
    with pytest.raises(ModuleError, match="event loop"):
        module(ticket="x")
    await failing.aclose()


async def test_programs_an_optimizer_cannot_use_are_refused() -> None:
    engine = dspex.Engine()
    python_only = dspex.Program.from_dict(
        {
            "name": "p",
            "signature": "q: str -> n: int",
            "modules": {
                "count": {"kind": "python", "function": "x.y:z", "signature": "q -> n: int"}
            },
        }
    )
    with pytest.raises(ConfigError, match="no predict or chain_of_thought"):
        program_module(python_only, engine)
    clash = dspex.Program.from_dict(
        {
            "name": "c",
            "signature": "q: str -> a: str",
            "modules": {"forward": {"kind": "predict", "signature": "q: str -> a: str"}},
        }
    )
    with pytest.raises(ConfigError, match="rename"):
        program_module(clash, engine)
    await engine.aclose()


class Answerer(dspy.Module):
    """A DSPy module of one predictor, optimized as itself."""

    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        return self.respond(question=question)


async def test_a_dspy_module_program_is_optimized_as_itself() -> None:
    answers = {f"q{i}": {"answer": f"a{i}"} for i in range(6)}
    lm = DummyLM(answers)
    backends = {"default": DspyBackend("default", lm=lm)}
    settings = Settings(allowed_imports=(HERE,))
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(6)]
    async with dspex.Runtime.open("memory://", backends=backends, settings=settings) as rt:
        program = dspex.Program.from_dspy(f"{HERE}:Answerer", name="answerer", backend="default")
        await rt.register(program)
        run = await rt.optimize("answerer", rows, metric="exact_match", max_demos=2)
        spec = (await rt.load_program("answerer", run.version)).to_dict()
    (entry,) = spec["modules"].values()
    demos = entry["state"]["respond"]["demos"]
    assert [d["question"] for d in demos] == ["q0", "q1"]
    assert all(d["augmented"] for d in demos)
    assert (run.baseline_score, run.score) == (1.0, 1.0)
    assert run.stats["lm_calls"] == len(lm.history)
