"""Signatures to DSPy signature classes and back."""

from __future__ import annotations

import enum
from typing import Literal, Optional, Union

import dspy
import pytest
from pydantic import BaseModel

from dspex.errors import SignatureError
from dspex.signatures.dspy_interop import (
    DSPEX_CONSTRAINTS_KEY,
    DSPEX_TYPE_KEY,
    annotation_to_type,
    constraint_hint,
    to_dspy,
    type_to_annotation,
)
from dspex.signatures.parse import parse_type
from dspex.signatures.signature import Signature
from dspex.signatures.types import (
    Constraints,
    DictType,
    FieldSpec,
    ListType,
    LiteralType,
    ModelType,
    OptionalType,
    Probability,
    Scalar,
    UnionType,
)


class Citation(BaseModel):
    source: str
    page: int


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


TYPE_EXPRESSIONS = [
    "str",
    "int",
    "float",
    "bool",
    "Literal['yes', 'no']",
    "Literal[1, 2, 3]",
    "embedding",
    "embedding[384]",
    "probability",
    "confidence_score",
    "reasoning_chain",
    "list[str]",
    "list[list[int]]",
    "dict[str, float]",
    "dict[str, list[probability]]",
    "int | str",
    "optional[str]",
    "optional[int | float]",
]


def _sig_with_output(type_text: str, **field_kwargs: object) -> Signature:
    out = FieldSpec("value", parse_type(type_text), **field_kwargs)  # type: ignore[arg-type]
    return Signature(
        name="Probe",
        instructions="Produce the value.",
        input_fields=(FieldSpec("question", Scalar("str"), "the question"),),
        output_fields=(out,),
    )


@pytest.mark.parametrize("type_text", TYPE_EXPRESSIONS)
def test_every_type_survives_the_round_trip(type_text: str) -> None:
    sig = _sig_with_output(type_text, description="the answer")
    assert Signature.from_dspy(to_dspy(sig)) == sig


@pytest.mark.parametrize(
    ("type_text", "annotation"),
    [
        ("str", str),
        ("embedding[3]", list[float]),
        ("probability", float),
        ("confidence_score", float),
        ("reasoning_chain", list[str]),
        ("Literal['a', 'b']", Literal["a", "b"]),
        ("dict[str, int]", dict[str, int]),
        ("int | str", Union[int, str]),  # noqa: UP007  # the runtime form DSPy sees
        ("optional[str]", Optional[str]),  # noqa: UP045
    ],
)
def test_types_become_annotations_dspy_understands(type_text: str, annotation: object) -> None:
    assert type_to_annotation(parse_type(type_text)) == annotation


def test_signature_class_carries_names_instructions_and_descriptions() -> None:
    sig = Signature.parse("question: str 'what to answer' -> answer: str 'a short answer'")
    sig = Signature(
        name="QA",
        instructions="Answer briefly.",
        input_fields=sig.input_fields,
        output_fields=sig.output_fields,
    )
    cls = to_dspy(sig)
    assert cls.__name__ == "QA"
    assert cls.instructions == "Answer briefly."
    assert list(cls.input_fields) == ["question"]
    assert cls.output_fields["answer"].json_schema_extra["desc"] == "a short answer"


def test_constraints_are_stored_for_the_round_trip() -> None:
    sig = _sig_with_output(
        "str", description="a code", constraints=Constraints(min_length=2, pattern="^[A-Z]+$")
    )
    extra = to_dspy(sig).output_fields["value"].json_schema_extra
    assert extra[DSPEX_TYPE_KEY] == "str"
    assert extra[DSPEX_CONSTRAINTS_KEY] == {"min_length": 2, "pattern": "^[A-Z]+$"}
    assert Signature.from_dspy(to_dspy(sig)) == sig


def test_constraints_appear_in_the_description_dspy_prompts_with() -> None:
    sig = _sig_with_output(
        "list[str]", description="tags", constraints=Constraints(min_items=1, max_items=3)
    )
    desc = to_dspy(sig).output_fields["value"].json_schema_extra["desc"]
    assert desc == "tags (at least 1 items; at most 3 items)"


def test_probability_is_described_as_between_zero_and_one() -> None:
    desc = to_dspy(_sig_with_output("probability")).output_fields["value"].json_schema_extra["desc"]
    assert "between 0 and 1" in desc


def test_one_of_constraint_survives_the_round_trip() -> None:
    sig = _sig_with_output("str", constraints=Constraints(one_of=("a", "b")))
    assert Signature.from_dspy(to_dspy(sig)).output_fields[0].constraints.one_of == ("a", "b")


def test_constraint_hint_names_every_limit() -> None:
    hint = constraint_hint(
        Scalar("float"),
        Constraints(
            minimum=0,
            maximum=10,
            multiple_of=0.5,
            max_length=4,
            unique_items=True,
            dim=3,
        ),
    )
    assert hint == (
        "at most 4 characters; >= 0; <= 10; a multiple of 0.5; items must be unique; "
        "exactly 3 numbers"
    )


