"""The public names: a sorted ``__all__``, every name resolves, and ``import dspex`` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import dspex


def test_all_is_sorted() -> None:
    assert dspex.__all__ == sorted(dspex.__all__)


def test_every_public_name_resolves() -> None:
    for name in dspex.__all__:
        assert getattr(dspex, name) is not None, name


def test_the_runtime_and_its_result_types_are_public() -> None:
    assert {"Runtime", "ExecutionResult", "ExecutionDetail", "ProgramInfo"} <= set(dspex.__all__)


def test_optimization_is_public_with_its_result_types() -> None:
    names = {"OptimizationError", "OptimizationInfo", "OptimizationStatus", "TrialInfo"}
    names |= {"OptimizationEvent", "OptimizationHandle"}
    assert names | {"TuneProposal"} <= set(dspex.__all__)
    assert callable(dspex.Runtime.optimize)
    assert callable(dspex.Runtime.tune)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        dspex.NoSuchThing  # noqa: B018


def test_importing_dspex_does_not_import_heavy_dependencies() -> None:
    code = (
        "import json, sys, dspex; "
        "print(json.dumps([m for m in ('dspy', 'sqlalchemy', 'typer', 'litellm', 'opentelemetry') "
        "if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_evaluation_promotion_and_dataset_names_are_public() -> None:
    names = {
        "ComparisonResult",
        "DatasetExport",
        "EvaluationResult",
        "Metric",
        "MetricError",
        "PromotionRefusedError",
        "PromotionResult",
        "resolve_metric",
    }
    assert names <= set(dspex.__all__)
    assert dspex.MetricError.code == "metric_invalid"
    assert dspex.PromotionRefusedError.code == "promotion_refused"
    assert {"evaluate", "compare", "promote", "export_dataset"} <= set(dir(dspex.Runtime))


def test_a_streamed_executions_events_are_public() -> None:
    names = {
        "ExecutionDone",
        "ExecutionEvent",
        "ExecutionStarted",
        "StepFinished",
        "StepStarted",
        "StreamRetry",
        "TokenDelta",
    }
    assert names <= set(dspex.__all__)
    assert callable(dspex.Runtime.stream)
    assert dspex.TokenDelta(module="m", field="answer", text="Pa").event == "token"
