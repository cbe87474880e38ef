"""``validate_signature``: check a signature at one of three depths and report every problem.

Levels, each including the one before:

* ``standard`` — ``parse``, ``structure`` (at least one output), ``names`` (identifiers, not
  keywords, not reserved by DSPy, no duplicates), ``types`` (known, well-formed) and
  ``constraints`` (each fits its type, no min > max, valid patterns, ``dim`` only on embeddings).
* ``comprehensive`` — ``backend_compatibility`` (the mock backend can answer every output and
  every type maps to a DSPy annotation), ``schema_export`` (``json_schema``, ``openai`` and
  ``anthropic`` exports are valid draft 2020-12 JSON Schema) and ``dspy_roundtrip``
  (``from_dspy(to_dspy(sig)) == sig``).
* ``deep`` — ``samples`` (generated valid values pass, generated invalid values fail),
  ``complexity`` and ``cost_estimate`` (tokens of the prompt DSPy's ChatAdapter builds), with the
  report's ``complexity`` and ``cost_estimate`` filled in.

Problems are collected, never fail-fast. A step that cannot run because the signature could not
be built is reported as not passed with a ``not_run`` problem. ``valid`` is true only when every
step passed. A string that does not parse gives a report with ``valid=False``, not an exception.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, model_serializer

from dspex.errors import ConfigError, DspexError, ErrorDetail, SignatureError, ValidationError
from dspex.signatures.rules import STEP_OF_CODE, check_fields
from dspex.signatures.signature import Signature
from dspex.signatures.types import (
    DictType,
    FieldSpec,
    ListType,
    ModelType,
    OptionalType,
    TypeNode,
    UnionType,
)

__all__ = [
    "LEVELS",
    "Complexity",
    "CostEstimate",
    "Level",
    "Problem",
    "ValidationCheck",
    "ValidationReport",
    "validate_signature",
]

Level = Literal["standard", "comprehensive", "deep"]
LEVELS: tuple[str, ...] = ("standard", "comprehensive", "deep")
_STANDARD_STEPS = ("parse", "structure", "names", "types", "constraints")
_SAMPLES_PER_FIELD = 5
# Rough characters per token of English prompts for GPT-style tokenizers.
_CHARS_PER_TOKEN = 4.0


class Problem(BaseModel):
    """One problem: ``code`` (stable), ``field`` (a field name or path, ``""`` for the whole)."""

    model_config = ConfigDict(frozen=True)

    code: str
    field: str
    message: str

    @classmethod
    def of(cls, detail: ErrorDetail) -> Problem:
        return cls(code=detail.code, field=detail.field, message=detail.message)


class ValidationCheck(BaseModel):
    """One check of a validation report (an entry of its ``steps``); ``passed`` is explicit and
    false whenever it has problems.

    Not a step of an execution (:class:`~dspex.actions.models.StepInfo`): a check of a signature.
    """

    name: str
    passed: bool
    problems: list[Problem]


class Complexity(BaseModel):
    """How big and nested a signature is; ``rating`` is ``low``, ``medium`` or ``high``."""

    input_fields: int
    output_fields: int
    max_depth: int
    unions: int
    constraints: int
    score: int
    rating: Literal["low", "medium", "high"]


class CostEstimate(BaseModel):
    """A rough token count of one call: the prompt DSPy builds and a typical answer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    method: Literal["dspy_chat_adapter", "heuristic"]


class ValidationReport(BaseModel):
    """The result of :func:`validate_signature`.

    ``model_dump()`` has exactly ``valid``, ``level``, ``steps`` and ``problems``, plus
    ``complexity`` and ``cost_estimate`` at the ``deep`` level.
    """

    valid: bool
    level: Level
    steps: list[ValidationCheck]
    problems: list[Problem]
    complexity: Complexity | None = None
    cost_estimate: CostEstimate | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        data = handler(self)
        if self.level != "deep":
            data.pop("complexity", None)
            data.pop("cost_estimate", None)
        return data

    def step(self, name: str) -> ValidationCheck:
        """The step called ``name``.

        Raises:
            KeyError: no such step at this level.
        """
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


