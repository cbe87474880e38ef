"""Compile type trees and constraints into pydantic validators, once.

Each type node becomes a pydantic-core schema; a field's schema is wrapped in a
:class:`pydantic.TypeAdapter` (cached by ``(type, constraints)``) and a signature's inputs or
outputs become one typed-dict adapter that validates a whole record in a single call, reporting
every problem. Values are never walked by hand: pydantic does the walking.

Coercion rules (the same everywhere):

* ``int`` accepts ints and integral floats (``42.0`` → ``42``); rejects ``42.5``, strings, booleans.
* ``float`` accepts ints (→ float) and floats; rejects strings, booleans, NaN and infinities.
* ``bool`` accepts only ``True``/``False``; ``str`` only strings.
* ``probability``/``confidence_score`` are floats in [0, 1]; ``embedding`` is a non-empty list of
  numbers (exactly ``dim`` of them when given); ``reasoning_chain`` is a list of strings.
* ``Literal`` values match by type and value (``True`` is not ``1``).
* DSPy's types (``Image``, ``History``, …) accept their JSON forms and give the canonical one.
"""

from __future__ import annotations

import functools
import json
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetPydanticSchema, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError, core_schema
from pydantic_core.core_schema import CoreSchema

from dspex.errors import ErrorDetail, ValidationError
from dspex.signatures.dspy_types import normalizer
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
    constraint_applies,
)

__all__ = [
    "RecordValidator",
    "TypeValidator",
    "build_schema",
    "record_validator",
    "type_validator",
]

_NO_CONSTRAINTS = Constraints()


# ------------------------------------------------------------------------------------------------
# small validator functions (called by pydantic-core only on the paths that need them)


def _float_to_int(value: float) -> int:
    if value.is_integer():
        return int(value)
    raise PydanticCustomError("whole_number_type", "Input should be a whole number")


def _literal_checker(values: tuple[Any, ...]) -> Callable[[Any], Any]:
    # Keys carry the exact type so that True never matches 1 and 1.0 matches 1 only as a number.
    allowed = {(_kind(v), v) for v in values}
    text = ", ".join(repr(v) for v in values)

    def check(value: Any) -> Any:
        kind = _kind(value)
        if kind is not None:
            try:
                if (kind, value) in allowed:
                    return value
            except TypeError:  # pragma: no cover - unhashable inputs have kind None
                pass
        raise PydanticCustomError(
            "literal_error", "Input should be one of: {expected}", {"expected": text}
        )

    return check


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    return None


def _one_of_checker(values: tuple[Any, ...]) -> Callable[[Any], Any]:
    text = ", ".join(repr(v) for v in values)

    def check(value: Any) -> Any:
        for allowed in values:
            if (value == allowed and type(value) is type(allowed)) or (
                _kind(value) == "number" == _kind(allowed) and value == allowed
            ):
                return value
        raise PydanticCustomError(
            "not_one_of", "Input should be one of: {expected}", {"expected": text}
        )

    return check


