"""Validating data against a signature: coercion rules, constraints and error reports."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from dspex.errors import ValidationError
from dspex.signatures.compile import type_validator
from dspex.signatures.parse import parse_type
from dspex.signatures.signature import Signature
from dspex.signatures.types import Constraints, FieldSpec, ModelType


def accepts(type_text: str, value: Any, **constraints: Any) -> bool:
    return type_validator(parse_type(type_text), Constraints(**constraints)).accepts(value)


def coerce(type_text: str, value: Any, **constraints: Any) -> Any:
    return type_validator(parse_type(type_text), Constraints(**constraints)).validate(value)


def errors_of(sig: Signature, data: object, outputs: bool = False) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        (sig.validate_outputs if outputs else sig.validate_inputs)(data)
    return [(e.field, e.code) for e in info.value.errors]


# --- coercion rules ----------------------------------------------------------------------------


def test_int_accepts_ints_and_whole_floats() -> None:
    assert coerce("int", 42) == 42
    result = coerce("int", 42.0)
    assert result == 42
    assert type(result) is int


@pytest.mark.parametrize("value", [42.5, "42", True, False, None, float("inf"), [1]])
def test_int_rejects_fractions_strings_booleans_and_others(value: Any) -> None:
    assert not accepts("int", value)


def test_float_accepts_ints_as_floats() -> None:
    result = coerce("float", 3)
    assert result == 3.0
    assert type(result) is float


@pytest.mark.parametrize("value", ["1.5", True, float("nan"), float("inf"), None])
def test_float_rejects_strings_booleans_and_non_finite_numbers(value: Any) -> None:
    assert not accepts("float", value)


@pytest.mark.parametrize("value", [1, 0, "true", "yes", None])
def test_bool_accepts_only_true_and_false(value: Any) -> None:
    assert not accepts("bool", value)
    assert coerce("bool", True) is True
    assert coerce("bool", False) is False


def test_str_rejects_numbers() -> None:
    assert not accepts("str", 5)


@pytest.mark.parametrize("type_text", ["probability", "confidence_score"])
@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), (1, True), (0.5, True), (-0.01, False), (1.01, False), ("0.5", False)],
)
def test_probabilities_accept_only_zero_to_one(type_text: str, value: Any, ok: bool) -> None:
    assert accepts(type_text, value) is ok


def test_embedding_is_a_non_empty_list_of_numbers() -> None:
    assert coerce("embedding", [1, 2.5]) == [1.0, 2.5]
    assert not accepts("embedding", [])
    assert not accepts("embedding", ["1"])
    assert not accepts("embedding", [True])


def test_embedding_dimension_is_checked_when_given() -> None:
    assert accepts("embedding[3]", [0.1, 0.2, 0.3])
    assert not accepts("embedding[3]", [0.1, 0.2])
    assert not accepts("embedding", [0.1, 0.2], dim=3)


def test_reasoning_chain_is_a_list_of_strings() -> None:
    assert accepts("reasoning_chain", ["step 1", "step 2"])
    assert not accepts("reasoning_chain", "step 1")


def test_literal_matches_type_and_value() -> None:
    assert accepts("Literal['a', 'b']", "a")
    assert not accepts("Literal['a', 'b']", "c")
    assert not accepts("Literal[1, 2]", True)
    assert accepts("Literal[1, 2]", 1)
    assert not accepts("Literal[True]", 1)


def test_nested_types_validate_deeply() -> None:
    value = {"a": [1, 2.0], "b": "x", "c": None}
    assert coerce("dict[str, list[int] | str | None]", value) == {"a": [1, 2], "b": "x", "c": None}
    assert not accepts("dict[str, list[int] | str]", {"a": [1, 2.5]})


def test_union_keeps_the_matching_option() -> None:
    assert coerce("int | str", "x") == "x"
    assert coerce("int | str", 3.0) == 3


def test_optional_accepts_none() -> None:
    assert coerce("optional[int]", None) is None


# --- constraints -------------------------------------------------------------------------------


def test_string_constraints_are_enforced() -> None:
    assert not accepts("str", "ab", min_length=3)
    assert not accepts("str", "abcd", max_length=3)
    assert accepts("str", "x-12", pattern=r"\d+")  # pattern searches, as in JSON Schema
    assert not accepts("str", "abc", pattern=r"^\d+$")


def test_number_constraints_are_enforced() -> None:
    assert not accepts("int", 0, minimum=1)
    assert not accepts("int", 11, maximum=10)
    assert not accepts("int", 7, multiple_of=5)
    assert coerce("int", 10.0, maximum=10) == 10
    assert not accepts("float", 0.5, minimum=0.6)
    assert not accepts("probability", 0.9, maximum=0.8)


def test_item_constraints_are_enforced() -> None:
    assert not accepts("list[int]", [], min_items=1)
    assert not accepts("list[int]", [1, 2, 3], max_items=2)
    assert not accepts("list[int]", [1, 1], unique_items=True)
    assert accepts("list[int]", [1, 2], unique_items=True)
    assert not accepts("dict[str, int]", {}, min_items=1)


def test_one_of_restricts_values_by_type_and_value() -> None:
    assert accepts("int", 2, one_of=(1, 2))
    assert not accepts("int", 3, one_of=(1, 2))
    assert not accepts("float", 1.0, one_of=(True,))


def test_constraints_on_a_union_apply_to_the_options_they_fit() -> None:
    assert accepts("str | int", 12345, max_length=3)
    assert not accepts("str | int", "abcd", max_length=3)


# --- records -------------------------------------------------------------------------------------


@pytest.fixture
def sig() -> Signature:
    return Signature.parse(
        "question: str, context: list[str], meta: dict[str, list[str]], k: int, "
        "note: optional[str] -> answer: str, confidence: probability",
        constraints={"question": {"min_length": 1}},
    )


def test_valid_inputs_return_the_coerced_dict(sig: Signature) -> None:
    data = {"question": "q", "context": [], "meta": {}, "k": 3.0}
    assert sig.validate_inputs(data) == {
        "question": "q",
        "context": [],
        "meta": {},
        "k": 3,
        "note": None,
    }


def test_every_missing_required_field_is_reported(sig: Signature) -> None:
    assert errors_of(sig, {}) == [
        ("question", "missing"),
        ("context", "missing"),
        ("meta", "missing"),
        ("k", "missing"),
    ]


def test_unexpected_fields_are_reported(sig: Signature) -> None:
    data = {"question": "q", "context": [], "meta": {}, "k": 1, "x": 1, "y": 2}
    assert errors_of(sig, data) == [("x", "unexpected_field"), ("y", "unexpected_field")]


@pytest.mark.parametrize("data", [[], "text", None, 3])
def test_non_mapping_data_is_reported(sig: Signature, data: object) -> None:
    assert errors_of(sig, data) == [("", "not_a_mapping")]


def test_errors_carry_paths_into_lists_and_dict_keys(sig: Signature) -> None:
    data = {"question": "", "context": ["a", "b", 3], "meta": {"tags": ["x", 1]}, "k": "1"}
    assert errors_of(sig, data) == [
        ("question", "too_short"),
        ("context[2]", "wrong_type"),
        ("meta['tags'][1]", "wrong_type"),
        ("k", "wrong_type"),
    ]


def test_bad_dict_keys_are_reported_at_the_key() -> None:
    sig = Signature.parse("m: dict[Literal['a', 'b'], int] -> x")
    with pytest.raises(ValidationError) as info:
        sig.validate_inputs({"m": {"c": 1}})
    (error,) = info.value.errors
    assert error.field == "m['c']"
    assert error.message.startswith("dict key:")


def test_outputs_are_validated_with_constraints(sig: Signature) -> None:
    assert errors_of(sig, {"answer": "a", "confidence": 1.5}, outputs=True) == [
        ("confidence", "out_of_range")
    ]


def test_a_union_mismatch_is_one_error_naming_the_union() -> None:
    sig = Signature.parse("u: int | list[int] -> x")
    with pytest.raises(ValidationError) as info:
        sig.validate_inputs({"u": "s"})
    assert [(e.field, e.code) for e in info.value.errors] == [("u", "wrong_type")]
    assert "int | list[int]" in info.value.errors[0].message


def test_a_union_option_that_got_further_reports_its_own_error() -> None:
    sig = Signature.parse("u: int | list[int] -> x")
    assert errors_of(sig, {"u": [1, "x"]}) == [("u[1]", "wrong_type")]


def test_nested_model_fields_validate_and_dump_to_dicts() -> None:
    class Source(BaseModel):
        url: str
        rank: int

    sig = Signature(
        "S", "", (FieldSpec("src", ModelType(Source)),), (FieldSpec("a", parse_type("str")),)
    )
    assert sig.validate_inputs({"src": {"url": "u", "rank": 1}}) == {"src": {"url": "u", "rank": 1}}
    assert errors_of(sig, {"src": {"url": "u", "rank": "x"}}) == [("src.rank", "int_parsing")]


def test_the_error_message_lists_every_problem(sig: Signature) -> None:
    with pytest.raises(ValidationError, match="question: required field is missing; context"):
        sig.validate_inputs({})


def test_type_validator_reports_paths_under_the_given_name() -> None:
    with pytest.raises(ValidationError) as info:
        type_validator(parse_type("list[int]")).validate([1, "a"], path="ids")
    assert info.value.errors[0].field == "ids[1]"


def test_compiled_validators_are_cached_by_type_and_constraints() -> None:
    a = type_validator(parse_type("list[int]"), Constraints(min_items=1))
    b = type_validator(parse_type("list[int]"), Constraints(min_items=1))
    assert a is b


def test_unhashable_constraints_still_compile() -> None:
    v = type_validator(parse_type("str | list[str]"), Constraints(one_of=(["a"], "b")))
    assert v.accepts(["a"])
    assert v.accepts("b")
    assert not v.accepts(["c"])


def test_a_deeply_nested_wrong_value_is_a_validation_error_with_a_short_excerpt() -> None:
    value: dict[str, object] = {}
    for _ in range(5000):  # deeper than Python's recursion limit: repr() would crash
        value = {"a": value}
    sig = Signature.parse("x: str -> y: str")
    with pytest.raises(ValidationError) as caught:
        sig.validate_inputs({"x": value})
    (detail,) = caught.value.errors
    assert detail.code == "wrong_type"
    assert detail.message.endswith("got object {'a': {'a': {'a': {...}}}}")
