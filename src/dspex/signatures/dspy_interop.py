"""Convert dspex signatures to DSPy signature classes and back.

:func:`to_dspy` maps each field type to a Python annotation DSPy understands (``embedding`` →
``list[float]``, ``probability``/``confidence_score`` → ``float``, ``reasoning_chain`` →
``list[str]``, pydantic models as themselves) and keeps what annotations cannot say in the DSPy
field's ``json_schema_extra``:

- ``dspex_type``: the dspex type expression (``"probability"``, ``"embedding[384]"``),
- ``dspex_constraints``: the field's constraints as JSON,
- ``dspex_description``: the description as written (the ``desc`` DSPy shows the model also
  carries a readable hint of the constraints, because DSPy only prompts for them),
- ``dspex_optional``: present and true when the field may be omitted,
- ``dspex_sensitive``: present and true when the field is redacted in traces.

:func:`from_dspy` reads those keys back, so ``from_dspy(to_dspy(s)) == s``; for plain DSPy
signatures without them it maps the annotations to the nearest dspex types (``float`` stays
``float``).

Only this module (in ``signatures/``) imports DSPy, and only inside functions.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel

from dspex.errors import ErrorDetail, SignatureError, ValidationError
from dspex.signatures import dspy_types
from dspex.signatures.parse import format_type, make_union, try_parse_type
from dspex.signatures.types import (
    ConfidenceScore,
    Constraints,
    DictType,
    DspyType,
    Embedding,
    FieldSpec,
    ListType,
    LiteralType,
    ModelType,
    OptionalType,
    Probability,
    ReasoningChain,
    Scalar,
    TypeNode,
    UnionType,
)

if TYPE_CHECKING:
    import dspy

    from dspex.signatures.signature import Signature

__all__ = [
    "DSPEX_CONSTRAINTS_KEY",
    "DSPEX_DESCRIPTION_KEY",
    "DSPEX_OPTIONAL_KEY",
    "DSPEX_SENSITIVE_KEY",
    "DSPEX_TYPE_KEY",
    "DspyParts",
    "annotation_to_type",
    "constraint_hint",
    "dspy_value_problems",
    "from_dspy_values",
    "parts_from_dspy",
    "to_dspy",
    "to_dspy_values",
    "type_to_annotation",
]

DSPEX_TYPE_KEY = "dspex_type"
DSPEX_CONSTRAINTS_KEY = "dspex_constraints"
DSPEX_DESCRIPTION_KEY = "dspex_description"
DSPEX_OPTIONAL_KEY = "dspex_optional"
DSPEX_SENSITIVE_KEY = "dspex_sensitive"

_SCALARS: Mapping[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


# --- types → annotations ----------------------------------------------------------------------


def type_to_annotation(node: TypeNode) -> Any:
    """The Python annotation DSPy understands for a dspex type."""
    if isinstance(node, Scalar):
        return _SCALARS[node.name]
    if isinstance(node, LiteralType):
        return Literal.__getitem__(node.values)
    if isinstance(node, Embedding):
        return list[float]
    if isinstance(node, Probability | ConfidenceScore):
        return float
    if isinstance(node, ReasoningChain):
        return list[str]
    if isinstance(node, ListType):
        return list[type_to_annotation(node.item)]  # type: ignore[misc]  # a runtime generic alias
    if isinstance(node, DictType):
        return dict[type_to_annotation(node.key), type_to_annotation(node.value)]  # type: ignore[misc]  # a runtime generic alias
    if isinstance(node, UnionType):
        return typing.Union.__getitem__(tuple(type_to_annotation(o) for o in node.options))
    if isinstance(node, OptionalType):
        return typing.Optional.__getitem__(type_to_annotation(node.inner))
    if isinstance(node, ModelType):
        return node.model
    if isinstance(node, DspyType):
        return dspy_types.dspy_class(node.name, node.language)
    raise TypeError(f"not a type node: {node!r}")


# --- values: JSON forms ↔ DSPy objects ----------------------------------------------------------


def _has_dspy_type(node: TypeNode) -> bool:
    if isinstance(node, DspyType):
        return True
    if isinstance(node, ListType | OptionalType):
        return _has_dspy_type(node.item if isinstance(node, ListType) else node.inner)
    if isinstance(node, DictType):
        return _has_dspy_type(node.value)
    return False


def _to_dspy_value(node: TypeNode, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(node, DspyType):
        return dspy_types.to_dspy_value(node.name, value)
    if isinstance(node, OptionalType):
        return _to_dspy_value(node.inner, value)
    if isinstance(node, ListType) and isinstance(value, list):
        return [_to_dspy_value(node.item, v) for v in value]
    if isinstance(node, DictType) and isinstance(value, dict):
        return {k: _to_dspy_value(node.value, v) for k, v in value.items()}
    return value


def to_dspy_values(fields: typing.Iterable[FieldSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each value of a DSPy type (``Image``, ``History``, …, also inside
    ``list``/``dict``/``optional``) turned into the DSPy object DSPy's adapters format. Values
    of other types are passed through unchanged.

    Raises:
        ValidationError: a value of a DSPy type is not one of its JSON forms.
    """
    from dspex.signatures.compile import type_validator

    out = dict(values)
    for spec in fields:
        if spec.name in out and _has_dspy_type(spec.type):
            value = type_validator(spec.type).validate(out[spec.name], path=spec.name)
            out[spec.name] = _to_dspy_value(spec.type, value)
    return out