def _load(spec: Signature | str | Mapping[str, Any]) -> tuple[Signature | None, list[ErrorDetail]]:
    if isinstance(spec, Signature):
        return spec, []
    try:
        if isinstance(spec, str):
            return Signature.parse(spec), []
        if isinstance(spec, Mapping):
            return Signature.from_dict(spec), []
    except SignatureError as exc:
        return None, list(exc.errors) or [ErrorDetail("", "invalid_spec", exc.message)]
    return None, [
        ErrorDetail(
            "",
            "invalid_spec",
            f"expected a Signature, a string or a mapping, got {type(spec).__name__}",
        )
    ]


def validate_signature(
    sig_or_text: Signature | str | Mapping[str, Any], level: str = "standard"
) -> ValidationReport:
    """Check a signature and report every problem, grouped into steps.

    Args:
        sig_or_text: a :class:`Signature`, its string form, or its structured (dict) form.
        level: ``standard``, ``comprehensive`` or ``deep``.

    Returns:
        The report; ``valid`` is true only when every step passed.

    Raises:
        ConfigError: ``level`` is not one of the three levels.

    Example:
        >>> report = validate_signature("question -> answer: probability", level="standard")
        >>> report.valid, [s.name for s in report.steps][:2]
        (True, ['parse', 'structure'])
    """
    if level not in LEVELS:
        raise ConfigError(f"unknown validation level {level!r} (known: {', '.join(LEVELS)})")
    sig, found = _load(sig_or_text)
    if sig is not None:
        # A Signature cannot be built with problems, but check again so that the report is
        # computed from the rules, not assumed.
        found = check_fields(sig.input_fields, sig.output_fields)
    grouped: dict[str, list[Problem]] = {name: [] for name in _STANDARD_STEPS}
    for detail in found:
        grouped[STEP_OF_CODE.get(detail.code, "parse")].append(Problem.of(detail))
    # a signature that does not parse was never structured, named, typed or constrained: the
    # checks after ``parse`` did not run (rather than pass)
    unparsed = sig is None and bool(grouped["parse"])
    steps = [
        _not_run(n) if unparsed and n != "parse" and not p else _step(n, p)
        for n, p in grouped.items()
    ]

    complexity: Complexity | None = None
    cost: CostEstimate | None = None
    later: list[tuple[str, Callable[[Signature], list[Problem]]]] = []
    if level in ("comprehensive", "deep"):
        later += [
            ("backend_compatibility", _backend_compatibility),
            ("schema_export", _schema_export),
            ("dspy_roundtrip", _dspy_roundtrip),
        ]
    if level == "deep":
        later.append(("samples", _samples))
    for name, check in later:
        steps.append(_run(name, check, sig))
    if level == "deep":
        if sig is not None:
            complexity = measure_complexity(sig)
            steps.append(
                ValidationCheck(name="complexity", passed=True, problems=[])
                if complexity.rating != "high"
                else _step(
                    "complexity",
                    [
                        Problem(
                            code="too_complex",
                            field="",
                            message=f"complexity score {complexity.score} is high: deep nesting "
                            "and many fields make LM answers unreliable; consider splitting",
                        )
                    ],
                )
            )
            try:
                cost = estimate_cost(sig)
                steps.append(ValidationCheck(name="cost_estimate", passed=True, problems=[]))
            except Exception as exc:  # any failure of DSPy's formatter is reported, not raised
                steps.append(
                    _step(
                        "cost_estimate",
                        [Problem(code="estimate_failed", field="", message=str(exc))],
                    )
                )
        else:
            steps.append(_not_run("complexity"))
            steps.append(_not_run("cost_estimate"))
    problems = [p for s in steps for p in s.problems]
    return ValidationReport(
        valid=all(s.passed for s in steps),
        level=cast(Level, level),  # checked against LEVELS above
        steps=steps,
        problems=problems,
        complexity=complexity,
        cost_estimate=cost,
    )


