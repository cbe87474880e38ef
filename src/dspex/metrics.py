"""Metrics: how well a program's prediction matches an example's labels.

A metric has DSPy's signature, ``metric(example, prediction, trace=None) -> float | bool``, with
``example`` a ``dspy.Example`` whose inputs are marked (``with_inputs``) and ``prediction`` a
``dspy.Prediction`` of the program's outputs. The *labels* of an example are its fields that are
not program inputs (``example.labels()``); each is compared with the prediction's field of the
same name.

Built-ins (normalisation as DSPy's ``dspy.evaluate.metrics`` does it: lower case, no punctuation,
no articles, single spaces; a label that is a list of strings holds alternative answers):

- ``exact_match``: 1.0 when every label field equals the predicted one after normalisation
  (DSPy's ``EM``), else 0.0;
- ``f1``: token F1 (DSPy's ``F1``) per label field, averaged over the label fields;
- ``contains``: 1.0 when the normalised text of every label field occurs in the predicted one;
- ``answer_exact_match``: DSPy's own ``dspy.evaluate.answer_exact_match`` on the ``answer`` field.

Any other metric is an allow-listed ``pkg.mod:function`` (:func:`resolve_metric`): the reference
must be under ``allowed_imports`` (the rule of :mod:`dspex._imports`, the same that guards
``python`` and ``dspy`` modules) before it is imported.

DSPy is imported inside the functions only.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dspex._imports import allow_hint, import_allowed, is_reference
from dspex.errors import DspexError, MetricError, SecurityError

__all__ = [
    "BUILTIN_METRICS",
    "EXAMPLE_METADATA_KEY",
    "Metric",
    "answer_exact_match",
    "contains",
    "exact_match",
    "f1",
    "make_example",
    "make_prediction",
    "metric_label_fields",
    "resolve_metric",
    "score_prediction",
    "score_value",
]


class Metric(Protocol):
    """DSPy's metric signature: ``(example, prediction, trace=None) -> float | bool``."""

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> Any: ...


# --------------------------------------------------------------------------------- examples

EXAMPLE_METADATA_KEY = "_dspex"
"""The key of a dataset line that holds where it came from (``dspex dataset export``): never an
input nor a label (no DSPy field name starts with an underscore)."""


def make_example(row: Mapping[str, Any], input_names: Sequence[str]) -> Any:
    """A ``dspy.Example`` of ``row`` whose inputs are ``input_names`` (the rest are labels;
    the :data:`EXAMPLE_METADATA_KEY` of an exported line is left out).

    Raises:
        MetricError: an input of ``input_names`` is missing from ``row``.
    """
    import dspy

    missing = [name for name in input_names if name not in row]
    if missing:
        raise MetricError(f"the example has no input field(s) {missing}")
    fields = {k: v for k, v in row.items() if k != EXAMPLE_METADATA_KEY}
    return dspy.Example(**fields).with_inputs(*input_names)


def make_prediction(outputs: Mapping[str, Any] | None) -> Any:
    """A ``dspy.Prediction`` of a program's outputs (empty for a failed execution)."""
    import dspy

    return dspy.Prediction(**dict(outputs or {}))


def metric_label_fields(example: Any) -> dict[str, Any]:
    """The labels of ``example``: its fields that are not marked as inputs.

    Raises:
        MetricError: the example has no inputs marked, or no label at all.
    """
    try:
        labels = example.labels()
    except ValueError as exc:  # DSPy: inputs were never marked with with_inputs()
        raise MetricError(f"the example's inputs are not marked ({exc})") from None
    out = dict(labels.items())
    if not out:
        raise MetricError("the example has no label field: every field is a program input")
    return out


# --------------------------------------------------------------------------------- built-ins


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _alternatives(label: Any, predicted: Any) -> list[str]:
    """A label's acceptable answers: a list label is a list of alternatives (DSPy's answer
    lists) unless the prediction is itself a list."""
    if isinstance(label, list) and label and not isinstance(predicted, list):
        return [_text(item) for item in label]
    return [_text(label)]


def _field_exact(label: Any, predicted: Any) -> bool:
    from dspy.evaluate.metrics import EM

    if label == predicted and type(label) is type(predicted):
        return True
    if predicted is None or isinstance(predicted, list | dict):
        return False  # nothing predicted, or a structured value that is not equal
    return bool(EM(_text(predicted), _alternatives(label, predicted)))


def _field_f1(label: Any, predicted: Any) -> float:
    from dspy.evaluate.metrics import F1

    return float(F1(_text(predicted), _alternatives(label, predicted)))


def _field_contains(label: Any, predicted: Any) -> bool:
    from dspy.evaluate.metrics import normalize_text

    if predicted is None:
        return False
    text = normalize_text(_text(predicted))
    return any(normalize_text(alt) in text for alt in _alternatives(label, predicted))


def _predicted(prediction: Any, name: str) -> Any:
    try:
        return prediction.get(name)
    except AttributeError:
        return getattr(prediction, name, None)