def dspy_value_problems(
    fields: typing.Iterable[FieldSpec], values: Mapping[str, Any], path: str
) -> list[ErrorDetail]:
    """Why values of DSPy types in ``values`` (a demo, say) are not their JSON forms; paths are
    under ``path``. Fields of other types are not looked at."""
    from dspex.signatures.compile import type_validator

    problems: list[ErrorDetail] = []
    for spec in fields:
        if spec.name in values and _has_dspy_type(spec.type):
            try:
                type_validator(spec.type).validate(values[spec.name], path=f"{path}.{spec.name}")
            except ValidationError as exc:
                problems.extend(exc.errors)
    return problems


def from_dspy_values(value: Any) -> Any:
    """``value`` with DSPy type objects (anywhere in lists and dicts) as their JSON forms."""
    if isinstance(value, list):
        return [from_dspy_values(v) for v in value]
    if isinstance(value, dict):
        return {k: from_dspy_values(v) for k, v in value.items()}
    return dspy_types.from_dspy_value(value)


# --- annotations → types ----------------------------------------------------------------------


class _Unsupported(Exception):
    pass


def annotation_to_type(annotation: Any) -> TypeNode:
    """The dspex type for a Python annotation from a DSPy signature.

    Raises:
        SignatureError: the annotation has no dspex equivalent (``Any``, ``set[str]``, …).
    """
    try:
        return _annotation_to_type(annotation)
    except _Unsupported as exc:
        raise SignatureError(
            f"unsupported annotation {_annotation_name(annotation)}:",
            [ErrorDetail("", "unsupported_type", str(exc))],
        ) from None


def _annotation_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)


