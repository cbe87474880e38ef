"""Property tests: generated values are accepted, arbitrary JSON only ever raises ValidationError,
and parse → str → parse is stable."""

from __future__ import annotations

import keyword
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dspex.errors import ErrorDetail, ValidationError
from dspex.signatures.compile import type_validator
from dspex.signatures.parse import format_type, parse_type
from dspex.signatures.rules import RESERVED_NAMES
from dspex.signatures.signature import Signature
from dspex.signatures.types import (
    ConfidenceScore,
    DictType,
    Embedding,
    FieldSpec,
    ListType,
    LiteralType,
    OptionalType,
    Probability,
    ReasoningChain,
    Scalar,
    TypeNode,
    UnionType,
)

LEAVES: list[TypeNode] = [
    Scalar("str"),
    Scalar("int"),
    Scalar("float"),
    Scalar("bool"),
    Probability(),
    ConfidenceScore(),
    ReasoningChain(),
    Embedding(),
    Embedding(3),
    LiteralType(("a", "b")),
    LiteralType((1, "x", True)),
]


def _extend(children: st.SearchStrategy[TypeNode]) -> st.SearchStrategy[TypeNode]:
    return st.one_of(
        children.map(ListType),
        children.map(lambda v: DictType(Scalar("str"), v)),
        children.map(OptionalType),
        st.lists(children, min_size=2, max_size=3).map(_union),
    )


def _union(options: list[TypeNode]) -> TypeNode:
    from dspex.signatures.parse import make_union

    return make_union(options)


types = st.recursive(st.sampled_from(LEAVES), _extend, max_leaves=6).map(
    lambda t: parse_type(format_type(t))  # canonical form (nested optionals collapsed)
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=10,
)


def values_of(node: TypeNode) -> st.SearchStrategy[Any]:
    if isinstance(node, Scalar):
        return {
            "str": st.text(max_size=10),
            "int": st.integers() | st.integers(-(2**40), 2**40).map(float),
            "float": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
            "bool": st.booleans(),
        }[node.name]
    if isinstance(node, Probability | ConfidenceScore):
        return st.floats(0, 1) | st.sampled_from([0, 1])
    if isinstance(node, ReasoningChain):
        return st.lists(st.text(max_size=5), max_size=3)
    if isinstance(node, Embedding):
        n = node.dim
        item = st.floats(allow_nan=False, allow_infinity=False)
        return st.lists(item, min_size=n or 1, max_size=n or 5)
    if isinstance(node, LiteralType):
        return st.sampled_from(node.values)
    if isinstance(node, ListType):
        return st.lists(values_of(node.item), max_size=3)
    if isinstance(node, DictType):
        return st.dictionaries(st.text(max_size=4), values_of(node.value), max_size=3)
    if isinstance(node, OptionalType):
        return st.none() | values_of(node.inner)
    if isinstance(node, UnionType):
        return st.one_of([values_of(o) for o in node.options])
    raise AssertionError(node)


@settings(max_examples=150, deadline=None)
@given(st.data(), types)
def test_values_generated_from_a_type_are_accepted(data: st.DataObject, node: TypeNode) -> None:
    value = data.draw(values_of(node))
    assert type_validator(node).accepts(value), (format_type(node), value)


def _problems(validate: Callable[[Any], Any], value: Any) -> list[ErrorDetail] | None:
    """None when ``value`` passed, the reported problems when it failed; anything else raises."""
    try:
        validate(value)
    except ValidationError as exc:
        return exc.errors
    return None


@settings(max_examples=150, deadline=None)
@given(types, json_values)
def test_arbitrary_json_only_ever_raises_validation_error(node: TypeNode, value: Any) -> None:
    problems = _problems(type_validator(node).validate, value)
    assert problems is None or (problems and all(e.code and e.message for e in problems))


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_records_reject_arbitrary_json_with_validation_error_only(value: Any) -> None:
    sig = Signature.parse("q: str, ids: list[int], m: dict[str, int | str] -> a: probability")
    for validate in (sig.validate_inputs, sig.validate_outputs):
        problems = _problems(validate, value)
        assert problems is None or problems


names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and n not in RESERVED_NAMES and not n.startswith("model_")
)
descriptions = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(names, types, descriptions), min_size=1, max_size=5, unique_by=lambda f: f[0]
    ),
    st.integers(0, 4),
)
def test_parse_str_parse_is_stable(fields: list[tuple[str, TypeNode, str]], split: int) -> None:
    split = min(split, len(fields) - 1)
    specs = [FieldSpec(n, t, d) for n, t, d in fields]
    sig = Signature("S", "", tuple(specs[:split]), tuple(specs[split:]))
    again = Signature.parse(str(sig), name="S")
    assert again == sig
    assert str(again) == str(sig)
    assert Signature.from_dict(sig.to_dict()) == sig