def exact_match(example: Any, prediction: Any, trace: Any = None) -> bool:
    """Whether every label field equals the predicted field, normalised as DSPy's ``EM``."""
    labels = metric_label_fields(example)
    return all(_field_exact(value, _predicted(prediction, k)) for k, value in labels.items())


def f1(example: Any, prediction: Any, trace: Any = None) -> float:
    """Token F1 (DSPy's ``F1``) of each label field, averaged over the label fields."""
    labels = metric_label_fields(example)
    scores = [_field_f1(value, _predicted(prediction, k)) for k, value in labels.items()]
    return sum(scores) / len(scores)


def contains(example: Any, prediction: Any, trace: Any = None) -> bool:
    """Whether the normalised text of every label field occurs in the predicted field."""
    labels = metric_label_fields(example)
    return all(_field_contains(value, _predicted(prediction, k)) for k, value in labels.items())


def answer_exact_match(example: Any, prediction: Any, trace: Any = None) -> bool:
    """DSPy's ``answer_exact_match``: the ``answer`` label (a string or a list of alternatives)
    against the predicted ``answer``.

    Raises:
        MetricError: the example has no ``answer`` label, or it is neither a string nor a list.
    """
    import dspy

    labels = metric_label_fields(example)
    if "answer" not in labels:
        raise MetricError(
            f"answer_exact_match compares the 'answer' field, and the labels are {sorted(labels)}"
            " (exact_match compares every label field)"
        )
    if not isinstance(labels["answer"], str | list):
        raise MetricError("answer_exact_match needs an 'answer' label that is a string or a list")
    if _predicted(prediction, "answer") is None:
        return False
    return bool(dspy.evaluate.answer_exact_match(example, prediction, trace=trace))


BUILTIN_METRICS: Mapping[str, Metric] = {
    "answer_exact_match": answer_exact_match,
    "contains": contains,
    "exact_match": exact_match,
    "f1": f1,
}
"""The built-in metrics by name."""


# --------------------------------------------------------------------------------- resolving


def resolve_metric(name: str, *, allowed_imports: Sequence[str]) -> Metric:
    """The metric called ``name``: a built-in, or an allow-listed ``pkg.mod:function``.

    Args:
        name: ``exact_match``, ``f1``, ``contains``, ``answer_exact_match``, or a reference
            ``pkg.mod:function`` to a function with DSPy's metric signature.
        allowed_imports: the prefixes a reference must be under (``allowed_imports`` of
            ``dspex.toml``).

    Raises:
        MetricError: ``name`` is neither a built-in nor a reference, or the reference cannot be
            imported or is not callable.
        SecurityError: the reference is outside ``allowed_imports`` (the message names the entry
            that would permit it).
    """
    if isinstance(allowed_imports, str):
        raise MetricError("allowed_imports must be a sequence of prefixes, not one string")
    builtin = BUILTIN_METRICS.get(name)
    if builtin is not None:
        return builtin
    if not is_reference(name):
        raise MetricError(
            f"unknown metric {name!r}: use one of {', '.join(sorted(BUILTIN_METRICS))}"
            " or an allow-listed 'pkg.mod:function'"
        )
    if not import_allowed(name, allowed_imports):
        raise SecurityError(f"metric {name!r} is not in allowed_imports: {allow_hint(name)}")
    module_name, _, attr = name.partition(":")
    try:
        value: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise MetricError(f"cannot import metric {name}: {exc}") from None
    except Exception as exc:  # the module's own code raised while it was imported
        raise MetricError(f"cannot import metric {name}: {type(exc).__name__}: {exc}") from None
    if not callable(value):
        raise MetricError(f"metric {name} is not callable")
    return value  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------- scores


def score_value(value: Any) -> float:
    """A metric's return value as a float: ``True``/``False`` are 1.0/0.0, numbers stay as they
    are, and a ``dspy.Prediction`` with a ``score`` (GEPA's score with feedback) gives its score.

    Raises:
        MetricError: ``value`` is ``None``, NaN, infinite, or not a number.
    """
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    score = getattr(value, "score", None) if not isinstance(value, numbers.Number) else None
    if score is not None and not callable(score):
        return score_value(score)
    if isinstance(value, numbers.Real):
        out = float(value)
        if math.isfinite(out):
            return out
        raise MetricError(f"a metric returned {out!r}, which is not a usable score")
    raise MetricError(
        f"a metric returned {type(value).__name__} {value!r}: expected a number or a bool"
    )


def score_prediction(metric: Metric | Callable[..., Any], example: Any, prediction: Any) -> float:
    """Call ``metric(example, prediction)`` (as ``dspy.Evaluate`` does) and return its score.

    Raises:
        MetricError: the metric raised, or returned something that is not a score.
    """
    try:
        value = metric(example, prediction)
    except DspexError:
        raise
    except Exception as exc:
        name = getattr(metric, "__name__", type(metric).__name__)
        raise MetricError(f"metric {name} raised {type(exc).__name__}: {exc}") from exc
    return score_value(value)
