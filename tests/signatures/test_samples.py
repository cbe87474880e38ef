from __future__ import annotations

import random
import re
from typing import Annotated, Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from dspex.errors import SignatureError, ValidationError
from dspex.signatures.compile import type_validator
from dspex.signatures.samples import invalid_samples, valid_sample
from dspex.signatures.signature import Signature
from dspex.signatures.types import (
    ConfidenceScore,
    Constraints,
    DictType,
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


def _accepts(field: FieldSpec, value: Any) -> bool:
    return type_validator(field.type, field.constraints).accepts(value)


def _spec(node: TypeNode, **constraints: Any) -> FieldSpec:
    return FieldSpec("f", node, constraints=Constraints(**constraints))


class Address(BaseModel):
    street: str
    number: Annotated[int, Field(ge=1, le=999)]
    tags: list[str] = []
    kind: Literal["home", "work"] = "home"
    note: str | None = None


class Person(BaseModel):
    name: Annotated[str, Field(min_length=2, max_length=20)]
    age: Annotated[int, Field(gt=0, lt=130)]
    score: float
    active: bool
    address: Address
    extra: dict[str, int] = {}


# ---------------------------------------------------------------------------- random fields

_LEAVES: list[TypeNode] = [
    Scalar("str"),
    Scalar("int"),
    Scalar("float"),
    Scalar("bool"),
    LiteralType(("low", "high")),
    LiteralType((1, 2, 3)),
    Embedding(),
    Embedding(4),
    Probability(),
    ConfidenceScore(),
    ReasoningChain(),
]
_PATTERNS = [r"^[a-z]+$", r"\d{3}-\d{2}", r"(cat|dog)s?", r"[A-Z][a-z]*", r"[^0-9]{2,4}"]

_types: st.SearchStrategy[TypeNode] = st.recursive(
    st.sampled_from(_LEAVES),
    lambda inner: st.one_of(
        st.builds(ListType, inner),
        st.builds(DictType, st.just(Scalar("str")), inner),
        st.builds(OptionalType, inner.filter(lambda t: not isinstance(t, OptionalType))),
        st.lists(st.sampled_from(_LEAVES), min_size=2, max_size=3, unique=True).map(
            lambda opts: UnionType(tuple(opts))
        ),
    ),
    max_leaves=4,
)


def _constraints_for(node: TypeNode) -> st.SearchStrategy[dict[str, Any]]:
    """Constraints that apply to the node and can be satisfied together."""
    base = node.inner if isinstance(node, OptionalType) else node
    match base:
        case Scalar(name="str"):
            lengths = st.integers(0, 5).flatmap(
                lambda lo: st.fixed_dictionaries(
                    {}, optional={"min_length": st.just(lo), "max_length": st.integers(lo, lo + 10)}
                )
            )
            return st.one_of(
                lengths,
                st.fixed_dictionaries({"pattern": st.sampled_from(_PATTERNS)}),
                st.just({"one_of": ("x", "y z")}),
            )
        case Scalar(name="int"):
            return st.integers(-50, 50).flatmap(
                lambda lo: st.fixed_dictionaries(
                    {},
                    optional={
                        "minimum": st.just(lo),
                        "maximum": st.integers(lo + 20, lo + 100),
                        "multiple_of": st.sampled_from([2, 5, 10]),
                    },
                )
            )
        case Scalar(name="float"):
            return st.floats(-50, 50).flatmap(
                lambda lo: st.fixed_dictionaries(
                    {},
                    optional={
                        "minimum": st.just(lo),
                        "maximum": st.floats(lo + 5, lo + 100),
                        "multiple_of": st.sampled_from([0.5, 0.25, 2.0]),
                    },
                )
            )
        case Probability() | ConfidenceScore():
            return st.fixed_dictionaries(
                {},
                optional={"minimum": st.floats(0, 0.4), "maximum": st.floats(0.6, 1)},
            )
        case ListType(item=Scalar(name="str" | "int" | "float")) | ReasoningChain():
            return st.integers(0, 3).flatmap(
                lambda lo: st.fixed_dictionaries(
                    {},
                    optional={
                        "min_items": st.just(lo),
                        "max_items": st.integers(lo, lo + 3),
                        "unique_items": st.just(True),
                    },
                )
            )
        case ListType() | DictType():
            return st.integers(0, 2).flatmap(
                lambda lo: st.fixed_dictionaries(
                    {}, optional={"min_items": st.just(lo), "max_items": st.integers(max(lo, 1), 4)}
                )
            )
        case Embedding(dim=None):
            return st.one_of(
                st.fixed_dictionaries({"dim": st.integers(1, 6)}),
                st.fixed_dictionaries(
                    {}, optional={"min_items": st.integers(1, 3), "max_items": st.integers(3, 6)}
                ),
            )
    return st.just({})


@st.composite
def _fields(draw: st.DrawFn) -> FieldSpec:
    node = draw(_types)
    constraints = draw(_constraints_for(node))
    return FieldSpec(
        "f", node, constraints=Constraints(**constraints), optional=draw(st.booleans())
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=_fields(), seed=st.integers(0, 2**32))
def test_valid_samples_pass_the_real_validator(field: FieldSpec, seed: int) -> None:
    value = valid_sample(field, random.Random(seed))
    assert _accepts(field, value), value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=_fields(), seed=st.integers(0, 2**32))
