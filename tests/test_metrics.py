"""Metrics: the built-ins' DSPy semantics, resolving names and references, scores."""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspex.errors import MetricError, SecurityError
from dspex.metrics import (
    BUILTIN_METRICS,
    answer_exact_match,
    contains,
    exact_match,
    f1,
    make_example,
    make_prediction,
    metric_label_fields,
    resolve_metric,
    score_prediction,
    score_value,
)

USER_METRICS = """
import dspy

CALLS = []

def length_ratio(example, prediction, trace=None):
    CALLS.append(trace)
    return len(prediction.answer) / len(example.answer)

def two_args(example, prediction):
    return example.answer == prediction.answer

def with_feedback(example, prediction, trace=None):
    return dspy.Prediction(score=0.25, feedback="too long")

def raises(example, prediction, trace=None):
    raise KeyError("nope")

NOT_CALLABLE = 3
"""


@pytest.fixture
def userpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    pkg = tmp_path / "metricstest_userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scores.py").write_text(textwrap.dedent(USER_METRICS))
    (pkg / "broken.py").write_text("raise RuntimeError('import-time failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "metricstest_userpkg"
    for name in [m for m in sys.modules if m.startswith("metricstest_userpkg")]:
        del sys.modules[name]


def example(**fields: Any) -> dspy.Example:
    return make_example(fields, ["question"])


def pred(**fields: Any) -> dspy.Prediction:
    return make_prediction(fields)


# ------------------------------------------------------------------------- examples and labels


def test_labels_are_the_fields_that_are_not_inputs() -> None:
    ex = make_example({"question": "q", "answer": "a", "source": "s"}, ["question"])
    assert metric_label_fields(ex) == {"answer": "a", "source": "s"}
    assert dict(ex.inputs().items()) == {"question": "q"}


def test_an_example_missing_an_input_is_a_metric_error() -> None:
    with pytest.raises(MetricError, match=r"no input field\(s\) \['question'\]"):
        make_example({"answer": "a"}, ["question"])


def test_an_example_without_labels_is_a_metric_error() -> None:
    with pytest.raises(MetricError, match="no label field"):
        exact_match(make_example({"question": "q"}, ["question"]), pred(answer="a"))


def test_an_example_without_marked_inputs_is_a_metric_error() -> None:
    with pytest.raises(MetricError, match="inputs are not marked"):
        exact_match(dspy.Example(question="q", answer="a"), pred(answer="a"))


def test_a_failed_execution_predicts_nothing() -> None:
    assert exact_match(example(question="q", answer="a"), make_prediction(None)) is False


# ------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize(
    ("label", "predicted", "expected"),
    [
        ("Paris", "paris.", True),  # DSPy normalisation: case, punctuation
        ("The Eiffel Tower", "eiffel  tower", True),  # articles and spaces
        ("Paris", "Lyon", False),
        (["Paris", "City of Light"], "city of light", True),  # a list label holds alternatives
        (3, 3, True),
        (3, "3", True),  # compared as text when the types differ
        (3, 4, False),
        (["x", "y"], ["x", "y"], True),  # a list prediction is compared as a value
        (["x", "y"], ["y", "x"], False),
        ("a", None, False),  # nothing predicted never matches (though "a" normalises to "")
        ({"k": 1}, {"k": 1}, True),
    ],
)
def test_exact_match_normalises_as_dspy(label: Any, predicted: Any, expected: bool) -> None:
    assert exact_match(example(question="q", answer=label), pred(answer=predicted)) is expected


def test_exact_match_needs_every_label_field_to_match() -> None:
    ex = example(question="q", answer="Paris", country="France")
    assert exact_match(ex, pred(answer="paris", country="france")) is True
    assert exact_match(ex, pred(answer="paris", country="Spain")) is False
    assert exact_match(ex, pred(answer="paris")) is False  # a label the program did not predict


def test_f1_is_token_f1_averaged_over_label_fields() -> None:
    ex = example(question="q", answer="the big red apple", colour="red")
    # "big red apple" vs "red apple": precision 1, recall 2/3 -> F1 0.8; colour matches: 1.0
    assert f1(ex, pred(answer="red apple", colour="Red")) == pytest.approx((0.8 + 1.0) / 2)
    assert f1(ex, pred(answer="pear", colour="blue")) == 0.0


def test_f1_takes_the_best_alternative() -> None:
    ex = example(question="q", answer=["red apple", "green pear"])
    assert f1(ex, pred(answer="green pear")) == pytest.approx(1.0)


def test_contains_finds_each_normalised_label_in_the_prediction() -> None:
    ex = example(question="q", answer="Paris")
    assert contains(ex, pred(answer="It is PARIS, of course.")) is True
    assert contains(ex, pred(answer="Lyon")) is False
    assert contains(example(question="q", answer=["Rome", "Paris"]), pred(answer="paris")) is True


