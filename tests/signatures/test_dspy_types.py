"""DSPy's own types in signatures: ``Image``, ``Audio``, ``History``, ``Tool``, ``ToolCalls``,
``Code`` — parsed, validated from their JSON forms, exported as schemas, converted to DSPy and
run through a real ``dspy`` backend."""

from __future__ import annotations

import random
from typing import Any

import dspy
import pytest
from dspy.utils import DummyLM
from jsonschema import Draft202012Validator

from dspex.backends.base import PredictRequest
from dspex.backends.dspy_backend import DspyBackend
from dspex.errors import SignatureError, ValidationError
from dspex.signatures.compile import type_validator
from dspex.signatures.dspy_interop import to_dspy_values
from dspex.signatures.parse import format_type, parse_type
from dspex.signatures.samples import invalid_samples, valid_sample
from dspex.signatures.schema import schema_body, type_schema
from dspex.signatures.signature import Signature
from dspex.signatures.types import DspyType, FieldSpec, ListType, OptionalType

PNG = "data:image/png;base64,iVBORw0KGgo="

# type → (accepted JSON form, its canonical form), …
ACCEPTED: dict[str, list[tuple[Any, Any]]] = {
    "Image": [
        ("https://example.com/cat.png", "https://example.com/cat.png"),
        ({"url": "http://example.com/a.jpg"}, "http://example.com/a.jpg"),
        (PNG, PNG),
    ],
    "Audio": [
        ({"data": "UklGRg==", "audio_format": "wav"}, {"data": "UklGRg==", "audio_format": "wav"}),
        ("data:audio/mp3;base64,SUQz", {"data": "SUQz", "audio_format": "mp3"}),
    ],
    "History": [
        (
            {"messages": [{"question": "a", "answer": "b"}]},
            {"messages": [{"question": "a", "answer": "b"}]},
        ),
        ([{"question": "a", "answer": "b"}], {"messages": [{"question": "a", "answer": "b"}]}),
        ([], {"messages": []}),
    ],
    "Tool": [
        (
            {"name": "search", "desc": "Search", "args": {"q": {"type": "string"}}},
            {"name": "search", "desc": "Search", "args": {"q": {"type": "string"}}},
        ),
        ({"name": "now"}, {"name": "now", "desc": "", "args": {}}),
    ],
    "ToolCalls": [
        (
            {"tool_calls": [{"name": "search", "args": {"q": "x"}}]},
            {"tool_calls": [{"name": "search", "args": {"q": "x"}}]},
        ),
        ([{"name": "now"}], {"tool_calls": [{"name": "now", "args": {}}]}),
    ],
    "Code": [("print(1)", "print(1)"), ({"code": "x = 1"}, "x = 1")],
}
REJECTED: dict[str, list[Any]] = {
    "Image": ["/etc/passwd", "cat.png", "ftp://example.com/a.png", 3, {"url": 3}, None],
    "Audio": [
        "data:image/png;base64,AAAA",
        {"data": "not base64!", "audio_format": "wav"},
        {"data": "UklGRg=="},
        "UklGRg==",
    ],
    "History": ["hello", [1, 2], {"messages": "x"}, {"messages": [], "other": 1}],
    "Tool": [{"name": "has space"}, {"desc": "no name"}, {"name": "f", "args": {"a": 1}}, "f"],
    "ToolCalls": [[{"args": {}}], [{"name": "f", "args": [1]}], "f", {"tool_calls": 3}],
    "Code": [3, ["print(1)"], None, {"code": 3}],
}
NAMES = list(ACCEPTED)
PythonCode = dspy.Code["python"]


def test_a_signature_can_name_an_image_input() -> None:
    sig = Signature.parse("image: Image, question: str -> answer: str")
    assert sig.input_fields[0].type == DspyType("Image")


@pytest.mark.parametrize("name", NAMES)
def test_each_dspy_type_parses_and_formats_back(name: str) -> None:
    for text in (name, f"list[{name}]", f"optional[{name}]", f"dict[str, {name}]"):
        assert format_type(parse_type(text)) == text
    assert parse_type(f"list[{name}]") == ListType(DspyType(name))  # type: ignore[arg-type]


def test_a_dspy_type_other_than_code_takes_no_parameters() -> None:
    with pytest.raises(SignatureError) as info:
        parse_type("Image[png]")
    assert info.value.errors[0].code == "invalid_type"