def test_invalid_samples_fail_the_real_validator(field: FieldSpec, seed: int) -> None:
    samples = invalid_samples(field, random.Random(seed))
    accepted = [(value, reason) for value, reason in samples if _accepts(field, value)]
    assert accepted == []


@given(field=_fields(), seed=st.integers(0, 2**32))
@settings(max_examples=100, deadline=None)
def test_the_same_seed_gives_the_same_sample(field: FieldSpec, seed: int) -> None:
    assert valid_sample(field, random.Random(seed)) == valid_sample(field, random.Random(seed))


# ---------------------------------------------------------------------------- valid values


def test_optional_types_sometimes_sample_none_and_sometimes_a_value() -> None:
    rng = random.Random(1)
    values = [valid_sample(_spec(OptionalType(Scalar("int"))), rng) for _ in range(100)]
    assert None in values
    assert any(isinstance(v, int) for v in values)


def test_optional_fields_of_plain_types_never_sample_none() -> None:
    field = FieldSpec("f", Scalar("int"), optional=True)
    rng = random.Random(1)
    assert all(valid_sample(field, rng) is not None for _ in range(100))


def test_pattern_samples_match_the_whole_pattern() -> None:
    field = _spec(Scalar("str"), pattern=r"[A-Z]{2}-\d{4}(x|yz)?")
    rng = random.Random(3)
    for _ in range(50):
        assert re.fullmatch(r"[A-Z]{2}-\d{4}(x|yz)?", valid_sample(field, rng))


# The regex subset the sampler parses itself: literals, classes, \d \w \s, ``.``, groups,
# alternation, quantifiers (greedy, lazy, possessive) and anchors.
_SUBSET_PATTERNS = [
    r"abc",
    r"^[a-z]+$",
    r"\d{3}-\d{2}",
    r"(cat|dog)s?",
    r"[A-Z][a-z]*",
    r"[^0-9]{2,4}",
    r"a|b|",
    r"(?:ab|c)+d?",
    r"(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])",
    r"\w+@\w+\.(com|org)",
    r"\s*x\s*",
    r".{0,5}z",
    r"[a-cX-Z_\-\]]{3}",
    r"[]a]+",
    r"[-a]?b[a-]?",
    r"[#-\/]{2}",
    r"\(\d+\)\*\+\?\.\[\$\^\|\{",
    r"x{2}y{,2}z{1,}w{,}",
    r"a{}b",
    r"q{x}",
    r"a*?b+?c??d{1,2}?",
    r"a*+b++c?+",
    r"((a|b)(c|d)){2}",
    r"\t\n?",
    r"^$",
    r"",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=st.sampled_from(_SUBSET_PATTERNS), seed=st.integers(0, 2**32 - 1))
def test_every_sample_of_a_subset_pattern_fullmatches_it(pattern: str, seed: int) -> None:
    field = _spec(Scalar("str"), pattern=pattern)
    rng = random.Random(seed)
    for _ in range(5):
        value = valid_sample(field, rng)
        assert re.fullmatch(pattern, value), (pattern, value)