def _step(name: str, problems: list[Problem]) -> ValidationCheck:
    return ValidationCheck(name=name, passed=not problems, problems=problems)


def _not_run(name: str) -> ValidationCheck:
    return ValidationCheck(
        name=name,
        passed=False,
        problems=[
            Problem(code="not_run", field="", message="not run: the signature could not be built")
        ],
    )


def _run(
    name: str, check: Callable[[Signature], list[Problem]], sig: Signature | None
) -> ValidationCheck:
    if sig is None:
        return _not_run(name)
    try:
        return _step(name, check(sig))
    except Exception as exc:  # a crash inside a check is a failed step, never a crashed report
        return _step(
            name, [Problem(code="check_failed", field="", message=f"{type(exc).__name__}: {exc}")]
        )


# ------------------------------------------------------------------------------------------------
# comprehensive


def _backend_compatibility(sig: Signature) -> list[Problem]:
    from dspex.signatures.dspy_interop import type_to_annotation
    from dspex.signatures.samples import compile_sampler

    problems: list[Problem] = []
    for f in sig.output_fields:
        try:
            compile_sampler(f)
        except DspexError as exc:
            problems.append(
                Problem(
                    code="mock_unsupported",
                    field=f.name,
                    message=f"the mock backend cannot produce this field: {exc.message}",
                )
            )
    for f in sig.fields:
        try:
            type_to_annotation(f.type)
        except Exception as exc:  # any conversion failure means DSPy cannot carry this type
            problems.append(
                Problem(code="dspy_unsupported", field=f.name, message=f"no DSPy annotation: {exc}")
            )
    return problems


def _schema_export(sig: Signature) -> list[Problem]:
    from dspex.signatures.schema import TARGETS, meta_schema_problems

    problems: list[Problem] = []
    for part in ("outputs", "inputs"):
        for target in TARGETS:
            exported = sig.json_schema(target, part=part)
            for message in meta_schema_problems(exported, target):
                problems.append(
                    Problem(
                        code="schema_invalid", field="", message=f"{target} ({part}): {message}"
                    )
                )
    return problems


def _dspy_roundtrip(sig: Signature) -> list[Problem]:
    back = Signature.from_dspy(sig.to_dspy())
    problems: list[Problem] = []
    if back.input_names != sig.input_names or back.output_names != sig.output_names:
        problems.append(
            Problem(
                code="roundtrip_mismatch",
                field="",
                message=f"fields changed: {sig} became {back}",
            )
        )
        return problems
    for before, after in zip(sig.fields, back.fields, strict=True):
        for attr in ("type", "description", "optional", "constraints"):
            if getattr(before, attr) != getattr(after, attr):
                problems.append(
                    Problem(
                        code="roundtrip_mismatch",
                        field=before.name,
                        message=f"{attr} changed through DSPy: {getattr(before, attr)!r} became "
                        f"{getattr(after, attr)!r}",
                    )
                )
    return problems


# ------------------------------------------------------------------------------------------------
# deep


def _samples(sig: Signature) -> list[Problem]:
    from dspex.signatures.compile import type_validator
    from dspex.signatures.samples import invalid_samples, valid_sample

    rng = random.Random(0)  # fixed seed: the same signature always gets the same verdict
    problems: list[Problem] = []
    records: dict[str, list[dict[str, Any]]] = {"inputs": [{}], "outputs": [{}]}
    for part, fields in (("inputs", sig.input_fields), ("outputs", sig.output_fields)):
        for f in fields:
            validator = type_validator(f.type, f.constraints)
            for _ in range(_SAMPLES_PER_FIELD):
                try:
                    value = valid_sample(f, rng)
                except DspexError as exc:
                    problems.append(
                        Problem(
                            code="unsatisfiable",
                            field=f.name,
                            message=f"no value can satisfy this field: {exc.message}",
                        )
                    )
                    break
                if not validator.accepts(value):
                    problems.append(
                        Problem(
                            code="valid_sample_rejected",
                            field=f.name,
                            message=f"a generated valid value {value!r} was rejected",
                        )
                    )
                    break
                records[part][0].setdefault(f.name, value)
            for value, reason in invalid_samples(f, rng):
                if validator.accepts(value):
                    problems.append(
                        Problem(
                            code="invalid_sample_accepted",
                            field=f.name,
                            message=f"{value!r} was accepted but should fail ({reason})",
                        )
                    )
    if not problems:
        for part, validate in (("inputs", sig.validate_inputs), ("outputs", sig.validate_outputs)):
            try:
                validate(records[part][0])
            except ValidationError as exc:
                problems.extend(
                    Problem(code="valid_sample_rejected", field=e.field, message=e.message)
                    for e in exc.errors
                )
    return problems