def test_code_may_name_its_language_as_dspy_code_does() -> None:
    assert parse_type("Code[javascript]") == DspyType("Code", "javascript")
    assert parse_type("Code['c++']") == DspyType("Code", "c++")
    assert format_type(parse_type("Code['c++']")) == "Code[c++]"
    for bad in ("Code[]", "Code[1]", "Code['no spaces']", "Code[a, b]"):
        with pytest.raises(SignatureError) as info:
            parse_type(bad)
        assert info.value.errors[0].code in ("invalid_type", "syntax"), bad
    sig = Signature.parse("task: str -> js: Code[javascript], py: Code")
    cls = sig.to_dspy()
    assert cls.output_fields["js"].annotation.language == "javascript"
    assert cls.output_fields["py"].annotation is dspy.Code
    assert Signature.from_dspy(cls) == sig
    # the same language gives the same DSPy class, so equal signatures convert alike
    assert sig.to_dspy().output_fields["js"].annotation is cls.output_fields["js"].annotation


def test_a_dspy_type_feeds_the_same_type_and_strings_feed_as_strings() -> None:
    from dspex.signatures.compat import is_assignable

    assert is_assignable(parse_type("Code[javascript]"), parse_type("Code"))
    assert is_assignable(parse_type("Image"), parse_type("str"))
    assert is_assignable(parse_type("Code"), parse_type("optional[str]"))
    assert not is_assignable(parse_type("History"), parse_type("str"))
    assert not is_assignable(parse_type("str"), parse_type("Image"))
    assert not is_assignable(parse_type("Image"), parse_type("Audio"))


@pytest.mark.parametrize("name", NAMES)
def test_the_json_forms_validate_to_the_canonical_form(name: str) -> None:
    validator = type_validator(parse_type(name))
    for given, canonical in ACCEPTED[name]:
        assert validator.validate(given) == canonical
        assert validator.validate(canonical) == canonical


@pytest.mark.parametrize("name", NAMES)
def test_other_values_are_rejected_with_a_typed_error(name: str) -> None:
    sig = Signature.parse(f"x: {name} -> y: str")
    for value in REJECTED[name]:
        with pytest.raises(ValidationError) as info:
            sig.validate_inputs({"x": value})
        (problem,) = info.value.errors
        assert (problem.field, problem.code) == ("x", "wrong_type"), value


@pytest.mark.parametrize("name", NAMES)
def test_the_schema_accepts_the_canonical_form(name: str) -> None:
    schema = type_schema(parse_type(name))
    Draft202012Validator.check_schema(schema)
    for _, canonical in ACCEPTED[name]:
        Draft202012Validator(schema).validate(canonical)


def test_the_image_schema_is_a_url_or_a_data_uri() -> None:
    validator = Draft202012Validator(type_schema(parse_type("Image")))
    assert validator.is_valid("https://example.com/a.png")
    assert validator.is_valid(PNG)
    assert not validator.is_valid("/etc/passwd")
    history = type_schema(parse_type("History"))
    assert history["properties"]["messages"]["type"] == "array"


@pytest.mark.parametrize("target", ["json_schema", "openai", "anthropic"])
@pytest.mark.parametrize("part", ["inputs", "outputs"])
def test_every_schema_target_exports_a_signature_with_every_dspy_type(
    target: str, part: str
) -> None:
    fields = ", ".join(f"f{i}: {n}" for i, n in enumerate(NAMES))
    sig = Signature.parse(f"{fields} -> {fields.replace('f', 'g')}")
    exported = sig.json_schema(target, part=part)
    body = schema_body(exported, target)
    Draft202012Validator.check_schema(body)
    prefix = "f" if part == "inputs" else "g"
    record = {f"{prefix}{i}": ACCEPTED[n][0][1] for i, n in enumerate(NAMES)}
    Draft202012Validator(body).validate(record)


@pytest.mark.parametrize("name", NAMES)
def test_a_dspy_type_becomes_the_dspy_class_and_comes_back(name: str) -> None:
    sig = Signature.parse(f"x: {name}, xs: list[{name}] -> y: {name}")
    cls = sig.to_dspy()
    assert cls.input_fields["x"].annotation is getattr(dspy, name)
    assert Signature.from_dspy(cls) == sig


