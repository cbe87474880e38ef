"""Schema export: JSON Schema 2020-12, OpenAI strict tools and Anthropic tools."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from dspex.signatures.parse import parse_type
from dspex.signatures.schema import meta_schema_problems, schema_body, type_schema
from dspex.signatures.signature import Signature
from dspex.signatures.types import Constraints, FieldSpec, ModelType, Scalar

SIG = Signature.parse(
    "question: str 'the user question', k: int -> answer: str 'the answer', "
    "confidence: probability, sources: optional[list[str]], scores: dict[str, float], "
    "label: Literal['yes', 'no'], vec: embedding[3], steps: reasoning_chain, mixed: int | str",
    name="QA Bot",
    constraints={"answer": {"max_length": 100, "pattern": "^[A-Z]"}, "sources": {"max_items": 5}},
)
GOOD = {
    "answer": "Paris",
    "confidence": 0.9,
    "sources": None,
    "scores": {"a": 1.0},
    "label": "yes",
    "vec": [0.1, 0.2, 0.3],
    "steps": ["think"],
    "mixed": 3,
}


@pytest.mark.parametrize("target", ["json_schema", "openai", "anthropic"])
@pytest.mark.parametrize("part", ["outputs", "inputs"])
def test_every_export_is_valid_json_schema(target: str, part: str) -> None:
    exported = SIG.json_schema(target, part=part)
    Draft202012Validator.check_schema(schema_body(exported, target))
    assert meta_schema_problems(exported, target) == []


def test_json_schema_is_a_draft_2020_12_document_of_the_outputs() -> None:
    schema = SIG.json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert list(schema["properties"]) == list(SIG.output_names)
    assert "sources" not in schema["required"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["answer"]["description"] == "the answer"


def test_json_schema_accepts_what_the_validator_accepts() -> None:
    jsonschema.validate(SIG.validate_outputs(GOOD), SIG.json_schema())


def test_json_schema_rejects_what_the_constraints_reject() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**GOOD, "answer": "paris"}, SIG.json_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**GOOD, "confidence": 2}, SIG.json_schema())


def test_openai_export_is_a_strict_function_with_every_property_required() -> None:
    sig = Signature.parse("q -> a: str, b: optional[int], c: list[str]")
    tool = sig.json_schema("openai")
    assert tool["type"] == "function"
    fn = tool["function"]
    assert fn["strict"] is True
    assert fn["parameters"]["required"] == ["a", "b", "c"]
    assert fn["parameters"]["additionalProperties"] is False
    assert {"type": "null"} in fn["parameters"]["properties"]["b"]["anyOf"]


def test_openai_export_drops_keywords_strict_mode_rejects() -> None:
    tool = SIG.json_schema("openai")
    answer = tool["function"]["parameters"]["properties"]["answer"]
    assert "maxLength" not in answer
    assert answer["pattern"] == "^[A-Z]"


def test_openai_export_is_not_strict_when_a_dict_has_open_keys() -> None:
    assert SIG.json_schema("openai")["function"]["strict"] is False


def test_openai_tool_names_are_sanitised() -> None:
    assert SIG.json_schema("openai")["function"]["name"] == "QA_Bot"


def test_anthropic_export_is_a_tool_with_an_input_schema() -> None:
    tool = SIG.json_schema("anthropic")
    assert set(tool) == {"name", "description", "input_schema"}
    assert tool["input_schema"]["type"] == "object"


def test_default_description_names_the_fields() -> None:
    sig = Signature.parse("q -> a")
    assert sig.json_schema()["description"] == "Given the fields `q`, produce the fields `a`."
    assert Signature.parse("-> a").json_schema()["description"] == "Produce the fields `a`."
    assert "inputs of" in Signature.parse("q -> a").json_schema(part="inputs")["description"]


def test_instructions_become_the_description() -> None:
    sig = Signature.parse("q -> a", instructions="Answer briefly.")
    assert sig.json_schema("anthropic")["description"] == "Answer briefly."


@pytest.mark.parametrize(
    ("type_text", "constraints", "expected"),
    [
        (
            "int",
            {"minimum": 1, "multiple_of": 2},
            {"type": "integer", "minimum": 1, "multipleOf": 2},
        ),
        ("probability", {"maximum": 0.5}, {"type": "number", "minimum": 0.0, "maximum": 0.5}),
        ("bool", {}, {"type": "boolean"}),
        ("Literal[1, 'a']", {}, {"enum": [1, "a"]}),
        (
            "embedding",
            {"min_items": 2, "max_items": 4},
            {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 4},
        ),
        (
            "list[int]",
            {"unique_items": True, "min_items": 1},
            {"type": "array", "items": {"type": "integer"}, "minItems": 1, "uniqueItems": True},
        ),
        (
            "dict[Literal['a'], int]",
            {"min_items": 1, "max_items": 2},
            {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "propertyNames": {"enum": ["a"]},
                "minProperties": 1,
                "maxProperties": 2,
            },
        ),
        (
            "str",
            {"one_of": ["x", "y"], "min_length": 1},
            {"type": "string", "minLength": 1, "enum": ["x", "y"]},
        ),
        (
            "reasoning_chain",
            {"max_items": 3},
            {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        ),
    ],
)
def test_type_schemas_carry_constraints(
    type_text: str, constraints: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert type_schema(parse_type(type_text), Constraints(**constraints)) == expected


def test_nested_models_are_exported_with_their_definitions_at_the_root() -> None:
    class Leaf(BaseModel):
        x: int

    class Tree(BaseModel):
        leaf: Leaf
        note: str | None = None

    sig = Signature(
        "T", "", (FieldSpec("q", Scalar("str")),), (FieldSpec("tree", ModelType(Tree)),)
    )
    for target in ("json_schema", "openai", "anthropic"):
        exported = sig.json_schema(target)
        assert meta_schema_problems(exported, target) == []
        assert "Leaf" in schema_body(exported, target)["$defs"]
    jsonschema.validate({"tree": {"leaf": {"x": 1}}}, sig.json_schema())
    params = sig.json_schema("openai")["function"]["parameters"]
    assert params["properties"]["tree"]["required"] == ["leaf", "note"]


def test_unknown_targets_and_parts_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown schema target"):
        SIG.json_schema("xml")
    with pytest.raises(ValueError, match="part"):
        SIG.json_schema(part="both")


def test_meta_schema_problems_names_a_bad_tool_name() -> None:
    tool = SIG.json_schema("anthropic")
    tool["name"] = "bad name!"
    assert any("tool name" in p for p in meta_schema_problems(tool, "anthropic"))
    broken = SIG.json_schema()
    broken["type"] = 5
    assert meta_schema_problems(broken, "json_schema")