def test_answer_exact_match_is_dspys_own() -> None:
    ex = example(question="q", answer="Paris")
    for predicted in ("paris", "Lyon", "The Paris"):
        ours = answer_exact_match(ex, pred(answer=predicted))
        assert ours is bool(dspy.evaluate.answer_exact_match(ex, pred(answer=predicted)))
    assert answer_exact_match(ex, pred(answer="paris")) is True
    assert answer_exact_match(example(question="q", answer=["x", "Paris"]), pred(answer="paris"))
    assert answer_exact_match(ex, make_prediction({})) is False


def test_answer_exact_match_without_an_answer_label_says_to_use_exact_match() -> None:
    with pytest.raises(MetricError, match=r"'answer' field.*\['label'\].*exact_match"):
        answer_exact_match(example(question="q", label="x"), pred(label="x"))
    with pytest.raises(MetricError, match="string or a list"):
        answer_exact_match(example(question="q", answer=3), pred(answer=3))


# ------------------------------------------------------------------------- resolving


def test_every_builtin_resolves_by_name() -> None:
    assert sorted(BUILTIN_METRICS) == ["answer_exact_match", "contains", "exact_match", "f1"]
    for name, metric in BUILTIN_METRICS.items():
        assert resolve_metric(name, allowed_imports=()) is metric


def test_an_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(MetricError) as info:
        resolve_metric("accuracy", allowed_imports=())
    assert info.value.code == "metric_invalid"
    assert "answer_exact_match, contains, exact_match, f1" in info.value.message
    assert "pkg.mod:function" in info.value.message


def test_a_reference_outside_the_allow_list_is_refused_before_import(userpkg: str) -> None:
    with pytest.raises(SecurityError) as info:
        resolve_metric(f"{userpkg}.scores:length_ratio", allowed_imports=("other",))
    assert info.value.code == "import_not_allowed"
    assert f'add "{userpkg}.scores" to allowed_imports' in info.value.message
    assert f"{userpkg}.scores" not in sys.modules


def test_an_allowed_reference_is_imported_and_called_with_dspys_signature(userpkg: str) -> None:
    metric = resolve_metric(f"{userpkg}.scores:length_ratio", allowed_imports=(userpkg,))
    ex = example(question="q", answer="abcd")
    assert score_prediction(metric, ex, pred(answer="ab")) == 0.5
    assert sys.modules[f"{userpkg}.scores"].CALLS == [None]  # called as dspy.Evaluate calls it


def test_a_two_argument_metric_works_as_in_dspy_evaluate(userpkg: str) -> None:
    metric = resolve_metric(f"{userpkg}.scores:two_args", allowed_imports=(userpkg,))
    assert score_prediction(metric, example(question="q", answer="a"), pred(answer="a")) == 1.0


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("scores:missing", "cannot import metric"),
        ("nosuchmodule:f", "cannot import metric"),
        ("broken:f", "RuntimeError: import-time failure"),
        ("scores:NOT_CALLABLE", "is not callable"),
    ],
)
def test_a_reference_that_cannot_be_used_is_a_metric_error(
    userpkg: str, ref: str, message: str
) -> None:
    with pytest.raises(MetricError, match=message):
        resolve_metric(f"{userpkg}.{ref}", allowed_imports=(userpkg,))


def test_allowed_imports_as_one_string_is_refused() -> None:
    with pytest.raises(MetricError, match="not one string"):
        resolve_metric("f1", allowed_imports="myproj")


# ------------------------------------------------------------------------- scores


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, 1.0), (False, 0.0), (1, 1.0), (0.25, 0.25), (-2, -2.0), (Fraction(1, 4), 0.25)],
)
def test_score_value_turns_bools_and_numbers_into_floats(value: Any, expected: float) -> None:
    out = score_value(value)
    assert out == expected
    assert type(out) is float


@pytest.mark.parametrize("value", [None, math.nan, math.inf, "0.5", [1], object()])
def test_score_value_refuses_what_is_not_a_score(value: Any) -> None:
    with pytest.raises(MetricError) as info:
        score_value(value)
    assert info.value.code == "metric_invalid"


def test_a_prediction_with_a_score_counts_as_its_score(userpkg: str) -> None:
    metric = resolve_metric(f"{userpkg}.scores:with_feedback", allowed_imports=(userpkg,))
    assert score_prediction(metric, example(question="q", answer="a"), pred(answer="a")) == 0.25


def test_a_metric_that_raises_is_a_metric_error_naming_it(userpkg: str) -> None:
    metric = resolve_metric(f"{userpkg}.scores:raises", allowed_imports=(userpkg,))
    with pytest.raises(MetricError, match="metric raises raised KeyError"):
        score_prediction(metric, example(question="q", answer="a"), pred(answer="a"))


def test_a_dspex_error_from_a_metric_is_kept() -> None:
    with pytest.raises(MetricError, match="'answer' field"):
        score_prediction(answer_exact_match, example(question="q", label="x"), pred(label="x"))


def test_the_metadata_of_an_exported_line_is_neither_input_nor_label() -> None:
    ex = make_example(
        {"question": "q", "answer": "a", "_dspex": {"status": "completed"}}, ["question"]
    )
    assert metric_label_fields(ex) == {"answer": "a"}
