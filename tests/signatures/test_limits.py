"""Bounded work for every signature: embedding dimensions, type nesting and generated samples.

A signature arrives from users (over HTTP with a read key); nothing it says may make parsing
recurse without end or make sample generation allocate without bound.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

import dspex
from dspex.errors import SignatureError
from dspex.signatures.compile import type_validator
from dspex.signatures.parse import MAX_EMBEDDING_DIM, MAX_TYPE_DEPTH, parse_type
from dspex.signatures.samples import MAX_SAMPLE_SIZE, invalid_samples, valid_sample
from dspex.signatures.types import (
    Constraints,
    DictType,
    Embedding,
    FieldSpec,
    ListType,
    Scalar,
    TypeNode,
)

# Far below what an unbounded sample of the fields below would take (gigabytes), far above what
# a bounded one needs (a few megabytes).
PEAK_BYTES = 64 * 1024 * 1024


@pytest.fixture
def peak_memory() -> Iterator[list[int]]:
    """The peak of memory allocated inside the test (bytes), read after it ran."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peak[0] < PEAK_BYTES, f"peak {peak[0] / 1e6:.0f} MB"


def _field(node: TypeNode, **constraints: Any) -> FieldSpec:
    return FieldSpec("f", node, constraints=Constraints(**constraints))


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return 1 + sum(_size(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + _size(k) + _size(v) for k, v in value.items())
    return 1


def _problem_codes(text: str) -> list[str]:
    with pytest.raises(SignatureError) as info:
        parse_type(text)
    return [e.code for e in info.value.errors]


# ---------------------------------------------------------------------------- parsing


def test_the_largest_embedding_dimension_parses() -> None:
    assert parse_type(f"embedding[{MAX_EMBEDDING_DIM}]") == Embedding(MAX_EMBEDDING_DIM)


def test_an_embedding_dimension_above_the_cap_is_an_invalid_type() -> None:
    assert _problem_codes(f"embedding[{MAX_EMBEDDING_DIM + 1}]") == ["invalid_type"]
    assert _problem_codes("embedding[100000000]") == ["invalid_type"]


def test_a_dimension_of_thousands_of_digits_is_an_invalid_type_not_a_crash() -> None:
    assert _problem_codes("embedding[" + "9" * 5000 + "]") == ["invalid_type"]


def test_a_literal_number_of_thousands_of_digits_is_an_invalid_type_not_a_crash() -> None:
    assert _problem_codes("Literal[" + "9" * 5000 + "]") == ["invalid_type"]


def test_types_may_nest_up_to_the_cap() -> None:
    text = "list[" * MAX_TYPE_DEPTH + "str" + "]" * MAX_TYPE_DEPTH
    node = parse_type(text)
    for _ in range(MAX_TYPE_DEPTH):
        assert isinstance(node, ListType)
        node = node.item
    assert node == Scalar("str")


def test_a_type_nested_past_the_cap_is_too_deep() -> None:
    text = "list[" * (MAX_TYPE_DEPTH + 1) + "str" + "]" * (MAX_TYPE_DEPTH + 1)
    assert _problem_codes(text) == ["too_deep"]


def test_a_type_nested_thousands_deep_is_refused_without_recursing() -> None:
    text = "dict[str, " * 5000 + "int" + "]" * 5000
    assert _problem_codes(text) == ["too_deep"]


def test_a_signature_with_a_huge_embedding_is_invalid_at_the_standard_level() -> None:
    report = dspex.validate_signature("question: str -> vector: embedding[100000000]", "standard")
    assert report.valid is False
    assert "65536" in report.problems[0].message


def test_a_dim_constraint_above_the_cap_is_an_invalid_constraint() -> None:
    signature = {
        "inputs": {"question": "str"},
        "outputs": {"vector": {"type": "embedding", "constraints": {"dim": 100_000_000}}},
    }
    report = dspex.validate_signature(signature, "standard")
    assert report.valid is False
    assert [p.code for p in report.problems if p.field == "vector"] == ["invalid_constraint"]


# ---------------------------------------------------------------------------- samples


@pytest.mark.parametrize(
    "field",
    [
        _field(Scalar("str"), max_length=10**9),
        _field(ListType(Scalar("int")), max_items=10**9),
        _field(Embedding(), max_items=10**9),
        _field(DictType(Scalar("str"), Scalar("int")), max_items=10**9),
        _field(ListType(Embedding(MAX_EMBEDDING_DIM)), max_items=10**9),
    ],
    ids=["string", "list", "embedding", "dict", "list-of-embeddings"],
)
def test_huge_upper_bounds_give_small_valid_and_invalid_samples(
    field: FieldSpec, peak_memory: list[int]
) -> None:
    rng = random.Random(0)
    validator = type_validator(field.type, field.constraints)
    for _ in range(3):
        value = valid_sample(field, rng)
        assert _size(value) <= MAX_SAMPLE_SIZE
        assert validator.accepts(value)
    for value, reason in invalid_samples(field, rng):
        assert _size(value) <= MAX_SAMPLE_SIZE, reason
        assert not validator.accepts(value), reason


def test_deeply_nested_lists_are_sampled_at_their_smallest(peak_memory: list[int]) -> None:
    depth = 20  # four items per level would be 4**20 values
    node: TypeNode = Scalar("str")
    for _ in range(depth):
        node = ListType(node)
    field = _field(node, min_items=1)
    value = valid_sample(field, random.Random(0))
    assert _size(value) <= MAX_SAMPLE_SIZE
    assert type_validator(field.type, field.constraints).accepts(value)


@pytest.mark.parametrize(
    "field",
    [
        _field(Scalar("str"), min_length=10**9),
        _field(ListType(Scalar("int")), min_items=10**9),
        _field(Embedding(), min_items=10**9),
        _field(DictType(Scalar("str"), Scalar("int")), min_items=10**9),
        _field(ListType(Embedding(MAX_EMBEDDING_DIM)), min_items=2),
        _field(Scalar("str"), pattern="a+", min_length=10**9),
    ],
    ids=["string", "list", "embedding", "dict", "list-of-embeddings", "pattern"],
)
def test_a_field_whose_smallest_value_is_too_large_cannot_be_sampled(
    field: FieldSpec, peak_memory: list[int]
) -> None:
    with pytest.raises(SignatureError) as info:
        valid_sample(field, random.Random(0))
    assert [e.code for e in info.value.errors] == ["sample_too_large"]


def test_invalid_samples_past_a_huge_lower_bound_are_not_generated(
    peak_memory: list[int],
) -> None:
    field = _field(ListType(Scalar("int")), min_items=10**9, max_items=10**9 + 1)
    reasons = [reason for _, reason in invalid_samples(field, random.Random(0))]
    assert not any("fewer than" in reason or "more than" in reason for reason in reasons)


@pytest.mark.parametrize(
    "pattern",
    [
        "(a{1000}){1000}",  # a million characters
        "((?:){0,100000}){0,100000}",  # ten billion turns that add nothing
        "a{4294967294}",
    ],
)
def test_patterns_that_expand_without_bound_give_up(pattern: str, peak_memory: list[int]) -> None:
    field = _field(Scalar("str"), pattern=pattern, max_length=10**9)
    try:
        value = valid_sample(field, random.Random(0))
    except SignatureError:
        return
    assert len(value) <= MAX_SAMPLE_SIZE


def test_deep_validation_of_a_huge_constraint_stays_small(peak_memory: list[int]) -> None:
    signature = {
        "inputs": {"question": {"type": "str", "constraints": {"max_length": 10**9}}},
        "outputs": {"answers": {"type": "list[str]", "constraints": {"min_items": 10**7}}},
    }
    report = dspex.validate_signature(signature, "deep")
    assert report.valid is False
    samples = next(step for step in report.steps if step.name == "samples")
    assert samples.passed is False
    assert "too large to sample" in samples.problems[0].message