def test_a_plain_dspy_signature_with_dspy_types_converts() -> None:
    class Describe(dspy.Signature):  # type: ignore[misc]
        """Describe the picture."""

        image: dspy.Image = dspy.InputField()
        history: dspy.History = dspy.InputField()
        snippet: PythonCode = dspy.OutputField()  # type: ignore[valid-type]
        calls: list[dspy.ToolCalls] = dspy.OutputField()

    sig = Signature.from_dspy(Describe)
    types = [f.type for f in (*sig.input_fields, *sig.output_fields)]
    assert types == [
        DspyType("Image"),
        DspyType("History"),
        DspyType("Code", "python"),
        ListType(DspyType("ToolCalls")),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_validated_values_become_the_dspy_objects(name: str) -> None:
    field = FieldSpec("x", parse_type(f"optional[{name}]"))
    assert isinstance(field.type, OptionalType)
    (_, canonical), *_ = ACCEPTED[name]
    converted = to_dspy_values([field], {"x": canonical, "other": 1})
    assert isinstance(converted["x"], getattr(dspy, name))
    assert converted["other"] == 1
    assert to_dspy_values([field], {"x": None}) == {"x": None}


def test_constraints_on_a_dspy_type_are_refused() -> None:
    with pytest.raises(SignatureError) as info:
        Signature.parse("image: Image -> y: str", constraints={"image": {"max_length": 10}})
    assert any(e.field == "image" for e in info.value.errors)


@pytest.mark.parametrize("name", NAMES)
def test_generated_samples_pass_and_invalid_ones_fail(name: str) -> None:
    rng = random.Random(7)
    field = FieldSpec("x", parse_type(name))
    validator = type_validator(field.type)
    for _ in range(5):
        assert validator.accepts(valid_sample(field, rng))
    bad = invalid_samples(field, rng)
    assert bad
    for value, reason in bad:
        assert not validator.accepts(value), reason


# --- a real dspy backend ------------------------------------------------------------------------


async def test_an_image_and_a_history_reach_the_lm_as_dspy_formats_them() -> None:
    sig = Signature.parse("image: Image, history: History, question: str -> answer: str")
    inputs = {
        "image": "https://example.com/cat.png",
        "history": [{"question": "What animal?", "answer": "A cat."}],
        "question": "What colour is it?",
    }
    valid = sig.validate_inputs(inputs)
    lm = DummyLM([{"answer": "Orange."}])
    result = await DspyBackend(lm=lm).complete(PredictRequest(signature=sig, inputs=valid))
    assert result.outputs == {"answer": "Orange."}
    stock_lm = DummyLM([{"answer": "Orange."}])
    with dspy.context(lm=stock_lm, adapter=dspy.ChatAdapter()):
        dspy.Predict(sig.to_dspy())(
            image=dspy.Image(url=inputs["image"]),
            history=dspy.History(messages=inputs["history"]),
            question=inputs["question"],
        )
    sent = lm.history[0]["messages"]
    assert sent == stock_lm.history[0]["messages"]
    # the image went as an image block, the history as earlier turns
    assert any(
        isinstance(m["content"], list)
        and {"type": "image_url", "image_url": {"url": inputs["image"]}} in m["content"]
        for m in sent
    )
    assert any("What animal?" in str(m["content"]) for m in sent[:-1])


async def test_code_and_tool_call_outputs_come_back_as_json() -> None:
    sig = Signature.parse("task: str, tools: list[Tool] -> snippet: Code, calls: ToolCalls")
    valid = sig.validate_inputs(
        {"task": "t", "tools": [{"name": "search", "desc": "Search", "args": {}}]}
    )
    calls = {"tool_calls": [{"name": "search", "args": {"q": "cats"}}]}
    lm = DummyLM([{"snippet": "print('hi')", "calls": calls}])
    result = await DspyBackend(lm=lm).complete(PredictRequest(signature=sig, inputs=valid))
    assert result.outputs == {"snippet": "print('hi')", "calls": calls}
    assert sig.validate_outputs(result.outputs) == result.outputs
    assert "search" in str(lm.history[0]["messages"])


ALL_TYPES = (
    "image: Image, audio: Audio, history: History, tools: list[Tool], code: optional[Code]"
    " -> answer: str, snippet: Code, calls: ToolCalls"
)


def test_a_signature_with_every_dspy_type_passes_deep_validation() -> None:
    from dspex.actions.validate_signature import validate_signature

    report = validate_signature(ALL_TYPES, level="deep")
    assert [s.name for s in report.steps if not s.passed] == []
    assert report.valid


async def test_the_mock_backend_answers_dspy_typed_outputs_that_validate() -> None:
    from dspex.backends.mock import MockBackend

    sig = Signature.parse(ALL_TYPES)
    inputs = sig.validate_inputs(
        {
            "image": PNG,
            "audio": {"data": "UklGRg==", "audio_format": "wav"},
            "history": [],
            "tools": [{"name": "search"}],
        }
    )
    result = await MockBackend().complete(PredictRequest(signature=sig, inputs=inputs))
    assert sig.validate_outputs(result.outputs) == result.outputs


async def test_a_request_with_a_demo_image_that_is_not_a_url_fails_with_a_typed_error() -> None:
    sig = Signature.parse("image: Image -> answer: str")
    request = PredictRequest(
        signature=sig,
        inputs={"image": PNG},
        demos=[{"image": "cat.png", "answer": "a cat"}],
    )
    lm = DummyLM([{"answer": "x"}])
    with pytest.raises(ValidationError) as info:
        await DspyBackend(lm=lm).complete(request)
    assert [(e.field, e.code) for e in info.value.errors] == [("image", "wrong_type")]
    assert lm.history == []