def test_samples_of_a_pattern_cover_its_alternatives_and_repeats() -> None:
    field = _spec(Scalar("str"), pattern=r"(cat|dog)s?")
    rng = random.Random(0)
    assert {valid_sample(field, rng) for _ in range(100)} == {"cat", "cats", "dog", "dogs"}


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a)\1",  # backreference
        r"a(?=b)b",  # lookahead
        r"\bword\b",  # word boundary
        r"(?i)abc",  # inline flag
        r"\Aabc\Z",  # other anchors
        r"\x41",  # hex escape
        r"[^a-z0-9 _.\-]",  # a negated class the sampler has no character for
        r"a(?#note)b",  # comment group
        r"(?P<x>a)(?P=x)",  # named backreference
        r"\D\W\S",  # negated categories
    ],
)
def test_a_pattern_outside_the_subset_gives_the_could_not_generate_outcome(pattern: str) -> None:
    field = _spec(Scalar("str"), pattern=pattern)
    with pytest.raises(SignatureError, match="no string") as info:
        valid_sample(field, random.Random(0))
    assert info.value.errors[0].code == "unsatisfiable"


def test_a_repeat_longer_than_any_sample_finds_no_string() -> None:
    field = _spec(Scalar("str"), pattern=r"a{200000}b?")
    with pytest.raises(SignatureError) as info:
        valid_sample(field, random.Random(0))
    assert info.value.errors[0].code in {"unsatisfiable", "sample_too_large"}


def test_string_lengths_are_honoured_at_both_ends() -> None:
    field = _spec(Scalar("str"), min_length=7, max_length=9)
    rng = random.Random(0)
    assert {len(valid_sample(field, rng)) for _ in range(200)} == {7, 8, 9}


def test_embedding_samples_have_the_declared_dim() -> None:
    sample = valid_sample(_spec(Embedding(384)), random.Random(0))
    assert len(sample) == 384
    assert all(isinstance(x, float) for x in sample)


def test_one_of_samples_come_from_the_allowed_values() -> None:
    field = _spec(Scalar("int"), one_of=(3, 5, 8))
    rng = random.Random(0)
    assert {valid_sample(field, rng) for _ in range(100)} == {3, 5, 8}


def test_integers_on_a_fractional_grid_are_multiples_of_it() -> None:
    field = _spec(Scalar("int"), minimum=0, maximum=20, multiple_of=2.5)
    rng = random.Random(0)
    assert {valid_sample(field, rng) for _ in range(100)} <= {0, 5, 10, 15, 20}


def test_a_dict_with_literal_keys_never_asks_for_more_keys_than_exist() -> None:
    field = _spec(DictType(LiteralType(("a", "b")), Scalar("int")), min_items=2, max_items=5)
    assert set(valid_sample(field, random.Random(0))) == {"a", "b"}


def test_model_samples_validate_against_the_model() -> None:
    field = _spec(ModelType(Person))
    rng = random.Random(0)
    for _ in range(50):
        value = valid_sample(field, rng)
        assert isinstance(value, dict)
        Person.model_validate(value)
        assert _accepts(field, value)


@pytest.mark.parametrize(
    ("node", "constraints"),
    [
        (Scalar("int"), {"minimum": 10, "maximum": 5}),
        (Scalar("int"), {"minimum": 1, "maximum": 4, "multiple_of": 5}),
        (Scalar("int"), {"multiple_of": -1}),
        (Scalar("int"), {"minimum": 1, "maximum": 2, "multiple_of": 2.5}),
        (Scalar("float"), {"minimum": 1.1, "maximum": 1.2, "multiple_of": 1.0}),
        (Scalar("float"), {"multiple_of": 0}),
        (Scalar("str"), {"min_length": 5, "max_length": 2}),
        (Scalar("str"), {"pattern": "(?<=a)b"}),
        (Probability(), {"minimum": 2}),
        (ListType(Scalar("int")), {"min_items": 4, "max_items": 1}),
        (Embedding(), {"min_items": 5, "max_items": 2}),
        (DictType(LiteralType(("a",)), Scalar("int")), {"min_items": 2}),
        (Scalar("bool"), {"one_of": ("yes",)}),
        (UnionType((Scalar("int"), Probability())), {"minimum": 5, "maximum": 4}),
    ],
)
def test_unsatisfiable_constraints_raise_a_signature_error(
    node: TypeNode, constraints: dict[str, Any]
) -> None:
    with pytest.raises(SignatureError) as info:
        valid_sample(_spec(node, **constraints), random.Random(0))
    assert info.value.errors[0].code == "unsatisfiable"


