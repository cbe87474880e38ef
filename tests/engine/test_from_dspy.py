"""``Program.from_dspy``: a program around a DSPy module you already have.

A module (instance, class or ``"pkg.mod:Class"``) becomes a ``dspy`` module with its state
inline; a bare ``Predict``/``ChainOfThought`` becomes a native module with its demos.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.utils import DummyLM
from tests.engine import dspy_native_modules as modules
from tests.engine.dspy_native_modules import REF, bootstrapped_qa

from dspex.backends.dspy_backend import DspyBackend
from dspex.engine.engine import Engine
from dspex.engine.program import Program
from dspex.errors import SecurityError, SpecError
from dspex.records import ExecutionStatus


def engine_on(lm: Any) -> Engine:
    return Engine(backends={"default": DspyBackend("default", lm=lm)}, allowed_imports=(REF,))


def test_a_module_class_with_one_predictor_gets_its_signature_derived() -> None:
    program = Program.from_dspy(modules.QA, name="qa")
    assert str(program.signature) == "question: str -> answer: str"
    module = program.to_dict()["modules"]["qa"]
    assert module == {
        "kind": "dspy",
        "module": f"{REF}:QA",
        "signature": "question: str -> answer: str",
    }


def test_derived_inputs_are_forwards_parameters_and_outputs_the_predictors() -> None:
    program = Program.from_dspy(modules.Lookup, name="lookup")
    # context is the predictor's input, but forward finds it; k has a default, so it is optional
    assert str(program.signature) == "question: str, k: optional[int] -> answer: str"


def test_a_module_without_a_predictor_needs_a_signature() -> None:
    with pytest.raises(SpecError, match="0 predictors"):
        Program.from_dspy(modules.Echo, name="echo", init={"suffix": "!"})
    program = Program.from_dspy(
        modules.Echo, name="echo", init={"suffix": "!"}, signature="question: str -> answer: str"
    )
    assert program.spec.modules["echo"].init == {"suffix": "!"}


def test_an_optimized_instance_carries_its_state_and_demos_inline() -> None:
    optimized = bootstrapped_qa(prefix="Q: ")
    program = Program.from_dspy(optimized, name="qa", init={"prefix": "Q: "})
    state = program.to_dict()["modules"]["qa"]["state"]
    demos = state["answer.predict"]["demos"]
    # the demos as the predictor saw them (after QA's prefix)
    assert [d["question"] for d in demos] == ["Q: train question 0", "Q: train question 1"]
    assert Program.from_dict(program.to_dict()) == program


async def test_a_class_with_a_saved_state_file_runs_with_its_demos(tmp_path: Path) -> None:
    bootstrapped_qa(prefix="Q: ").save(str(tmp_path / "qa.json"))
    program = Program.from_dspy(
        f"{REF}:QA",
        name="qa",
        init={"prefix": "Q: "},
        state=tmp_path / "qa.json",
        allowed_imports=[REF],
    )
    assert "metadata" in program.spec.modules["qa"].state  # as DSPy saved it
    lm = DummyLM([{"reasoning": "r", "answer": "Paris"}])
    async with engine_on(lm) as engine:
        result = await engine.run(program, {"question": "where?"})
    assert result.outputs == {"answer": "Paris"}
    assert "train question 0" in json.dumps(lm.history[-1]["messages"])


def test_an_instance_built_with_arguments_needs_them_as_init() -> None:
    instance = modules.QA(reasoning=False)
    with pytest.raises(SpecError, match="pass them as init="):
        Program.from_dspy(instance, name="qa")
    assert Program.from_dspy(instance, name="qa", init={"reasoning": False}).name == "qa"


def test_several_predictors_need_a_signature() -> None:
    with pytest.raises(SpecError, match=r"2 predictors \['draft', 'polish'\]") as info:
        Program.from_dspy(modules.TwoSteps, name="two")
    assert info.value.errors[0].code == "signature_required"
    program = Program.from_dspy(modules.TwoSteps, name="two", signature="question -> answer")
    assert program.signature.output_names == ("answer",)


def test_a_bare_predict_becomes_a_native_module_with_its_demos_and_config() -> None:
    predict = dspy.Predict("question -> answer", temperature=0.2)
    predict.demos = [dspy.Example(question="2+2?", answer="4")]
    program = Program.from_dspy(predict, name="math")
    assert program.to_dict()["modules"] == {
        "predict": {
            "kind": "predict",
            "signature": "question: str -> answer: str",
            "demos": [{"question": "2+2?", "answer": "4"}],
            "config": {"temperature": 0.2},
        }
    }


async def test_a_bare_chain_of_thoughts_demos_reach_the_lm() -> None:
    cot = dspy.ChainOfThought("question -> answer")
    cot.predict.demos = [dspy.Example(question="2+2?", reasoning="add them", answer="4")]
    program = Program.from_dspy(cot, name="math")
    module = program.spec.modules["chain_of_thought"]
    assert (module.kind, str(program.signature)) == (
        "chain_of_thought",
        "question: str -> answer: str",
    )
    lm = DummyLM([{"reasoning": "r", "answer": "6"}])
    async with Engine(backends={"default": DspyBackend("default", lm=lm)}) as engine:
        result = await engine.run(program, {"question": "3+3?"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    prompt = json.dumps(lm.history[-1]["messages"])
    assert "2+2?" in prompt
    assert "add them" in prompt


def test_a_reference_outside_the_allow_list_is_refused_before_it_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fromdspy_untrusted.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SecurityError) as info:
        Program.from_dspy("fromdspy_untrusted:QA", name="x", allowed_imports=["myproject"])
    assert info.value.code == "import_not_allowed"
    assert 'add "fromdspy_untrusted" to allowed_imports' in info.value.message
    assert "fromdspy_untrusted" not in sys.modules


def test_a_reference_that_does_not_import_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SpecError, match="cannot import fromdspy_missing_mod:QA") as info:
        Program.from_dspy("fromdspy_missing_mod:QA", name="x")
    assert info.value.errors[0].code == "import_failed"


def test_a_class_defined_inside_a_function_cannot_be_referenced() -> None:
    class Local(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = dspy.Predict("question -> answer")

        def forward(self, question: str) -> Any:
            return self.p(question=question)

    with pytest.raises(SpecError, match="top level of an importable module"):
        Program.from_dspy(Local, name="x")


def test_a_state_file_that_is_not_a_json_object_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SpecError, match="JSON object"):
        Program.from_dspy(modules.QA, name="qa", state=tmp_path / "bad.json")


def test_a_module_whose_import_raises_is_a_spec_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fromdspy_broken.py").write_text(
        textwrap.dedent(
            """
            raise RuntimeError("broken at import")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SpecError, match="RuntimeError: broken at import"):
            Program.from_dspy("fromdspy_broken:QA", name="x", allowed_imports=["fromdspy_broken"])
    finally:
        sys.modules.pop("fromdspy_broken", None)
