"""The :class:`Signature`: a typed, immutable contract of input and output fields.

Example:
    >>> sig = Signature.parse("question: str 'the user question', k: int -> answer: str")
    >>> sig.validate_inputs({"question": "Why?", "k": 3.0})
    {'question': 'Why?', 'k': 3}
    >>> str(sig)
    "question: str 'the user question', k: int -> answer: str"
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from typing import Any

from dspex.errors import ErrorDetail, SignatureError
from dspex.signatures.compile import RecordValidator, record_validator
from dspex.signatures.dspy_interop import parts_from_dspy, to_dspy
from dspex.signatures.parse import (
    ParsedField,
    ParsedSignature,
    format_signature,
    format_type,
    make_optional,
    parse_signature_text,
    try_parse_type,
)
from dspex.signatures.rules import check_fields, check_name
from dspex.signatures.types import Constraints, FieldSpec, OptionalType, Scalar, TypeNode

__all__ = ["Signature", "normalize_field"]

_STR: TypeNode = Scalar("str")
_FIELD_KEYS = frozenset({"type", "description", "desc", "optional", "sensitive", "constraints"})
_CONSTRAINT_KEYS = frozenset(Constraints.model_fields)


def normalize_field(spec: FieldSpec) -> FieldSpec:
    """Make ``optional`` and an :class:`OptionalType` top-level type agree (either implies both)."""
    if spec.optional and not isinstance(spec.type, OptionalType):
        return replace(spec, type=make_optional(spec.type))
    if isinstance(spec.type, OptionalType) and not spec.optional:
        return replace(spec, optional=True)
    return spec


def _constraints(name: str, raw: object, problems: list[ErrorDetail]) -> Constraints:
    from pydantic import ValidationError as PydanticValidationError

    if raw is None:
        return Constraints()
    if isinstance(raw, Constraints):
        return raw
    if not isinstance(raw, Mapping):
        problems.append(ErrorDetail(name, "invalid_constraint", "constraints must be a mapping"))
        return Constraints()
    for key in raw:
        if key not in _CONSTRAINT_KEYS:
            problems.append(
                ErrorDetail(
                    name,
                    "unknown_constraint",
                    f"unknown constraint {key!r} (known: {', '.join(sorted(_CONSTRAINT_KEYS))})",
                )
            )
    known = {k: v for k, v in raw.items() if k in _CONSTRAINT_KEYS}
    try:
        return Constraints(**known)
    except PydanticValidationError as exc:
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"][:1])
            problems.append(
                ErrorDetail(name, "invalid_constraint", f"constraint {key!r}: {err['msg']}")
            )
        return Constraints()


@dataclass(frozen=True, slots=True, eq=True)
class Signature:
    """A typed signature: ordered input and output fields, a name and instructions.

    Construction checks every structural rule (names, types, constraints fitting their types) and
    raises one :class:`~dspex.errors.SignatureError` listing all problems. Equality and hashing
    are by value; compiled validators are built once per distinct signature and cached.

    Attributes:
        name: the signature's name (used as the tool name in schema exports).
        instructions: what the LM is asked to do (DSPy's signature docstring).
        input_fields: the input fields in order.
        output_fields: the output fields in order.
    """

    name: str = "Signature"
    instructions: str = ""
    input_fields: tuple[FieldSpec, ...] = ()
    output_fields: tuple[FieldSpec, ...] = ()
    _validators: dict[str, RecordValidator] = dc_field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        inputs = tuple(normalize_field(f) for f in self.input_fields)
        outputs = tuple(normalize_field(f) for f in self.output_fields)
        object.__setattr__(self, "input_fields", inputs)
        object.__setattr__(self, "output_fields", outputs)
        problems = check_fields(inputs, outputs)
        if not isinstance(self.name, str) or not self.name:
            problems.insert(
                0, ErrorDetail("", "invalid_spec", "a signature name must be a non-empty string")
            )
        if problems:
            raise SignatureError(f"signature {self.name!r} is invalid:", problems)

    def __hash__(self) -> int:
        key = (self.name, self.instructions, self.input_fields, self.output_fields)
        try:
            return hash(key)
        except TypeError:  # unhashable constraint values (one_of with lists)
            return hash(json.dumps(self.to_dict(), sort_keys=True, default=repr))

    # -------------------------------------------------------------------------------- building

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        name: str = "Signature",
        instructions: str = "",
        constraints: Mapping[str, Mapping[str, Any]] | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> Signature:
        """Build a signature from its string form.

        Args:
            text: ``"question: str 'the user question', k: int -> answer: str"``.
            name: the signature's name.
            instructions: the task instructions.
            constraints: per-field constraints, e.g. ``{"answer": {"max_length": 200}}``.
            descriptions: per-field descriptions (override those in ``text``).

        Raises:
            SignatureError: ``errors`` lists every problem found.
        """
        parsed = parse_signature_text(text)
        problems = list(parsed.problems)
        problems.extend(_unparsed_name_problems(parsed.inputs + parsed.outputs, parsed))
        constraints = dict(constraints or {})
        descriptions = dict(descriptions or {})
        known = {f.name for f in parsed.inputs} | {f.name for f in parsed.outputs}
        for extra in (constraints.keys() | descriptions.keys()) - known:
            if not parsed.problems:
                problems.append(
                    ErrorDetail(str(extra), "unknown_key", f"no field named {extra!r} in {text!r}")
                )
        sides: list[tuple[FieldSpec, ...]] = []
        for fields in (parsed.inputs, parsed.outputs):
            specs = []
            for f in fields:
                c = _constraints(f.name, constraints.get(f.name), problems)
                specs.append(FieldSpec(f.name, f.type, descriptions.get(f.name, f.description), c))
            sides.append(tuple(specs))
        return cls._build(name, instructions, sides[0], sides[1], problems)

    @classmethod
    def _build(
        cls,
        name: str,
        instructions: str,
        inputs: tuple[FieldSpec, ...],
        outputs: tuple[FieldSpec, ...],
        problems: list[ErrorDetail],
    ) -> Signature:
        if not problems:
            return cls(name, instructions, inputs, outputs)
        # Parse problems first, then everything the structural rules find in what did parse.
        found = list(problems)
        if not any(p.code == "missing_arrow" for p in problems):
            try:
                cls(name or "Signature", instructions, inputs, outputs)
            except SignatureError as exc:
                # A field that failed to parse is missing from ``outputs``: no_outputs would lie.
                found.extend(e for e in exc.errors if e not in found and e.code != "no_outputs")
        raise SignatureError(f"signature {name!r} is invalid:", found)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """Build a signature from its structured form.

        Two shapes are accepted::

            {"name": "QA", "instructions": "…",
             "inputs": {"question": {"type": "str", "description": "…", "min_length": 1},
                        "k": "int"},
             "outputs": {"answer": "str"}}

            {"name": "QA", "signature": "question -> answer: str",
             "constraints": {"answer": {"max_length": 200}}}

        A field is a type string or a mapping with ``type``, ``description``, ``optional``,
        ``sensitive`` (recorded as ``"[redacted]"`` in traces) and constraint keys inline or
        under ``constraints``.

        Raises:
            SignatureError: ``errors`` lists every problem found.
        """
        if not isinstance(data, Mapping):
            raise SignatureError(
                "signature is invalid:",
                [ErrorDetail("", "invalid_spec", "a signature spec must be a mapping")],
            )
        problems: list[ErrorDetail] = []
        name = data.get("name", "Signature")
        instructions = data.get("instructions", "") or ""
        if not isinstance(name, str) or not name:
            problems.append(ErrorDetail("name", "invalid_spec", "name must be a non-empty string"))
            name = "Signature"
        if not isinstance(instructions, str):
            problems.append(
                ErrorDetail("instructions", "invalid_spec", "instructions must be a string")
            )
            instructions = ""
        allowed = {
            "name",
            "instructions",
            "signature",
            "constraints",
            "descriptions",
            "inputs",
            "outputs",
        }
        for key in data:
            if key not in allowed:
                problems.append(
                    ErrorDetail(str(key), "unknown_key", f"unknown key {key!r} in signature spec")
                )
        if "signature" in data:
            if "inputs" in data or "outputs" in data:
                problems.append(
                    ErrorDetail(
                        "signature",
                        "invalid_spec",
                        "give either 'signature' or 'inputs'/'outputs', not both",
                    )
                )
            text = data["signature"]
            if not isinstance(text, str):
                problems.append(
                    ErrorDetail("signature", "invalid_spec", "signature must be a string")
                )
                raise SignatureError(f"signature {name!r} is invalid:", problems)
            try:
                sig = cls.parse(
                    text,
                    name=name,
                    instructions=instructions,
                    constraints=_mapping(data.get("constraints"), "constraints", problems),
                    descriptions=_mapping(data.get("descriptions"), "descriptions", problems),
                )
            except SignatureError as exc:
                raise SignatureError(
                    f"signature {name!r} is invalid:", problems + exc.errors
                ) from None
            if problems:
                raise SignatureError(f"signature {name!r} is invalid:", problems)
            return sig
        sides: list[tuple[FieldSpec, ...]] = []
        for side in ("inputs", "outputs"):
            raw = data.get(side, {})
            if raw is None:
                raw = {}
            if not isinstance(raw, Mapping):
                problems.append(
                    ErrorDetail(
                        side, "invalid_spec", f"{side} must be a mapping of field name to type"
                    )
                )
                raw = {}
            sides.append(tuple(_field_from_dict(str(k), v, problems) for k, v in raw.items()))
        return cls._build(name, instructions, sides[0], sides[1], problems)

    def to_dict(self) -> dict[str, Any]:
        """The structured form (JSON-friendly); ``Signature.from_dict(s.to_dict()) == s``."""
        return {
            "name": self.name,
            "instructions": self.instructions,
            "inputs": {f.name: _field_to_dict(f) for f in self.input_fields},
            "outputs": {f.name: _field_to_dict(f) for f in self.output_fields},
        }

    def __str__(self) -> str:
        return format_signature(self.input_fields, self.output_fields)

    @classmethod
    def from_dspy(cls, dspy_signature_cls: type) -> Signature:
        """Build from a ``dspy.Signature`` class (DSPy is imported only when called).

        Classes made by :meth:`to_dspy` come back exactly; for other classes each annotation
        maps to the nearest dspex type, descriptions come from the fields' ``desc`` and
        instructions from the class (DSPy's generated default instructions count as none).

        Raises:
            SignatureError: not a DSPy signature class, or some field's annotation has no dspex
                equivalent (every such field is listed).
        """
        parts = parts_from_dspy(dspy_signature_cls)
        return cls(
            name=parts.name,
            instructions=parts.instructions,
            input_fields=parts.input_fields,
            output_fields=parts.output_fields,
        )

    def to_dspy(self) -> type:
        """The equivalent ``dspy.Signature`` class (DSPy is imported only when called)."""
        result: type = to_dspy(self)
        return result

    # -------------------------------------------------------------------------------- using

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.input_fields)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.output_fields)

    @property
    def fields(self) -> tuple[FieldSpec, ...]:
        """Inputs then outputs."""
        return self.input_fields + self.output_fields

    def field(self, name: str) -> FieldSpec:
        """The field called ``name`` (input or output).

        Raises:
            KeyError: there is no such field.
        """
        for f in self.input_fields + self.output_fields:
            if f.name == name:
                return f
        raise KeyError(f"signature {self.name!r} has no field {name!r}")

    def _validator(self, part: str) -> RecordValidator:
        v = self._validators.get(part)
        if v is None:
            fields = self.input_fields if part == "inputs" else self.output_fields
            v = record_validator(fields, f"{part} of signature {self.name!r}")
            self._validators[part] = v
        return v

    def compile(self) -> None:
        """Build both validators now instead of on first use."""
        self._validator("inputs")
        self._validator("outputs")

    def validate_inputs(self, data: object) -> dict[str, Any]:
        """Check and coerce input values.

        Returns:
            The coerced values (optional fields that were left out are ``None``).

        Raises:
            ValidationError: ``errors`` lists every problem with its field path
                (``context[2]``, ``meta['tags'][0]``), code and message.
        """
        return self._validator("inputs").validate(data)

    def validate_inputs_many(self, records: Sequence[object]) -> list[dict[str, Any]] | None:
        """Every record's coerced inputs, validated in one pass, or ``None`` when any record is
        invalid (:meth:`validate_inputs` then names its problems)."""
        return self._validator("inputs").validate_many(records)

    def validate_outputs(self, data: object) -> dict[str, Any]:
        """Check and coerce output values (constraints included); see :meth:`validate_inputs`."""
        return self._validator("outputs").validate(data)

    def json_schema(self, target: str = "json_schema", *, part: str = "outputs") -> dict[str, Any]:
        """Export a JSON Schema of the output fields (or ``part="inputs"``).

        Args:
            target: ``json_schema`` (draft 2020-12), ``openai`` (a strict function tool) or
                ``anthropic`` (a tool with ``input_schema``).
            part: ``outputs`` (what the LM must produce; the default) or ``inputs``.
        """
        from dspex.signatures.schema import export_schema

        return export_schema(self, target, part=part)


def _mapping(value: object, key: str, problems: list[ErrorDetail]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(ErrorDetail(key, "invalid_spec", f"{key} must be a mapping by field name"))
        return {}
    return dict(value)


def _field_from_dict(name: str, raw: object, problems: list[ErrorDetail]) -> FieldSpec:
    if raw is None:
        raw = "str"
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        problems.append(
            ErrorDetail(name, "invalid_spec", "a field is a type string or a mapping with 'type'")
        )
        return FieldSpec(name, _STR)
    type_text = raw.get("type", "str")
    node: TypeNode = _STR
    if not isinstance(type_text, str):
        problems.append(ErrorDetail(name, "invalid_spec", "a field's 'type' must be a string"))
    else:
        parsed, problem = try_parse_type(type_text)
        if problem is not None:
            problems.append(ErrorDetail(name, problem.code, f"field {name!r}: {problem.message}"))
        elif parsed is not None:
            node = parsed
    description = raw.get("description", raw.get("desc", "")) or ""
    if not isinstance(description, str):
        problems.append(ErrorDetail(name, "invalid_spec", "a field's description must be a string"))
        description = ""
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        problems.append(
            ErrorDetail(name, "invalid_spec", "a field's 'optional' must be true or false")
        )
        optional = False
    sensitive = raw.get("sensitive", False)
    if not isinstance(sensitive, bool):
        problems.append(
            ErrorDetail(name, "invalid_spec", "a field's 'sensitive' must be true or false")
        )
        sensitive = False
    nested = raw.get("constraints")
    inline = {k: v for k, v in raw.items() if k not in _FIELD_KEYS}
    if nested is not None and not isinstance(nested, Mapping):
        problems.append(ErrorDetail(name, "invalid_constraint", "constraints must be a mapping"))
        nested = None
    constraints = _constraints(name, {**inline, **(nested or {})}, problems)
    return FieldSpec(name, node, description, constraints, optional, sensitive)


def _field_to_dict(f: FieldSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"type": format_type(f.type)}
    if f.description:
        out["description"] = f.description
    if f.optional:
        out["optional"] = True
    if f.sensitive:
        out["sensitive"] = True
    for key, value in f.constraints.model_dump(exclude_none=True).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _unparsed_name_problems(
    parsed_fields: list[ParsedField], parsed: ParsedSignature
) -> list[ErrorDetail]:
    """Name problems of fields whose type failed to parse (they never reach ``check_fields``)."""
    out: list[ErrorDetail] = []
    seen = [f.name for f in parsed_fields]
    for name in parsed.unparsed_names:
        problem = check_name(name)
        if problem is not None:
            out.append(problem)
        if name in seen:
            out.append(ErrorDetail(name, "duplicate_name", f"field {name!r} appears twice"))
        seen.append(name)
    return out