def test_unique_items_that_cannot_be_drawn_raise_a_signature_error() -> None:
    field = _spec(ListType(Scalar("bool")), min_items=3, unique_items=True)
    with pytest.raises(SignatureError, match="unique"):
        valid_sample(field, random.Random(0))


def test_a_pattern_no_string_of_the_lengths_matches_raises_a_signature_error() -> None:
    field = _spec(Scalar("str"), pattern=r"\d{10}", max_length=3)
    with pytest.raises(SignatureError, match="no string"):
        valid_sample(field, random.Random(0))


# ---------------------------------------------------------------------------- invalid values


def _values(field: FieldSpec) -> list[Any]:
    return [value for value, _ in invalid_samples(field, random.Random(0))]


def test_invalid_integers_include_numeric_strings_fractions_and_booleans() -> None:
    values = _values(_spec(Scalar("int")))
    assert "42" in values
    assert 42.5 in values
    assert any(v is True for v in values)


def test_invalid_floats_include_strings() -> None:
    assert "3.14" in _values(_spec(Scalar("float")))


def test_invalid_probabilities_include_values_outside_zero_to_one() -> None:
    values = _values(_spec(Probability()))
    assert 1.5 in values
    assert -0.1 in values


def test_invalid_embeddings_include_empty_and_wrong_dim() -> None:
    values = _values(_spec(Embedding(3)))
    assert [] in values
    assert [0.0] * 4 in values
    assert [0.0] * 2 in values


def test_invalid_samples_cover_each_declared_bound() -> None:
    reasons = [
        r for _, r in invalid_samples(_spec(Scalar("int"), minimum=1, maximum=9), random.Random(0))
    ]
    assert "below minimum 1.0" in reasons
    assert "above maximum 9.0" in reasons


def test_null_is_invalid_unless_the_type_is_optional() -> None:
    assert None in _values(FieldSpec("f", Scalar("str"), optional=True))
    assert None not in _values(_spec(OptionalType(Scalar("str"))))


def test_invalid_model_values_include_a_missing_required_field() -> None:
    samples = invalid_samples(_spec(ModelType(Person)), random.Random(0))
    assert any("missing required field 'name'" in reason for _, reason in samples)
    assert all(not _accepts(_spec(ModelType(Person)), value) for value, _ in samples)


def test_invalid_samples_of_a_union_have_no_option_to_fall_into() -> None:
    field = _spec(UnionType((Scalar("int"), Scalar("str"))))
    values = _values(field)
    assert [1, 2] in values
    assert all(not isinstance(v, str) for v in values)


# ---------------------------------------------------------------------------- against a signature

_SIGNATURE = Signature.parse(
    "q: str -> answer: str, n: int, ratio: float, ok: bool, p: probability, "
    "c: confidence_score, v: embedding[4], steps: reasoning_chain, tags: list[str], "
    "scores: dict[str, float], label: Literal['a', 'b'], maybe: optional[int], "
    "either: int | str",
    constraints={
        "answer": {"min_length": 2, "max_length": 12},
        "n": {"minimum": 0, "maximum": 10, "multiple_of": 2},
        "ratio": {"minimum": -1, "maximum": 1},
        "tags": {"min_items": 1, "max_items": 3, "unique_items": True},
    },
)


def _valid_record(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    return {f.name: valid_sample(f, rng) for f in _SIGNATURE.output_fields}


@pytest.mark.parametrize("seed", range(20))
def test_a_record_of_valid_samples_passes_signature_validation(seed: int) -> None:
    assert _SIGNATURE.validate_outputs(_valid_record(seed))


@pytest.mark.parametrize("field", _SIGNATURE.output_fields, ids=lambda f: f.name)
def test_each_invalid_sample_fails_signature_validation_at_its_field(field: FieldSpec) -> None:
    for value, reason in invalid_samples(field, random.Random(0)):
        record = {**_valid_record(0), field.name: value}
        with pytest.raises(ValidationError) as info:
            _SIGNATURE.validate_outputs(record)
        assert any(e.field.split(".")[0].split("[")[0] == field.name for e in info.value.errors), (
            reason
        )