def _unique(items: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for i, item in enumerate(items):
        key = json.dumps(item, sort_keys=True, default=repr)
        if key in seen:
            raise PydanticCustomError(
                "not_unique", "List items should be unique (item {index} repeats)", {"index": i}
            )
        seen.add(key)
    return items


def _dump_model(value: Any) -> Any:
    return value.model_dump()


# ------------------------------------------------------------------------------------------------
# schema building


def _num_bounds(c: Constraints, lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    ge = c.minimum if lo is None else (lo if c.minimum is None else max(lo, c.minimum))
    le = c.maximum if hi is None else (hi if c.maximum is None else min(hi, c.maximum))
    out: dict[str, Any] = {}
    if ge is not None:
        out["ge"] = ge
    if le is not None:
        out["le"] = le
    if c.multiple_of is not None:
        out["multiple_of"] = c.multiple_of
    return out


def _for_option(c: Constraints, node: TypeNode) -> Constraints:
    """The part of ``c`` that applies to one option of a union."""
    keep = {
        k: v
        for k, v in c.model_dump(exclude_none=True).items()
        if k != "one_of" and constraint_applies(k, node)
    }
    return Constraints(**keep) if keep else _NO_CONSTRAINTS


def build_schema(node: TypeNode, c: Constraints = _NO_CONSTRAINTS) -> CoreSchema:
    """The pydantic-core schema for values of ``node`` under constraints ``c``."""
    schema = _build(node, c)
    if c.one_of is not None and not isinstance(node, OptionalType):
        schema = core_schema.no_info_after_validator_function(_one_of_checker(c.one_of), schema)
    return schema


def _build(node: TypeNode, c: Constraints) -> CoreSchema:
    if isinstance(node, Scalar):
        if node.name == "str":
            return core_schema.str_schema(
                strict=True,
                min_length=c.min_length,
                max_length=c.max_length,
                pattern=c.pattern,
                regex_engine="python-re",
            )
        if node.name == "int":
            return _int_schema(c)
        if node.name == "float":
            return core_schema.float_schema(strict=True, allow_inf_nan=False, **_num_bounds(c))
        return core_schema.bool_schema(strict=True)
    if isinstance(node, Probability | ConfidenceScore):
        return core_schema.float_schema(
            strict=True, allow_inf_nan=False, **_num_bounds(c, 0.0, 1.0)
        )
    if isinstance(node, LiteralType):
        if all(isinstance(v, str) for v in node.values):
            return core_schema.literal_schema(list(node.values))
        return core_schema.no_info_plain_validator_function(_literal_checker(node.values))
    if isinstance(node, Embedding):
        dim = node.dim if node.dim is not None else c.dim
        lo = dim if dim is not None else max(1, c.min_items or 1)
        hi = dim if dim is not None else c.max_items
        return core_schema.list_schema(
            core_schema.float_schema(strict=True, allow_inf_nan=False), min_length=lo, max_length=hi
        )
    if isinstance(node, ReasoningChain):
        return _list(core_schema.str_schema(strict=True), c)
    if isinstance(node, ListType):
        return _list(build_schema(node.item), c)
    if isinstance(node, DictType):
        return core_schema.dict_schema(
            build_schema(node.key),
            build_schema(node.value),
            min_length=c.min_items,
            max_length=c.max_items,
        )
    if isinstance(node, UnionType):
        return core_schema.union_schema(
            [(build_schema(o, _for_option(c, o)), str(i)) for i, o in enumerate(node.options)]
        )
    if isinstance(node, OptionalType):
        return core_schema.nullable_schema(build_schema(node.inner, c))
    if isinstance(node, ModelType):
        return core_schema.no_info_after_validator_function(
            _dump_model, node.model.__pydantic_core_schema__
        )
    if isinstance(node, DspyType):
        # the JSON forms in, the canonical JSON form out (see dspex.signatures.dspy_types)
        return core_schema.no_info_plain_validator_function(normalizer(node.name))
    raise TypeError(f"not a type node: {node!r}")  # pragma: no cover


def _int_schema(c: Constraints) -> CoreSchema:
    whole = core_schema.union_schema(
        [
            core_schema.int_schema(strict=True),
            core_schema.chain_schema(
                [
                    core_schema.float_schema(strict=True, allow_inf_nan=False),
                    core_schema.no_info_plain_validator_function(_float_to_int),
                ]
            ),
        ],
        custom_error_type="whole_number_type",
        custom_error_message="Input should be an integer (a whole number, not a string or boolean)",
    )
    bounds = _num_bounds(c)
    if not bounds:
        return whole
    # Bounds run after the type check so that an out-of-range int gets its own error.
    return core_schema.chain_schema([whole, core_schema.int_schema(strict=True, **bounds)])


def _list(item: CoreSchema, c: Constraints) -> CoreSchema:
    schema = core_schema.list_schema(item, min_length=c.min_items, max_length=c.max_items)
    if c.unique_items:
        return core_schema.no_info_after_validator_function(_unique, schema)
    return schema


def _adapter(schema: CoreSchema) -> TypeAdapter[Any]:
    return TypeAdapter(Annotated[Any, GetPydanticSchema(lambda _tp, _handler: schema)])


# ------------------------------------------------------------------------------------------------
# errors: pydantic's locations → our field paths


_TYPE_ERRORS = frozenset(
    {
        "int_type",
        "whole_number_type",
        "float_type",
        "string_type",
        "bool_type",
        "list_type",
        "dict_type",
        "literal_error",
        "model_type",
        "model_attributes_type",
        "is_instance_of",
        "none_required",
    }
)
_CODES = {
    "missing": "missing",
    "extra_forbidden": "unexpected_field",
    "finite_number": "not_finite",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "string_too_short": "too_short",
    "too_short": "too_short",
    "string_too_long": "too_long",
    "too_long": "too_long",
    "string_pattern_mismatch": "pattern_mismatch",
    "multiple_of": "not_multiple_of",
    "literal_error": "not_allowed",
    "not_one_of": "not_allowed",
    "not_unique": "not_unique",
}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


@dataclass(slots=True)
class _Located:
    path: str
    unions: list[str]
    union_root: str | None  # the union path when this is a plain type error of one union option
    union_node: TypeNode | None
    input: Any
    detail: ErrorDetail


def _join(path: str, item: str | int, *, index: bool) -> str:
    if index:
        return f"{path}[{item!r}]"
    return f"{path}.{item}" if path else str(item)


_Walk = tuple[str, list[str], bool, bool, TypeNode | None]


def _locate(node: TypeNode | None, loc: tuple[str | int, ...], base: str) -> _Walk:
    """Walk ``loc`` through ``node``.

    Returns:
        (path, union paths passed, ends at a union option, is a dict key, the last union passed)
    """
    path = base
    unions: list[str] = []
    last_union: TypeNode | None = None
    at_option = False
    is_key = False
    items = list(loc)
    while items:
        while isinstance(node, OptionalType):
            node = node.inner
        item = items.pop(0)
        at_option = False
        if isinstance(node, UnionType) and isinstance(item, str) and item.isdigit():
            unions.append(path)
            last_union = node
            node = node.options[int(item)]
            at_option = True
        elif isinstance(node, ListType | ReasoningChain | Embedding) and isinstance(item, int):
            path = _join(path, item, index=True)
            node = node.item if isinstance(node, ListType) else None
        elif isinstance(node, DictType):
            path = _join(path, item, index=True)
            if items and items[0] == "[key]":
                items.pop(0)
                is_key = True
                node = node.key
            else:
                node = node.value
        else:
            node = None
            path = _join(path, item, index=isinstance(item, int))
    return path, unions, at_option, is_key, last_union


def _detail(err: Any, path: str, is_key: bool, at_root: bool) -> ErrorDetail:
    kind = err["type"]
    msg: str = err["msg"]
    if kind == "dict_type" and at_root:
        return ErrorDetail(
            "",
            "not_a_mapping",
            f"data must be a mapping of field names to values, got {_json_kind(err['input'])}",
        )
    if kind == "missing":
        return ErrorDetail(path, "missing", "required field is missing")
    if kind == "extra_forbidden":
        return ErrorDetail(path, "unexpected_field", "unexpected field (not in the signature)")
    code = _CODES.get(kind)
    if code is None:
        code = "wrong_type" if kind in _TYPE_ERRORS or kind.endswith("_type") else kind
    if code == "wrong_type" or kind == "literal_error":
        msg = f"{msg}, got {_json_kind(err['input'])} {_short(err['input'])}"
    if is_key:
        msg = f"dict key: {msg}"
    return ErrorDetail(path, code, msg)


def _bounded_repr() -> reprlib.Repr:
    shortened = reprlib.Repr()
    shortened.maxlevel = 3
    shortened.maxdict = shortened.maxlist = shortened.maxtuple = shortened.maxset = 3
    shortened.maxstring = shortened.maxother = 40
    return shortened


_REPR = _bounded_repr()


def _short(value: Any) -> str:
    """A short repr for an error message: bounded in length and depth (deep input is no crash)."""
    text = _REPR.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def convert_errors(
    exc: PydanticValidationError,
    root: Mapping[str, TypeNode] | TypeNode,
    base: str = "",
) -> list[ErrorDetail]:
    """Turn pydantic's errors into :class:`ErrorDetail`\\ s with readable paths.

    ``root`` is either the type being validated or, for records, a lookup from field name to
    type. Type errors of single union options collapse into one "matches none of" error unless
    some option got further (then that option's deeper errors are the useful ones).
    """
    located: list[_Located] = []
    for err in exc.errors(include_url=False):
        loc: tuple[str | int, ...] = tuple(err["loc"])
        if isinstance(root, Mapping):
            if loc and isinstance(loc[0], str):
                name = loc[0]
                walk = _locate(root.get(name), loc[1:], name)
            else:
                walk = (base, [], False, False, None)
        else:
            walk = _locate(root, loc, base)
        path, unions, at_option, is_key, union_node = walk
        detail = _detail(err, path, is_key, at_root=not loc)
        union_root = unions[-1] if at_option and detail.code == "wrong_type" and unions else None
        located.append(_Located(path, unions, union_root, union_node, err["input"], detail))

    deeper = {u for e in located for u in e.unions if e.union_root != u}
    out: list[ErrorDetail] = []
    collapsed: set[str] = set()
    for e in located:
        if e.union_root is None:
            out.append(e.detail)
        elif e.union_root not in deeper and e.union_root not in collapsed:
            collapsed.add(e.union_root)
            from dspex.signatures.parse import format_type

            expected = format_type(e.union_node) if e.union_node is not None else "the union"
            out.append(
                ErrorDetail(
                    e.union_root,
                    "wrong_type",
                    f"Input should be {expected}, got {_json_kind(e.input)} {_short(e.input)}",
                )
            )
    return out


# ------------------------------------------------------------------------------------------------
# public validators


class TypeValidator:
    """A compiled validator for one type with its constraints."""

    __slots__ = ("_adapter", "node")

    def __init__(self, node: TypeNode, constraints: Constraints = _NO_CONSTRAINTS) -> None:
        self.node = node
        self._adapter = _adapter(build_schema(node, constraints))

    def validate(self, value: Any, *, path: str = "") -> Any:
        """The coerced value.

        Raises:
            ValidationError: ``errors`` lists every problem, with paths under ``path``.
        """
        try:
            return self._adapter.validate_python(value)
        except PydanticValidationError as exc:
            raise ValidationError(
                f"invalid value for {path or 'value'}:", convert_errors(exc, self.node, path)
            ) from None

    def accepts(self, value: Any) -> bool:
        try:
            self._adapter.validate_python(value)
        except PydanticValidationError:
            return False
        return True


@functools.lru_cache(maxsize=1024)
def _cached_type_validator(node: TypeNode, constraints: Constraints) -> TypeValidator:
    return TypeValidator(node, constraints)


def type_validator(node: TypeNode, constraints: Constraints | None = None) -> TypeValidator:
    """The compiled validator for ``node``, cached by ``(type, constraints)``."""
    c = constraints if constraints is not None else _NO_CONSTRAINTS
    try:
        return _cached_type_validator(node, c)
    except TypeError:  # unhashable constraint values (one_of with lists): compile uncached
        return TypeValidator(node, c)


class RecordValidator:
    """A compiled validator for a whole record (a signature's inputs or outputs)."""

    __slots__ = ("_adapter", "_many", "_schema", "_types", "what")

    def __init__(self, fields: Sequence[FieldSpec], what: str) -> None:
        self.what = what
        self._types = {f.name: f.type for f in fields}
        td_fields: dict[str, core_schema.TypedDictField] = {}
        for f in fields:
            schema = build_schema(f.type, f.constraints)
            if f.optional:
                td_fields[f.name] = core_schema.typed_dict_field(
                    core_schema.with_default_schema(schema, default=None), required=False
                )
            else:
                td_fields[f.name] = core_schema.typed_dict_field(schema, required=True)
        self._schema = core_schema.typed_dict_schema(td_fields, extra_behavior="forbid")
        self._adapter = _adapter(self._schema)
        self._many: TypeAdapter[Any] | None = None

    def validate(self, data: object) -> dict[str, Any]:
        """The coerced record.

        Raises:
            ValidationError: ``errors`` lists every problem (missing, unexpected and bad fields).
        """
        try:
            result: dict[str, Any] = self._adapter.validate_python(data)
        except PydanticValidationError as exc:
            raise ValidationError(
                f"{self.what} are invalid:", convert_errors(exc, self._types)
            ) from None
        return result

    def validate_many(self, records: Sequence[object]) -> list[dict[str, Any]] | None:
        """Every record coerced, in one pass (a batch's list input), or ``None`` when any is
        invalid: :meth:`validate` then names each problem of each record.

        Validating the whole list in one call costs a fraction of one call per record.
        """
        many = self._many
        if many is None:
            many = self._many = _adapter(core_schema.list_schema(self._schema))
        try:
            result: list[dict[str, Any]] = many.validate_python(records)
        except PydanticValidationError:
            return None
        return result


@functools.lru_cache(maxsize=512)
def _cached_record_validator(fields: tuple[FieldSpec, ...], what: str) -> RecordValidator:
    return RecordValidator(fields, what)


def record_validator(fields: Sequence[FieldSpec], what: str) -> RecordValidator:
    """The compiled validator for a record of ``fields`` (cached when the fields are hashable)."""
    key = tuple(fields)
    try:
        return _cached_record_validator(key, what)
    except TypeError:
        return RecordValidator(key, what)