def _annotation_to_type(annotation: Any) -> TypeNode:
    if annotation is None or annotation is type(None):
        raise _Unsupported("None is only allowed inside a union or Optional")
    if annotation in (str, int, float, bool):
        return Scalar(annotation.__name__)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return LiteralType(tuple(member.value for member in annotation))
    dspy_name = dspy_types.dspy_type_name_of(annotation)
    if dspy_name is not None:
        return DspyType(dspy_name, dspy_types.code_language_of(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ModelType(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return LiteralType(tuple(args))
    if origin in (typing.Union, types.UnionType):
        options: list[Any] = []
        for arg in args:
            options.append(_NONE_MARK if arg is type(None) else _annotation_to_type(arg))
        return _union(options)
    if origin is list and len(args) == 1:
        return ListType(_annotation_to_type(args[0]))
    if origin is dict and len(args) == 2:
        return DictType(_annotation_to_type(args[0]), _annotation_to_type(args[1]))
    if annotation in (list, dict) or origin in (list, dict):
        raise _Unsupported(f"{_annotation_name(annotation)} needs its item types, e.g. list[str]")
    raise _Unsupported(f"{_annotation_name(annotation)} has no dspex equivalent")


_NONE_MARK = object()


def _union(options: list[Any]) -> TypeNode:
    nullable = any(o is _NONE_MARK for o in options)
    rest: list[TypeNode] = [o for o in options if o is not _NONE_MARK]
    if not rest:
        raise _Unsupported("a union needs a type other than None")
    node = make_union(tuple(rest))
    return OptionalType(node) if nullable and not isinstance(node, OptionalType) else node


# --- constraint hints -------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:g}"


def constraint_hint(node: TypeNode, constraints: Constraints) -> str:
    """A short readable sentence of the limits a value must respect ("" when there are none).

    DSPy puts field descriptions in the prompt but does not enforce dspex constraints, so the
    model is told about them here and the values are checked after the call.
    """
    parts: list[str] = []
    if isinstance(node, Probability):
        parts.append("a probability between 0 and 1")
    elif isinstance(node, ConfidenceScore):
        parts.append("a confidence score between 0 and 1")
    elif isinstance(node, Embedding) and node.dim is not None:
        parts.append(f"exactly {node.dim} numbers")
    c = constraints
    if c.min_length is not None:
        parts.append(f"at least {c.min_length} characters")
    if c.max_length is not None:
        parts.append(f"at most {c.max_length} characters")
    if c.pattern is not None:
        parts.append(f"must match the regular expression {c.pattern}")
    if c.minimum is not None:
        parts.append(f">= {_num(c.minimum)}")
    if c.maximum is not None:
        parts.append(f"<= {_num(c.maximum)}")
    if c.multiple_of is not None:
        parts.append(f"a multiple of {_num(c.multiple_of)}")
    if c.min_items is not None:
        parts.append(f"at least {c.min_items} items")
    if c.max_items is not None:
        parts.append(f"at most {c.max_items} items")
    if c.unique_items:
        parts.append("items must be unique")
    if c.one_of is not None:
        parts.append("one of: " + ", ".join(repr(v) for v in c.one_of))
    if c.dim is not None:
        parts.append(f"exactly {c.dim} numbers")
    return "; ".join(parts)


# --- signatures -------------------------------------------------------------------------------


def _dspy_field(spec: FieldSpec, side: Literal["input", "output"]) -> Any:
    import dspy

    hint = constraint_hint(spec.type, spec.constraints)
    desc = spec.description
    if hint:
        desc = f"{desc} ({hint})" if desc else hint.capitalize()
    kwargs: dict[str, Any] = {"desc": desc} if desc else {}
    field = dspy.InputField(**kwargs) if side == "input" else dspy.OutputField(**kwargs)
    # DSPy's field helpers rebuild json_schema_extra from their own arguments, so the dspex
    # metadata is added to the dict they produced.
    extra = field.json_schema_extra
    assert isinstance(extra, dict)
    extra[DSPEX_TYPE_KEY] = format_type(spec.type)
    extra[DSPEX_DESCRIPTION_KEY] = spec.description
    if not spec.constraints.is_empty():
        extra[DSPEX_CONSTRAINTS_KEY] = spec.constraints.model_dump(exclude_none=True, mode="json")
    if spec.optional:
        extra[DSPEX_OPTIONAL_KEY] = True
    if spec.sensitive:
        extra[DSPEX_SENSITIVE_KEY] = True
    return field


def to_dspy(sig: Signature) -> type[dspy.Signature]:
    """Build the DSPy signature class for ``sig``.

    The class is named after the signature, has its instructions (DSPy's default ones when
    ``sig`` has none) and one ``dspy.InputField``/``dspy.OutputField`` per field, in order.

    Example:
        >>> cls = to_dspy(Signature.parse("question: str -> confidence: probability"))
        >>> cls.output_fields["confidence"].annotation
        <class 'float'>
    """
    import dspy

    fields: dict[str, tuple[Any, Any]] = {}
    for spec in sig.input_fields:
        fields[spec.name] = (type_to_annotation(spec.type), _dspy_field(spec, "input"))
    for spec in sig.output_fields:
        fields[spec.name] = (type_to_annotation(spec.type), _dspy_field(spec, "output"))
    instructions = sig.instructions or None
    cls: type[dspy.Signature] = dspy.Signature(
        fields, instructions, signature_name=_class_name(sig.name)
    )
    return cls


def _class_name(name: str) -> str:
    return name if name.isidentifier() else "".join(c if c.isalnum() else "_" for c in name)


def _field_from_dspy(name: str, info: Any, problems: list[ErrorDetail]) -> FieldSpec | None:
    extra: Mapping[str, Any] = info.json_schema_extra or {}
    node: TypeNode | None = None
    type_text = extra.get(DSPEX_TYPE_KEY)
    if isinstance(type_text, str):
        # a type containing a pydantic model has no string form; the annotation says it exactly
        node, _ = try_parse_type(type_text)
    if node is None:
        try:
            node = annotation_to_type(info.annotation)
        except SignatureError as exc:
            problems.extend(ErrorDetail(name, e.code, e.message) for e in exc.errors)
            return None
    description = extra.get(DSPEX_DESCRIPTION_KEY)
    if not isinstance(description, str):
        desc = extra.get("desc", "")
        description = "" if not isinstance(desc, str) or desc == f"${{{name}}}" else desc
    raw_constraints = extra.get(DSPEX_CONSTRAINTS_KEY) or {}
    try:
        constraints = Constraints.model_validate(raw_constraints)
    except ValueError as exc:
        problems.append(ErrorDetail(name, "invalid_constraints", str(exc)))
        return None
    return FieldSpec(
        name=name,
        type=node,
        description=description,
        constraints=constraints,
        optional=bool(extra.get(DSPEX_OPTIONAL_KEY, False)),
        sensitive=bool(extra.get(DSPEX_SENSITIVE_KEY, False)),
    )


class DspyParts(NamedTuple):
    """What a DSPy signature class says, in dspex terms (:meth:`Signature.from_dspy` builds the
    :class:`~dspex.signatures.signature.Signature` from it)."""

    name: str
    instructions: str
    input_fields: tuple[FieldSpec, ...]
    output_fields: tuple[FieldSpec, ...]


def parts_from_dspy(cls: type[dspy.Signature]) -> DspyParts:
    """The name, instructions and fields of a DSPy signature class.

    Classes made by :func:`to_dspy` come back exactly; for other classes each annotation maps to
    the nearest dspex type, descriptions come from the fields' ``desc`` and instructions from
    the class (DSPy's generated default instructions count as none).

    Raises:
        SignatureError: ``cls`` is not a DSPy signature class, or some field's annotation has
            no dspex equivalent (every such field is listed).
    """
    from dspy.signatures.signature import Signature as DspySignature

    if not (isinstance(cls, type) and issubclass(cls, DspySignature)):
        raise SignatureError(f"not a DSPy signature class: {cls!r}")
    problems: list[ErrorDetail] = []
    inputs = [_field_from_dspy(n, f, problems) for n, f in cls.input_fields.items()]
    outputs = [_field_from_dspy(n, f, problems) for n, f in cls.output_fields.items()]
    if problems:
        raise SignatureError(f"DSPy signature {cls.__name__} cannot be converted:", problems)
    instructions = cls.instructions or ""
    if instructions == _default_instructions(cls):
        instructions = ""
    return DspyParts(
        name=cls.__name__,
        instructions=instructions,
        input_fields=tuple(f for f in inputs if f is not None),
        output_fields=tuple(f for f in outputs if f is not None),
    )


def _default_instructions(cls: type[dspy.Signature]) -> str:
    # mirrors dspy.signatures.signature._default_instructions, which is private
    inputs = ", ".join(f"`{name}`" for name in cls.input_fields)
    outputs = ", ".join(f"`{name}`" for name in cls.output_fields)
    return f"Given the fields {inputs}, produce the fields {outputs}."