def test_empty_instructions_use_dspy_defaults_and_come_back_empty() -> None:
    sig = Signature.parse("question -> answer")
    cls = to_dspy(sig)
    assert cls.instructions == "Given the fields `question`, produce the fields `answer`."
    assert Signature.from_dspy(cls).instructions == ""


def test_pydantic_model_fields_round_trip() -> None:
    sig = Signature(
        name="Cite",
        input_fields=(FieldSpec("question", Scalar("str")),),
        output_fields=(
            FieldSpec("citation", ModelType(Citation)),
            FieldSpec("citations", ListType(ModelType(Citation))),
        ),
    )
    cls = to_dspy(sig)
    assert cls.output_fields["citation"].annotation is Citation
    assert Signature.from_dspy(cls) == sig


def test_optional_input_field_round_trips_as_optional() -> None:
    sig = Signature(
        name="S",
        input_fields=(FieldSpec("hint", Scalar("str"), optional=True),),
        output_fields=(FieldSpec("answer", Scalar("str")),),
    )
    back = Signature.from_dspy(to_dspy(sig))
    assert back.input_fields[0].optional
    assert back.input_fields[0].type == OptionalType(Scalar("str"))


class HandWritten(dspy.Signature):
    """Classify the ticket and cite sources."""

    ticket: str = dspy.InputField(desc="the support ticket")
    urgency: Literal["low", "high"] = dspy.OutputField()
    tags: list[str] = dspy.OutputField(desc="topic tags")
    scores: dict[str, float] = dspy.OutputField()
    source: Citation = dspy.OutputField()
    maybe: int | None = dspy.OutputField()
    confidence: float = dspy.OutputField()


def test_hand_written_dspy_signature_maps_to_our_types() -> None:
    sig = Signature.from_dspy(HandWritten)
    types = {f.name: f.type for f in sig.output_fields}
    assert sig.name == "HandWritten"
    assert sig.instructions == "Classify the ticket and cite sources."
    assert sig.input_fields == (FieldSpec("ticket", Scalar("str"), "the support ticket"),)
    assert types == {
        "urgency": LiteralType(("low", "high")),
        "tags": ListType(Scalar("str")),
        "scores": DictType(Scalar("str"), Scalar("float")),
        "source": ModelType(Citation),
        "maybe": OptionalType(Scalar("int")),
        "confidence": Scalar("float"),
    }


def test_hand_written_dspy_field_descriptions_are_kept_and_placeholders_dropped() -> None:
    sig = Signature.from_dspy(HandWritten)
    descriptions = {f.name: f.description for f in sig.output_fields}
    assert descriptions["tags"] == "topic tags"
    assert descriptions["urgency"] == ""


def test_dspy_string_signature_without_types_is_all_str() -> None:
    sig = Signature.from_dspy(dspy.Signature("question, context -> answer"))
    assert [f.type for f in sig.fields] == [Scalar("str")] * 3


def test_converting_a_hand_written_signature_twice_is_stable() -> None:
    sig = Signature.from_dspy(HandWritten)
    assert Signature.from_dspy(to_dspy(sig)) == sig


def test_enum_annotation_becomes_a_literal_of_its_values() -> None:
    assert annotation_to_type(Color) == LiteralType(("red", "blue"))


def test_union_with_none_becomes_optional_union() -> None:
    assert annotation_to_type(int | str | None) == OptionalType(
        UnionType((Scalar("int"), Scalar("str")))
    )


@pytest.mark.parametrize("annotation", [object, list, dict, type(None), tuple[int, int]])
def test_annotations_without_a_dspex_type_are_rejected(annotation: object) -> None:
    with pytest.raises(SignatureError):
        annotation_to_type(annotation)


def test_unsupported_fields_are_all_listed_by_name() -> None:
    class Bad(dspy.Signature):
        a: object = dspy.InputField()
        b: tuple[int, int] = dspy.OutputField()

    with pytest.raises(SignatureError) as info:
        Signature.from_dspy(Bad)
    assert [e.field for e in info.value.errors] == ["a", "b"]


def test_from_dspy_rejects_classes_that_are_not_dspy_signatures() -> None:
    with pytest.raises(SignatureError, match="not a DSPy signature"):
        Signature.from_dspy(Citation)  # type: ignore[arg-type]


def test_signature_methods_delegate_to_the_interop() -> None:
    sig = Signature.parse("question: str -> confidence: probability")
    assert Signature.from_dspy(sig.to_dspy()) == sig


def test_probability_type_comes_back_from_metadata_not_the_float_annotation() -> None:
    cls = to_dspy(_sig_with_output("probability"))
    assert cls.output_fields["value"].annotation is float
    assert Signature.from_dspy(cls).output_fields[0].type == Probability()
