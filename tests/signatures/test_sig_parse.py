"""The type-expression and signature-string parser and formatter."""

from __future__ import annotations

import pytest

from dspex.errors import SignatureError
from dspex.signatures.parse import format_type, make_union, parse_signature_text, parse_type
from dspex.signatures.types import (
    ConfidenceScore,
    DictType,
    Embedding,
    ListType,
    LiteralType,
    OptionalType,
    Probability,
    ReasoningChain,
    Scalar,
    UnionType,
)

STR, INT, FLOAT = Scalar("str"), Scalar("int"), Scalar("float")


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("str", STR),
        ("int", INT),
        ("float", FLOAT),
        ("bool", Scalar("bool")),
        ("probability", Probability()),
        ("confidence_score", ConfidenceScore()),
        ("reasoning_chain", ReasoningChain()),
        ("embedding", Embedding()),
        ("embedding[384]", Embedding(384)),
        ("list[str]", ListType(STR)),
        ("List[int]", ListType(INT)),
        ("dict[str, int | float]", DictType(STR, UnionType((INT, FLOAT)))),
        ("Dict[str, list[str]]", DictType(STR, ListType(STR))),
        ("Literal['a', \"b\"]", LiteralType(("a", "b"))),
        ("enum[red, green]", LiteralType(("red", "green"))),
        ("Literal[1, 2.5, True, -3]", LiteralType((1, 2.5, True, -3))),
        ("optional[int]", OptionalType(INT)),
        ("Optional[int]", OptionalType(INT)),
        ("int | None", OptionalType(INT)),
        ("None | int | str", OptionalType(UnionType((INT, STR)))),
        ("Union[int, str]", UnionType((INT, STR))),
    ],
)
def test_parse_type_reads_every_spelling(text: str, node: object) -> None:
    assert parse_type(text) == node


def test_unions_are_flattened_and_deduplicated() -> None:
    assert parse_type("int | str") == UnionType((INT, STR))
    assert parse_type("Union[int, Union[str, int]]") == UnionType((INT, STR))
    assert parse_type("int | int") == INT


def test_none_inside_a_union_makes_the_whole_union_optional() -> None:
    assert parse_type("list[int | None | str]") == ListType(OptionalType(UnionType((INT, STR))))


def test_optional_of_optional_collapses() -> None:
    assert parse_type("optional[optional[int]]") == OptionalType(INT)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("foo", "unknown_type"),
        ("list[foo]", "unknown_type"),
        ("Union[]", "empty_union"),
        ("None", "invalid_type"),
        ("Union[None]", "empty_union"),
        ("list", "invalid_type"),
        ("list[int, str]", "invalid_type"),
        ("dict[str]", "invalid_type"),
        ("embedding[0]", "invalid_type"),
        ("embedding[x]", "invalid_type"),
        ("Literal[]", "invalid_type"),
        ("Literal['a', 'a']", "invalid_type"),
        ("int[3]", "invalid_type"),
        ("list[int", "syntax"),
        ("int str", "syntax"),
        ("", "syntax"),
        ("|", "syntax"),
        ("optional[int, str]", "invalid_type"),
    ],
)
def test_parse_type_rejects_bad_expressions_with_a_code(text: str, code: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse_type(text)
    assert [e.code for e in info.value.errors] == [code]


def test_unknown_type_message_lists_the_known_types() -> None:
    with pytest.raises(SignatureError, match=r"unknown type 'foo'.*probability"):
        parse_type("foo")


@pytest.mark.parametrize(
    "text",
    [
        "list[dict[str, int | float]]",
        "optional[list[str] | int]",
        "Literal['it\\'s', 1]",
        "embedding[3]",
    ],
)
def test_format_type_round_trips(text: str) -> None:
    node = parse_type(text)
    assert parse_type(format_type(node)) == node


def test_make_union_of_only_none_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one type"):
        make_union([])


def test_signature_text_reads_types_and_descriptions() -> None:
    parsed = parse_signature_text("question: str 'the user question', k: int -> answer")
    assert not parsed.problems
    assert [(f.name, f.type, f.description) for f in parsed.inputs] == [
        ("question", STR, "the user question"),
        ("k", INT, ""),
    ]
    assert parsed.outputs[0].type == STR  # no type means str, as in DSPy


def test_commas_inside_types_and_descriptions_do_not_split_fields() -> None:
    parsed = parse_signature_text("m: dict[str, int] 'a, b' -> x")
    assert [f.name for f in parsed.inputs] == ["m"]
    assert parsed.inputs[0].description == "a, b"


def test_a_field_may_have_a_description_without_a_type() -> None:
    parsed = parse_signature_text("q 'the question' -> a")
    assert parsed.inputs[0].description == "the question"


def test_missing_arrow_is_reported() -> None:
    assert [p.code for p in parse_signature_text("question, answer").problems] == ["missing_arrow"]


def test_two_arrows_are_reported() -> None:
    assert [p.code for p in parse_signature_text("a -> b -> c").problems] == ["syntax"]


def test_every_bad_field_is_reported_not_just_the_first() -> None:
    parsed = parse_signature_text("a: foo, my-b: int, , c: -> d: list[")
    codes = sorted(p.code for p in parsed.problems)
    assert codes == ["empty_field", "invalid_name", "syntax", "syntax", "unknown_type"]


def test_text_after_a_description_is_a_syntax_error() -> None:
    assert [p.code for p in parse_signature_text("a 'x' y -> b").problems] == ["syntax"]


def test_a_non_string_signature_is_a_syntax_problem() -> None:
    assert parse_signature_text(42).problems[0].code == "syntax"  # type: ignore[arg-type]


def test_fields_with_unknown_types_still_get_their_names_checked() -> None:
    from dspex import Signature
    from dspex.errors import SignatureError

    with pytest.raises(SignatureError) as info:
        Signature.parse("question: str, items: lst[int], question: bogus -> answer")
    found = {(e.field, e.code) for e in info.value.errors}
    assert {
        ("items", "reserved_name"),
        ("items", "unknown_type"),
        ("question", "duplicate_name"),
        ("question", "unknown_type"),
    } <= found