def _depth(node: TypeNode) -> int:
    if isinstance(node, ListType):
        return 1 + _depth(node.item)
    if isinstance(node, DictType):
        return 1 + max(_depth(node.key), _depth(node.value))
    if isinstance(node, UnionType):
        return 1 + max(_depth(o) for o in node.options)
    if isinstance(node, OptionalType):
        return _depth(node.inner)
    if isinstance(node, ModelType):
        return 2
    return 1


def _unions(node: TypeNode) -> int:
    if isinstance(node, ListType):
        return _unions(node.item)
    if isinstance(node, DictType):
        return _unions(node.key) + _unions(node.value)
    if isinstance(node, UnionType):
        return 1 + sum(_unions(o) for o in node.options)
    if isinstance(node, OptionalType):
        return _unions(node.inner)
    return 0


def measure_complexity(sig: Signature) -> Complexity:
    """Size and nesting of ``sig``: each field costs its depth, each union and constraint one."""
    fields: tuple[FieldSpec, ...] = sig.fields
    depth = max((_depth(f.type) for f in fields), default=0)
    unions = sum(_unions(f.type) for f in fields)
    constraints = sum(len(f.constraints.model_dump(exclude_none=True)) for f in fields)
    score = sum(_depth(f.type) for f in fields) + unions + constraints
    rating: Literal["low", "medium", "high"] = (
        "low" if score <= 15 and depth <= 3 else "medium" if score <= 40 and depth <= 5 else "high"
    )
    return Complexity(
        input_fields=len(sig.input_fields),
        output_fields=len(sig.output_fields),
        max_depth=depth,
        unions=unions,
        constraints=constraints,
        score=score,
        rating=rating,
    )


def _tokens(text: str) -> int:
    return max(1, round(len(text) / _CHARS_PER_TOKEN))


def estimate_cost(sig: Signature) -> CostEstimate:
    """Estimate the tokens of one call: DSPy's ChatAdapter prompt with sample inputs, and a
    sample answer in its output format. Falls back to a heuristic when DSPy cannot format it."""
    from dspex.signatures.samples import valid_sample

    rng = random.Random(0)
    inputs = {f.name: valid_sample(f, rng) for f in sig.input_fields}
    outputs = {f.name: valid_sample(f, rng) for f in sig.output_fields}
    try:
        import dspy

        cls = sig.to_dspy()
        adapter = dspy.ChatAdapter()
        messages = adapter.format(cls, demos=[], inputs=inputs)
        prompt = "".join(str(m.get("content", "")) for m in messages)
        answer = adapter.format_assistant_message_content(cls, outputs)
        method: Literal["dspy_chat_adapter", "heuristic"] = "dspy_chat_adapter"
    except Exception:  # DSPy could not format this signature: estimate from the fields instead
        prompt = (
            str(sig)
            + sig.instructions
            + "".join(f"[[ ## {k} ## ]]\n{v}\n" for k, v in inputs.items())
        )
        answer = "".join(f"[[ ## {k} ## ]]\n{v}\n" for k, v in outputs.items())
        method = "heuristic"
    prompt_tokens, completion_tokens = _tokens(prompt), _tokens(answer)
    return CostEstimate(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        method=method,
    )
