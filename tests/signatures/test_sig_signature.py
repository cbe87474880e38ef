"""The Signature class: building, structural rules, the string and dict forms, equality."""

from __future__ import annotations

from typing import Any

import pytest

from dspex.errors import SignatureError
from dspex.signatures.parse import parse_type
from dspex.signatures.rules import RESERVED_NAMES
from dspex.signatures.signature import Signature
from dspex.signatures.types import Constraints, FieldSpec, OptionalType, Scalar

TEXT = "question: str 'the user question', k: int -> answer: str, confidence: probability"


def codes(exc: pytest.ExceptionInfo[SignatureError]) -> list[tuple[str, str]]:
    return [(e.field, e.code) for e in exc.value.errors]


def test_parse_builds_ordered_typed_fields() -> None:
    sig = Signature.parse(TEXT, name="QA", instructions="Answer.")
    assert sig.input_names == ("question", "k")
    assert sig.output_names == ("answer", "confidence")
    assert sig.field("question").description == "the user question"
    assert sig.field("k").type == Scalar("int")
    assert (sig.name, sig.instructions) == ("QA", "Answer.")


def test_field_raises_key_error_for_unknown_names() -> None:
    with pytest.raises(KeyError, match="nope"):
        Signature.parse(TEXT).field("nope")


def test_parse_applies_constraints_and_descriptions_by_field() -> None:
    sig = Signature.parse(
        TEXT, constraints={"answer": {"max_length": 5}}, descriptions={"k": "how many"}
    )
    assert sig.field("answer").constraints == Constraints(max_length=5)
    assert sig.field("k").description == "how many"


def test_constraints_for_unknown_fields_are_errors() -> None:
    with pytest.raises(SignatureError) as info:
        Signature.parse(TEXT, constraints={"nope": {"min_length": 1}})
    assert codes(info) == [("nope", "unknown_key")]


def test_unknown_constraint_names_are_errors() -> None:
    with pytest.raises(SignatureError) as info:
        Signature.parse(TEXT, constraints={"answer": {"max_len": 1}})
    assert codes(info) == [("answer", "unknown_constraint")]


def test_badly_typed_constraint_values_are_errors() -> None:
    with pytest.raises(SignatureError) as info:
        Signature.parse(TEXT, constraints={"answer": {"max_length": "long"}})
    assert codes(info) == [("answer", "invalid_constraint")]


def test_str_round_trips_through_parse() -> None:
    sig = Signature.parse(
        "a: list[dict[str, int | None]] 'it''s', b -> c: optional[embedding[3]]".replace(
            "''", "\\'"
        )
    )
    assert Signature.parse(str(sig)) == sig


