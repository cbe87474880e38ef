"""The structural rules of a signature: names, types and whether each constraint fits its type.

:func:`check_fields` returns every problem (never stops at the first). :class:`Signature` raises
them as one :class:`~dspex.errors.SignatureError`; ``validate_signature`` groups them into report
steps by code (:data:`STEP_OF_CODE`).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable, Sequence

from dspex.errors import ErrorDetail
from dspex.signatures.parse import MAX_EMBEDDING_DIM
from dspex.signatures.types import (
    Constraints,
    DictType,
    Embedding,
    FieldSpec,
    ListType,
    LiteralType,
    ModelType,
    OptionalType,
    Scalar,
    TypeNode,
    UnionType,
    constraint_applies,
    kinds_of,
)

__all__ = [
    "RESERVED_NAMES",
    "STEP_OF_CODE",
    "check_fields",
    "check_name",
]

# Names a field cannot have because DSPy objects already use them: a field called ``items`` would
# be shadowed by ``Prediction.items()`` and ``instructions`` breaks ``dspy.Signature`` itself.
_PREDICTION_NAMES = frozenset(
    [
        "completions",
        "copy",
        "from_completions",
        "get",
        "get_lm_usage",
        "inputs",
        "items",
        "keys",
        "labels",
        "set_lm_usage",
        "toDict",
        "values",
        "with_inputs",
        "without",
    ]
)
_SIGNATURE_NAMES = frozenset(
    [
        "append",
        "append_instructions",
        "construct",
        "delete",
        "dict",
        "dump_state",
        "equals",
        "fields",
        "from_orm",
        "input_fields",
        "insert",
        "instructions",
        "json",
        "load_state",
        "output_fields",
        "parse_file",
        "parse_obj",
        "parse_raw",
        "prepend",
        "schema",
        "schema_json",
        "signature",
        "update_forward_refs",
        "validate",
        "with_instructions",
        "with_updated_fields",
    ]
)
RESERVED_NAMES: frozenset[str] = _PREDICTION_NAMES | _SIGNATURE_NAMES

# Which report step a problem code belongs to.
STEP_OF_CODE: dict[str, str] = {
    "syntax": "parse",
    "missing_arrow": "parse",
    "empty_field": "parse",
    "invalid_spec": "parse",
    "unknown_key": "parse",
    "no_outputs": "structure",
    "invalid_name": "names",
    "keyword_name": "names",
    "reserved_name": "names",
    "duplicate_name": "names",
    "unknown_type": "types",
    "empty_union": "types",
    "invalid_type": "types",
    "unknown_constraint": "constraints",
    "invalid_constraint": "constraints",
    "constraint_not_applicable": "constraints",
    "constraint_conflict": "constraints",
}


def check_name(name: object) -> ErrorDetail | None:
    """The problem with a field name, or ``None`` when it is usable."""
    if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
        return ErrorDetail(str(name), "invalid_name", f"field name {name!r} is not an identifier")
    if keyword.iskeyword(name):
        return ErrorDetail(name, "keyword_name", f"field name {name!r} is a Python keyword")
    if name in RESERVED_NAMES:
        return ErrorDetail(
            name,
            "reserved_name",
            f"field name {name!r} is reserved: DSPy's Prediction/Signature already use it",
        )
    if name.startswith(("_", "model_")):
        return ErrorDetail(
            name,
            "reserved_name",
            f"field name {name!r} is reserved: names starting with '_' or 'model_' belong to "
            "pydantic/DSPy internals",
        )
    return None


def _type_problems(node: TypeNode, where: str) -> Iterable[ErrorDetail]:
    """Problems inside a type tree that the parser cannot produce but Python/DSPy code can."""
    if isinstance(node, Embedding):
        if node.dim is not None and (
            not isinstance(node.dim, int) or isinstance(node.dim, bool) or node.dim < 1
        ):
            yield ErrorDetail(where, "invalid_type", f"embedding dim must be ≥ 1, got {node.dim!r}")
        elif node.dim is not None and node.dim > MAX_EMBEDDING_DIM:
            yield ErrorDetail(
                where,
                "invalid_type",
                f"embedding dim must be at most {MAX_EMBEDDING_DIM}, got {node.dim}",
            )
    elif isinstance(node, LiteralType):
        if not node.values:
            yield ErrorDetail(where, "invalid_type", "Literal[…] needs at least one value")
        for v in node.values:
            if not isinstance(v, str | int | float | bool):
                yield ErrorDetail(
                    where, "invalid_type", f"Literal value {v!r} is not a string, number or boolean"
                )
    elif isinstance(node, ListType):
        yield from _type_problems(node.item, where)
    elif isinstance(node, DictType):
        if not (
            node.key == Scalar("str")
            or (isinstance(node.key, LiteralType) and kinds_of(node.key) == {"string"})
        ):
            yield ErrorDetail(
                where,
                "invalid_type",
                "dict keys must be str or a Literal of strings (JSON object keys are strings)",
            )
        yield from _type_problems(node.value, where)
    elif isinstance(node, UnionType):
        if len(node.options) < 2:
            yield ErrorDetail(where, "empty_union", "a union needs at least two options")
        for o in node.options:
            yield from _type_problems(o, where)
    elif isinstance(node, OptionalType):
        yield from _type_problems(node.inner, where)
    elif isinstance(node, ModelType):
        from pydantic import BaseModel

        if not (isinstance(node.model, type) and issubclass(node.model, BaseModel)):
            yield ErrorDetail(where, "invalid_type", f"{node.model!r} is not a pydantic model")


def _constraint_problems(spec: FieldSpec) -> Iterable[ErrorDetail]:
    c = spec.constraints
    name = spec.name
    set_values = c.model_dump(exclude_none=True)
    for key in set_values:
        if not constraint_applies(key, spec.type):
            from dspex.signatures.parse import format_type

            yield ErrorDetail(
                name,
                "constraint_not_applicable",
                f"constraint {key!r} does not apply to type {format_type(spec.type)}",
            )
    for low, high in (
        ("min_length", "max_length"),
        ("minimum", "maximum"),
        ("min_items", "max_items"),
    ):
        lo, hi = getattr(c, low), getattr(c, high)
        if lo is not None and hi is not None and lo > hi:
            yield ErrorDetail(
                name, "constraint_conflict", f"{low} ({lo}) is greater than {high} ({hi})"
            )
    for key in ("min_length", "max_length", "min_items", "max_items"):
        value = getattr(c, key)
        if value is not None and value < 0:
            yield ErrorDetail(name, "invalid_constraint", f"{key} must be ≥ 0, got {value}")
    if c.multiple_of is not None and c.multiple_of <= 0:
        yield ErrorDetail(
            name, "invalid_constraint", f"multiple_of must be > 0, got {c.multiple_of}"
        )
    if c.dim is not None:
        if c.dim < 1:
            yield ErrorDetail(name, "invalid_constraint", f"dim must be ≥ 1, got {c.dim}")
        elif c.dim > MAX_EMBEDDING_DIM:
            yield ErrorDetail(
                name, "invalid_constraint", f"dim must be at most {MAX_EMBEDDING_DIM}, got {c.dim}"
            )
        base = spec.type.inner if isinstance(spec.type, OptionalType) else spec.type
        if isinstance(base, Embedding) and base.dim is not None and base.dim != c.dim:
            yield ErrorDetail(
                name,
                "constraint_conflict",
                f"dim {c.dim} contradicts the type embedding[{base.dim}]",
            )
    if c.pattern is not None:
        try:
            re.compile(c.pattern)
        except re.error as exc:
            yield ErrorDetail(
                name, "invalid_constraint", f"pattern {c.pattern!r} is invalid: {exc}"
            )
    if c.one_of is not None:
        if not c.one_of:
            yield ErrorDetail(name, "invalid_constraint", "one_of needs at least one value")
        elif constraint_applies("one_of", spec.type):
            from dspex.signatures.compile import type_validator

            validator = type_validator(spec.type)
            for value in c.one_of:
                if not validator.accepts(value):
                    yield ErrorDetail(
                        name,
                        "invalid_constraint",
                        f"one_of value {value!r} is not a valid value of the field's type",
                    )


def check_fields(inputs: Sequence[FieldSpec], outputs: Sequence[FieldSpec]) -> list[ErrorDetail]:
    """Every structural problem of a signature's fields (empty list when it is sound)."""
    problems: list[ErrorDetail] = []
    if not outputs:
        problems.append(
            ErrorDetail("", "no_outputs", "a signature needs at least one output field")
        )
    seen: dict[str, str] = {}
    for side, fields in (("input", inputs), ("output", outputs)):
        for spec in fields:
            name_problem = check_name(spec.name)
            if name_problem is not None:
                problems.append(name_problem)
            if spec.name in seen:
                problems.append(
                    ErrorDetail(
                        spec.name,
                        "duplicate_name",
                        f"field {spec.name!r} appears twice ({seen[spec.name]} and {side})",
                    )
                )
            else:
                seen[spec.name] = side
            problems.extend(_type_problems(spec.type, spec.name))
            if not isinstance(spec.constraints, Constraints):
                problems.append(
                    ErrorDetail(spec.name, "invalid_constraint", "constraints must be Constraints")
                )
                continue
            if not any(
                p.field == spec.name and p.code in ("invalid_type", "empty_union") for p in problems
            ):
                problems.extend(_constraint_problems(spec))
    return problems