def test_optional_field_and_optional_type_agree() -> None:
    from_type = Signature.parse("a: optional[int] -> b")
    spec = from_type.field("a")
    assert spec.optional
    assert spec.type == OptionalType(Scalar("int"))
    built = Signature(
        "S", "", (FieldSpec("a", Scalar("int"), optional=True),), (FieldSpec("b", Scalar("str")),)
    )
    assert built.field("a") == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("question answer", [("", "missing_arrow")]),
        ("a -> ", [("", "no_outputs")]),
        ("a: int, a: str -> b", [("a", "duplicate_name")]),
        ("a -> a", [("a", "duplicate_name")]),
        ("class -> b", [("class", "keyword_name")]),
        ("items -> b", [("items", "reserved_name")]),
        ("_x -> b", [("_x", "reserved_name")]),
        ("model_name -> b", [("model_name", "reserved_name")]),
        ("2a -> b", [("2a", "invalid_name")]),
        ("a: foo -> b", [("a", "unknown_type")]),
        ("a: Union[] -> b", [("a", "empty_union")]),
    ],
)
def test_structural_problems_raise_signature_error(
    text: str, expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(SignatureError) as info:
        Signature.parse(text)
    assert codes(info) == expected


@pytest.mark.parametrize("name", ["items", "keys", "values", "get", "copy", "instructions", "json"])
def test_names_dspy_objects_shadow_are_reserved(name: str) -> None:
    with pytest.raises(SignatureError, match="reserved"):
        Signature.parse(f"q -> {name}")


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(SignatureError) as info:
        Signature.parse("class: int, items: str, a: foo -> b: list[", constraints={})
    assert {c for _, c in codes(info)} == {
        "keyword_name",
        "reserved_name",
        "unknown_type",
        "syntax",
    }


@pytest.mark.parametrize(
    ("type_text", "constraints", "code"),
    [
        ("int", {"pattern": "x"}, "constraint_not_applicable"),
        ("str", {"min_items": 1}, "constraint_not_applicable"),
        ("str", {"minimum": 1}, "constraint_not_applicable"),
        ("list[int]", {"dim": 3}, "constraint_not_applicable"),
        ("list[int]", {"one_of": [1]}, "constraint_not_applicable"),
        ("dict[str, int]", {"unique_items": True}, "constraint_not_applicable"),
        ("Literal['a']", {"max_length": 3}, "constraint_not_applicable"),
        ("str", {"min_length": 5, "max_length": 2}, "constraint_conflict"),
        ("int", {"minimum": 5, "maximum": 2}, "constraint_conflict"),
        ("list[int]", {"min_items": 3, "max_items": 1}, "constraint_conflict"),
        ("embedding[3]", {"dim": 4}, "constraint_conflict"),
        ("str", {"min_length": -1}, "invalid_constraint"),
        ("int", {"multiple_of": 0}, "invalid_constraint"),
        ("embedding", {"dim": 0}, "invalid_constraint"),
        ("str", {"pattern": "("}, "invalid_constraint"),
        ("int", {"one_of": ["a"]}, "invalid_constraint"),
        ("int", {"one_of": []}, "invalid_constraint"),
    ],
)
def test_constraints_must_fit_their_type(
    type_text: str, constraints: dict[str, Any], code: str
) -> None:
    with pytest.raises(SignatureError) as info:
        Signature.parse(f"a: {type_text} -> b", constraints={"a": constraints})
    assert code in [c for _, c in codes(info)]


@pytest.mark.parametrize(
    ("type_text", "constraints"),
    [
        ("optional[str]", {"max_length": 3}),
        ("str | int", {"max_length": 3, "minimum": 0}),
        ("embedding", {"dim": 3}),
        ("probability", {"maximum": 0.5}),
        ("dict[str, int]", {"min_items": 1}),
        ("int", {"one_of": [1, 2]}),
    ],
)
def test_constraints_that_fit_are_accepted(type_text: str, constraints: dict[str, Any]) -> None:
    Signature.parse(f"a: {type_text} -> b", constraints={"a": constraints})


def test_dict_keys_must_be_strings() -> None:
    with pytest.raises(SignatureError, match="dict keys must be str"):
        Signature.parse("a: dict[int, str] -> b")


def test_signatures_compare_and_hash_by_value() -> None:
    a, b = Signature.parse(TEXT), Signature.parse(TEXT)
    assert a == b
    assert hash(a) == hash(b)
    assert a != Signature.parse(TEXT, name="Other")
    assert len({a, b}) == 1


def test_signatures_are_immutable() -> None:
    sig = Signature.parse(TEXT)
    with pytest.raises(AttributeError):
        sig.name = "x"  # type: ignore[misc]


def test_signatures_with_unhashable_constraints_still_hash() -> None:
    sig = Signature.parse("a: str | list[str] -> b", constraints={"a": {"one_of": [["x"], "y"]}})
    assert hash(sig) == hash(Signature.from_dict(sig.to_dict()))


# --- the structured (dict) form ----------------------------------------------------------------


def test_to_dict_round_trips() -> None:
    sig = Signature.parse(
        TEXT + ", tags: optional[list[str]] 'labels'",
        name="QA",
        instructions="Answer well.",
        constraints={"question": {"min_length": 1}, "tags": {"max_items": 3, "unique_items": True}},
    )
    assert Signature.from_dict(sig.to_dict()) == sig


def test_from_dict_reads_type_strings_mappings_and_inline_constraints() -> None:
    sig = Signature.from_dict(
        {
            "name": "QA",
            "instructions": "Answer.",
            "inputs": {
                "question": {"type": "str", "description": "the q", "min_length": 1},
                "k": "int",
                "hint": {"type": "str", "optional": True, "constraints": {"max_length": 9}},
            },
            "outputs": {"answer": None},
        }
    )
    assert sig.field("question").constraints == Constraints(min_length=1)
    assert sig.field("hint").optional
    assert sig.field("hint").constraints.max_length == 9
    assert sig.field("answer").type == Scalar("str")
    assert sig.field("k").type == parse_type("int")


def test_from_dict_accepts_the_string_shortcut() -> None:
    sig = Signature.from_dict(
        {"name": "QA", "signature": TEXT, "constraints": {"answer": {"max_length": 10}}}
    )
    assert sig == Signature.parse(TEXT, name="QA", constraints={"answer": {"max_length": 10}})


def test_from_dict_reports_every_problem() -> None:
    with pytest.raises(SignatureError) as info:
        Signature.from_dict(
            {
                "name": "",
                "extra": 1,
                "inputs": {"a": {"type": "foo"}, "b": 3, "c": {"type": "str", "optional": "yes"}},
                "outputs": {"d": {"type": "int", "wat": 1, "description": 5}},
            }
        )
    assert sorted(c for _, c in codes(info)) == sorted(
        [
            "invalid_spec",
            "unknown_key",
            "unknown_type",
            "invalid_spec",
            "invalid_spec",
            "unknown_constraint",
            "invalid_spec",
        ]
    )


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"signature": 3},
        {"signature": "a -> b", "inputs": {}},
        {"inputs": [], "outputs": {"a": "str"}},
        {"signature": "a -> b", "constraints": []},
        {"inputs": {"a": {"type": 3}}, "outputs": {"b": "str"}},
        {"inputs": {"a": {"constraints": 3}}, "outputs": {"b": "str"}},
        {"instructions": 5, "signature": "a -> b"},
    ],
)
def test_from_dict_rejects_malformed_specs(data: Any) -> None:
    with pytest.raises(SignatureError):
        Signature.from_dict(data)


def test_from_dict_wraps_parse_errors_of_the_string_shortcut() -> None:
    with pytest.raises(SignatureError) as info:
        Signature.from_dict({"signature": "a: foo -> b"})
    assert codes(info) == [("a", "unknown_type")]


def test_dspy_round_trip_through_the_signature_methods() -> None:
    sig = Signature.parse(TEXT, constraints={"answer": {"max_length": 50}})
    assert Signature.from_dspy(sig.to_dspy()) == sig


def test_a_signature_name_must_not_be_empty() -> None:
    with pytest.raises(SignatureError, match="non-empty"):
        Signature("", "", (), (FieldSpec("a", Scalar("str")),))


def test_names_outside_ascii_are_rejected() -> None:
    with pytest.raises(SignatureError):
        Signature("S", "", (), (FieldSpec("é", Scalar("str")),))


def test_reserved_names_cover_every_public_prediction_attribute() -> None:
    import dspy

    public = {n for n in dir(dspy.Prediction) if not n.startswith("_")}
    assert public <= RESERVED_NAMES
