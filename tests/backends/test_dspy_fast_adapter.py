"""The dspy backend's fast ChatAdapter: DSPy's stock ChatAdapter, byte for byte, for less work.

Every comparison runs the real thing twice: DSPy's ``ChatAdapter`` and ``FastChatAdapter`` on
the same signature and inputs (the fast one at least twice, so its caches are exercised), on
DummyLM or on the loopback OpenAI-compatible server, and checks that what the LM was sent and
what came back parsed are equal. The corpus below has more than fifty signatures: every dspex
type, nested models, DSPy's own types, descriptions, instructions, demos and chain of thought.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import decimal
import enum
import inspect
import math
import pickle
import random
import uuid
from typing import Any, Literal

import dspy
import pydantic
import pytest
from dspy.adapters.utils import serialize_for_json as stock_serialize_for_json
from dspy.utils.callback import BaseCallback
from pydantic import BaseModel
from tests.support.openai_server import OpenAIServer, ok

from dspex.backends import _dspy_adapter
from dspex.backends._dspy_adapter import FastChatAdapter, serialize_for_json
from dspex.backends.base import PredictRequest, Usage
from dspex.backends.dspy_backend import DspyBackend
from dspex.errors import ParseError
from dspex.signatures.samples import valid_sample
from dspex.signatures.signature import Signature
from dspex.signatures.types import FieldSpec, ModelType

# --- the corpus: signatures, inputs, demos and answers -------------------------------------------


class Address(BaseModel):
    street: str
    city: str
    zip_code: int | None = None


class Person(BaseModel):
    name: str
    age: int
    address: Address
    tags: list[str] = []


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    y: float


@pydantic.dataclasses.dataclass
class Span:
    start: int
    end: int


class Opaque:
    def __str__(self) -> str:
        return "<opaque>"


PERSON = Person(name="Ada", age=36, address=Address(street="1 Main St", city="Paris"), tags=["x"])


@dataclasses.dataclass(frozen=True)
class Case:
    """One signature of the corpus, with inputs, demos and output values to answer with."""

    id: str
    signature: type[dspy.Signature]
    inputs: dict[str, Any]
    demos: list[dict[str, Any]]
    outputs: dict[str, Any]


# Every dspex type expression, each with constraints that fit it (used on some signatures).
TYPES: list[tuple[str, dict[str, Any]]] = [
    ("str", {"max_length": 80}),
    ("int", {"minimum": 0, "maximum": 100}),
    ("float", {"minimum": -5}),
    ("bool", {}),
    ("Literal['calm', 'angry']", {}),
    ("enum['red', 'green', 'blue']", {}),
    ("Literal[1, 2, 3]", {}),
    ("embedding", {"min_items": 1}),
    ("embedding[3]", {}),
    ("probability", {}),
    ("confidence_score", {}),
    ("reasoning_chain", {"max_items": 4}),
    ("list[str]", {"max_items": 3}),
    ("list[int]", {"unique_items": True}),
    ("list[list[float]]", {}),
    ("dict[str, int]", {"max_items": 3}),
    ("dict[str, list[str]]", {}),
    ("dict[str, dict[str, float]]", {}),
    ("int | str", {}),
    ("float | bool", {}),
    ("optional[str]", {}),
    ("optional[list[int]]", {}),
    ("optional[Literal['a', 'b']]", {}),
    ("list[dict[str, int | float]]", {}),
]
INPUT_NAMES = ["question", "context", "query", "document", "entries", "topic", "k", "notes"]
OUTPUT_NAMES = ["answer", "score", "tags", "summary", "verdict", "ranking", "extra"]
INSTRUCTIONS = [
    "",
    "Answer the question.",
    "Classify the text.\n\nBe strict:\n    only use the allowed labels.\n\tTabs stay.",
    "Say \"yes\" or 'no' — «vraiment» 日本語, then stop.",
    "   Leading spaces and a trailing newline.\n",
]
DESCRIPTIONS = ["", "the user's question", 'a «quoted» "value" — with unicode', "short"]


def _generated(i: int) -> Case:
    """Signature number ``i`` of the generated part: types, names and texts in rotation."""
    rng = random.Random(i)
    n_in, n_out = 1 + i % 3, 1 + (i // 3) % 3
    specs: list[list[FieldSpec]] = [[], []]
    for side, count, names, stride in ((0, n_in, INPUT_NAMES, 7), (1, n_out, OUTPUT_NAMES, 11)):
        for k in range(count):
            expr, constraints = TYPES[(i * stride + k * 5 + side) % len(TYPES)]
            described = (i + k) % 3 != 0
            sig = Signature.parse(
                f"x: str -> y: {expr}",
                constraints={"y": constraints} if i % 4 == 0 else None,
            )
            node = sig.output_fields[0]
            specs[side].append(
                FieldSpec(
                    names[(i + k) % len(names)],
                    node.type,
                    DESCRIPTIONS[(i + k) % len(DESCRIPTIONS)] if described else "",
                    node.constraints,
                )
            )
    if i % 10 == 7:  # a nested pydantic model on each side
        specs[0].append(FieldSpec("person", ModelType(Person), "who it is about"))
        specs[1].append(FieldSpec("friend", ModelType(Person)))
    instructions = INSTRUCTIONS[i % len(INSTRUCTIONS)]
    sig = Signature(f"Gen{i}", instructions, tuple(specs[0]), tuple(specs[1]))
    cls: type[dspy.Signature] = sig.to_dspy()
    if i % 4 == 3:
        cls = dspy.ChainOfThought(cls).predict.signature

    def sample(fields: tuple[FieldSpec, ...]) -> dict[str, Any]:
        return {f.name: valid_sample(f, rng) for f in fields}

    inputs = sample(sig.input_fields)
    if i % 6 == 5:  # an input left out: it has no section in the message
        inputs.pop(sig.input_fields[-1].name)
    outputs = sample(sig.output_fields)
    if "reasoning" in cls.output_fields:
        outputs = {"reasoning": "First this.\nThen that.", **outputs}
    complete = {**sample(sig.input_fields), **outputs}
    first_output = next(iter(outputs))
    incomplete = {**sample(sig.input_fields), first_output: None}  # kept, with a placeholder
    inputs_only = sample(sig.input_fields)  # no output at all: dropped
    return Case(f"gen{i:02d}", cls, inputs, [complete, incomplete, inputs_only], outputs)


class Profile(dspy.Signature):  # type: ignore[misc]
    """Describe the person.

    Be brief, and mention the city."""

    person: Person = dspy.InputField(desc="who to describe")
    style: Literal["short", "long"] = dspy.InputField()
    notes: str | None = dspy.InputField(desc="optional notes")
    summary: str = dspy.OutputField(desc="one sentence")
    friend: Person = dspy.OutputField()
    mood: Mood = dspy.OutputField()
    kind: Literal["adult", "child"] = dspy.OutputField()


class PythonValues(dspy.Signature):  # type: ignore[misc]
    """Read the values."""

    when: datetime.datetime = dspy.InputField()
    day: datetime.date = dspy.InputField()
    amount: decimal.Decimal = dspy.InputField()
    ident: uuid.UUID = dspy.InputField()
    point: Point = dspy.InputField(desc="a dataclass")
    span: Span = dspy.InputField(desc="a pydantic dataclass")
    colour: Colour = dspy.InputField()
    pair: tuple[int, str] = dspy.InputField()
    anything: Any = dspy.InputField()
    total: decimal.Decimal = dspy.OutputField()
    colours: list[Colour] = dspy.OutputField()
    at: datetime.datetime = dspy.OutputField()


class Rewrite(dspy.Signature):  # type: ignore[misc]
    """Rewrite the text in the requested register."""

    text: str = dspy.InputField(desc="may span lines")
    tone: Literal["formal", "casual"] = dspy.InputField()
    rewritten: str = dspy.OutputField(desc="same meaning")
    reasoning_note: dspy.Reasoning = dspy.OutputField()


class Coded(dspy.Signature):  # type: ignore[misc]
    """Write the code and the calls."""

    tools: list[dspy.Tool] = dspy.InputField()
    task: str = dspy.InputField()
    code: dspy.Code = dspy.OutputField()
    calls: dspy.ToolCalls = dspy.OutputField()


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


PYTHON_INPUTS = {
    "when": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
    "day": datetime.date(2024, 5, 6),
    "amount": decimal.Decimal("1.10"),
    "ident": uuid.UUID(int=7),
    "point": Point(1, 2.0),
    "span": Span(3, 9),
    "colour": Colour.RED,
    "pair": (1, "b"),
    "anything": [Opaque(), {"k": frozenset({3})}, b"bytes", math.inf],
}
PYTHON_OUTPUTS = {
    "total": decimal.Decimal("2.5"),
    "colours": [Colour.BLUE],
    "at": datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
}


def _sig(text: str) -> type[dspy.Signature]:
    cls: type[dspy.Signature] = Signature.parse(text).to_dspy()
    return cls


def _case(
    id: str,
    sig: type[dspy.Signature],
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    demos: list[dict[str, Any]] | None = None,
) -> Case:
    return Case(id, sig, inputs, demos if demos is not None else [{**inputs, **outputs}], outputs)


HANDWRITTEN: list[Case] = [
    _case("str-multiline-unicode", _sig("question: str -> answer: str"),
          {"question": "Ligne 1 «é»\n  ligne 2 — 日本語\t"}, {"answer": "Oui\n  non"}),
    _case("float-specials", _sig("x: float, y: float -> z: float"),
          {"x": math.nan, "y": -math.inf}, {"z": math.inf}),
    _case("list-of-str-into-str-field", _sig("context: str, q: str -> answer: str"),
          {"context": ["p1", "two\nlines", "«quoted»"], "q": "q"}, {"answer": "a"}),
    _case("list-single-and-empty", _sig("a: list[str], b: list[str] -> c: str"),
          {"a": ["x"], "b": []}, {"c": ""}),
    _case("no-inputs-given", _sig("q: str -> answer: str"), {}, {"answer": "x"}),
    _case("pydantic-literal-enum-optional", Profile,
          {"person": PERSON, "style": "short", "notes": None},
          {"summary": "s", "friend": PERSON, "mood": Mood.SAD, "kind": "adult"}),
    _case("pydantic-given-as-dict", Profile,
          {"person": PERSON.model_dump(), "style": "long", "notes": "n"},
          {"summary": "s", "friend": PERSON.model_dump(), "mood": "happy", "kind": "child"}),
    _case("chain-of-thought-over-models", dspy.ChainOfThought(Profile).predict.signature,
          {"person": PERSON, "style": "long", "notes": "likes tea"},
          {"reasoning": "r", "summary": "s", "friend": PERSON, "mood": Mood.HAPPY,
           "kind": "adult"}),
    _case("python-values", PythonValues, PYTHON_INPUTS, PYTHON_OUTPUTS),
    _case("reasoning-type", Rewrite, {"text": "hey\nthere", "tone": "formal"},
          {"rewritten": "Good day.", "reasoning_note": "formal"}),
    _case("tools-code-and-tool-calls", Coded, {"tools": [dspy.Tool(add)], "task": "add 2 and 3"},
          {"code": "print(add(2, 3))",
           "calls": dspy.ToolCalls.from_dict_list([{"name": "add", "args": {"a": 2, "b": 3}}])}),
    _case("dspy-string-signature", dspy.Signature("question, k: int -> answer: list[str]"),
          {"question": "which?", "k": 2}, {"answer": ["a", "b"]}),
]  # fmt: skip

CORPUS: list[Case] = [_generated(i) for i in range(60)] + HANDWRITTEN


def _param(case: Case) -> Any:
    return pytest.param(case, id=case.id)


def test_the_corpus_is_broad_enough_to_stand_for_chat_adapter() -> None:
    assert len({case.signature for case in CORPUS}) >= 50
    annotations = {
        info.json_schema_extra.get("dspex_type")
        for case in CORPUS
        for info in case.signature.model_fields.values()
    }
    for expr, _ in TYPES:
        assert Signature.parse(f"x: {expr} -> y: str").input_fields[0].type in {
            Signature.parse(f"x: {a} -> y: str").input_fields[0].type
            for a in annotations
            if a and "Person" not in a
        }, expr
    assert any(case.signature.instructions.count("\n") > 2 for case in CORPUS)
    assert any(
        info.json_schema_extra.get("desc", "").startswith("a «quoted»")
        for case in CORPUS
        for info in case.signature.model_fields.values()
    )
    assert sum("reasoning" in case.signature.output_fields for case in CORPUS) >= 15
    assert all(len(case.demos) >= 1 for case in CORPUS)


# --- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [_param(c) for c in CORPUS])
def test_messages_are_those_of_the_stock_chat_adapter(case: Case) -> None:
    expected = dspy.ChatAdapter().format(case.signature, [], case.inputs)
    fast = FastChatAdapter()
    assert fast.format(case.signature, [], case.inputs) == expected
    assert fast.format(case.signature, [], case.inputs) == expected  # from the per-class caches


@pytest.mark.parametrize("case", [_param(c) for c in CORPUS])
def test_messages_with_demos_are_those_of_the_stock_chat_adapter(case: Case) -> None:
    expected = dspy.ChatAdapter().format(case.signature, case.demos, case.inputs)
    fast = FastChatAdapter()
    assert fast.format(case.signature, case.demos, case.inputs) == expected
    assert fast.format(case.signature, case.demos, case.inputs) == expected


def test_messages_with_a_conversation_history_are_those_of_the_stock_chat_adapter() -> None:
    sig = dspy.Signature("question: str, history: dspy.History -> answer: int")
    history = dspy.History(
        messages=[{"question": "1 + 1?", "answer": 2}, {"question": "2 + 2?", "answer": 4}]
    )
    demos: list[dict[str, Any]] = [
        {"question": "3 + 3?", "answer": 6},
        {"question": "only an input"},  # dropped: no output
        {"question": "5 + 5?", "answer": None},  # incomplete: kept with a placeholder
    ]
    inputs = {"question": "6 * 7?", "history": history}
    fast = FastChatAdapter()
    for given in ([], demos):
        expected = dspy.ChatAdapter().format(sig, given, inputs)
        for _ in range(2):
            assert fast.format(sig, given, inputs) == expected


def test_messages_with_an_image_are_split_into_blocks_as_dspy_does() -> None:
    sig = dspy.Signature("image: dspy.Image, question: str -> answer: str")
    image = dspy.Image("data:image/png;base64,iVBORw0KGgo=")
    inputs = {"image": image, "question": "what is it?"}
    demos = [{"image": image, "question": "and this?", "answer": "a dot"}]
    fast = FastChatAdapter()
    for given in ([], demos):
        expected = dspy.ChatAdapter().format(sig, given, inputs)
        assert isinstance(expected[-1]["content"], list)  # content blocks, not one string
        assert fast.format(sig, given, inputs) == expected


def test_a_signature_changed_in_place_is_formatted_anew() -> None:
    sig = _sig("question: str -> answer: str")
    fast = FastChatAdapter()
    before = fast.format(sig, [], {"question": "q"})
    sig.instructions = "Answer in French."
    after = fast.format(sig, [], {"question": "q"})
    assert after != before
    assert after == dspy.ChatAdapter().format(sig, [], {"question": "q"})


def test_other_adapter_pieces_match_the_stock_ones() -> None:
    stock, fast = dspy.ChatAdapter(), FastChatAdapter()
    sig = Profile
    outputs = {"summary": "s", "friend": PERSON, "mood": Mood.SAD, "kind": "adult"}
    inputs = {"person": PERSON, "style": "short"}
    assert fast.format_system_message(sig) == stock.format_system_message(sig)
    assert fast.format_assistant_message_content(
        sig, outputs
    ) == stock.format_assistant_message_content(sig, outputs)
    for kwargs in ({}, {"main_request": True}, {"prefix": "P", "suffix": "S"}):
        assert fast.format_user_message_content(
            sig, inputs, **kwargs
        ) == stock.format_user_message_content(sig, inputs, **kwargs)
    assert fast.format_finetune_data(sig, [], inputs, outputs) == stock.format_finetune_data(
        sig, [], inputs, outputs
    )


# --- values -------------------------------------------------------------------------------------


VALUES: list[Any] = [
    "text",
    "",
    0,
    -(10**30),
    1.5,
    math.nan,
    math.inf,
    True,
    None,
    [1, "a", None, 2.5],
    (1, "b"),
    {"k": [1, {"n": None}], "é": "ü"},
    frozenset({3}),
    b"bytes",
    datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
    datetime.date(2024, 5, 6),
    decimal.Decimal("1.10"),
    uuid.UUID(int=7),
    Mood.HAPPY,
    Colour.BLUE,
    PERSON,
    Point(1, 2.0),
    Span(1, 2),
    Opaque(),
    [Opaque(), 1],
    dspy.Image("data:image/png;base64,iVBORw0KGgo="),
    dspy.History(messages=[{"q": 1}]),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_serialize_for_json_matches_dspy(value: Any) -> None:
    expected = stock_serialize_for_json(value)
    for _ in range(2):  # built, then from the per-type cache
        got = serialize_for_json(value)
        assert type(got) is type(expected)
        assert repr(got) == repr(expected)


def test_a_rebuilt_model_is_serialized_as_it_now_is() -> None:
    class Box(BaseModel):
        size: int

    assert serialize_for_json(Box(size=1)) == {"size": 1}
    Box.model_rebuild(force=True)
    assert serialize_for_json(Box(size=2)) == stock_serialize_for_json(Box(size=2))


# --- parsing ------------------------------------------------------------------------------------


def _outcome(adapter: Any, signature: type[dspy.Signature], completion: str) -> Any:
    try:
        parsed = adapter.parse(signature, completion)
    except Exception as exc:
        return ("raised", type(exc), str(exc), repr(getattr(exc, "parsed_result", None)))
    return ("parsed", repr(parsed), [type(v) for v in parsed.values()])


def _answers(case: Case) -> list[str]:
    """The well-formed answer for ``case`` and a few broken ones."""
    stock = dspy.ChatAdapter()
    good = stock.format_assistant_message_content(case.signature, case.outputs)
    names = list(case.outputs)
    last_left_out = stock.format_assistant_message_content(
        case.signature, {k: v for k, v in case.outputs.items() if k != names[-1]}
    ).split(f"[[ ## {names[-1]} ## ]]")[0]
    garbled = "\n\n".join(f"[[ ## {name} ## ]]\n{{not: «valid»" for name in names)
    inline = "Sure!\n" + good.replace(" ## ]]\n", " ## ]] ", 1)
    repeated = good + f"\n[[ ## {names[0]} ## ]]\nagain"
    return [good, last_left_out, garbled, inline, repeated, ""]


@pytest.mark.parametrize("case", [_param(c) for c in CORPUS])
def test_parse_matches_the_stock_chat_adapter(case: Case) -> None:
    stock, fast = dspy.ChatAdapter(), FastChatAdapter()
    for completion in _answers(case):
        expected = _outcome(stock, case.signature, completion)
        assert _outcome(fast, case.signature, completion) == expected
        assert _outcome(fast, case.signature, completion) == expected


OPTIONALS = _sig("q: str -> answer: str, score: optional[int], tags: list[str] | None")

# (case id, DSPy signature, completion)
PARSE_TEXTS: list[tuple[str, type[dspy.Signature], str]] = [
    ("indented", OPTIONALS, "   [[ ## answer ## ]]   \n  padded  \n\n[[ ## unknown ## ]]\nx"),
    ("optional-missing", OPTIONALS, "[[ ## answer ## ]]\nonly the answer"),
    ("required-missing", OPTIONALS, "[[ ## score ## ]]\n3"),
    ("bad-int", OPTIONALS, "[[ ## answer ## ]]\na\n\n[[ ## score ## ]]\nthree"),
    (
        "literal-and-model",
        Profile,
        "[[ ## summary ## ]]\ns\n[[ ## friend ## ]]\n"
        '{"name": "B", "age": "41", "address": {"street": "s", "city": "c"}}\n'
        "[[ ## mood ## ]]\nSAD\n[[ ## kind ## ]]\nLiteral['child']",
    ),
    ("bad-literal", Profile, "[[ ## summary ## ]]\ns\n[[ ## kind ## ]]\nteen"),
]


@pytest.mark.parametrize(
    ("signature", "completion"),
    [pytest.param(s, c, id=name) for name, s, c in PARSE_TEXTS],
)
def test_hand_written_answers_parse_as_with_the_stock_chat_adapter(
    signature: type[dspy.Signature], completion: str
) -> None:
    expected = _outcome(dspy.ChatAdapter(), signature, completion)
    fast = FastChatAdapter()
    assert _outcome(fast, signature, completion) == expected
    assert _outcome(fast, signature, completion) == expected


# --- public seams -------------------------------------------------------------------------------


def test_the_fast_adapter_uses_only_public_names_of_other_libraries() -> None:
    tree = ast.parse(inspect.getsource(_dspy_adapter))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [alias.name for alias in node.names]
            if module != "__future__" and any(p.startswith("_") for p in module.split(".")):
                found.append(f"from {module} import")
            found.extend(f"{module}.{name}" for name in names if name.startswith("_"))
        elif isinstance(node, ast.Import):
            found.extend(
                alias.name
                for alias in node.names
                if any(part.startswith("_") for part in alias.name.split("."))
            )
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            # a dunder other than the object protocol's, or a private name not of our own
            if node.attr.startswith("__") and node.attr.endswith("__"):
                if node.attr not in {"__init__", "__dict__"}:
                    found.append(f"<expr>.{node.attr}")
            elif not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"<expr>.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in {"unwrap", "__wrapped__"}:
            found.append(node.id)
    assert found == []


# --- calls: parsing, fallback, callbacks, usage ---------------------------------------------------


class _RawText:
    """DummyLM's answer formatter for scripted raw completions: ``{"text": ...}`` as is."""

    def format_field_with_value(self, fields_with_values: dict[Any, Any], role: str = "") -> str:
        (text,) = fields_with_values.values()
        return str(text)


def _raw_lm(*texts: str) -> dspy.utils.DummyLM:
    return dspy.utils.DummyLM([{"text": t} for t in texts], adapter=_RawText())


def _sent(lm: dspy.utils.DummyLM) -> list[Any]:
    return [entry["messages"] for entry in lm.history]


CALL_CASES = [c for c in CORPUS if c.id in {"gen03", "gen07", "gen10", "python-values"}] + [
    next(c for c in CORPUS if c.id == "chain-of-thought-over-models")
]


@pytest.mark.parametrize("case", [_param(c) for c in CALL_CASES])
async def test_a_call_sends_and_parses_as_the_stock_chat_adapter(case: Case) -> None:
    answer = dspy.ChatAdapter().format_assistant_message_content(case.signature, case.outputs)
    stock_lm, fast_lm = _raw_lm(answer), _raw_lm(answer, answer)
    expected = await dspy.ChatAdapter().acall(stock_lm, {}, case.signature, [], case.inputs)
    fast = FastChatAdapter()
    got = [await fast.acall(fast_lm, {}, case.signature, [], case.inputs) for _ in range(2)]
    assert repr(got) == repr([expected, expected])
    assert _sent(fast_lm) == _sent(stock_lm) * 2


async def test_an_unparseable_answer_falls_back_to_the_json_adapter_as_dspy_does() -> None:
    sig = _sig("question: str -> answer: str, score: int")
    script = ("no fields here", '{"answer": "42", "score": 7}')
    stock_lm, fast_lm = _raw_lm(*script), _raw_lm(*script)
    expected = await dspy.ChatAdapter().acall(stock_lm, {}, sig, [], {"question": "q"})
    got = await FastChatAdapter().acall(fast_lm, {}, sig, [], {"question": "q"})
    assert got == expected == [{"answer": "42", "score": 7}]
    assert len(_sent(fast_lm)) == 2
    assert _sent(fast_lm) == _sent(stock_lm)


def _backend_request(sig: Signature, kind: Any = "predict", **inputs: Any) -> PredictRequest:
    return PredictRequest(signature=sig, inputs=inputs, kind=kind)


QA = Signature.parse("question: str -> answer: str, score: int")
QA_ANSWER = "[[ ## answer ## ]]\n42\n\n[[ ## score ## ]]\n7\n\n[[ ## completed ## ]]"


@pytest.mark.parametrize("kind", ["predict", "chain_of_thought"])
async def test_the_backend_sends_what_stock_dspy_sends_and_returns_the_same_outputs(
    kind: Any,
) -> None:
    answer = ("[[ ## reasoning ## ]]\nbecause\n\n" if kind == "chain_of_thought" else "") + (
        QA_ANSWER
    )
    stock_lm, lm = _raw_lm(answer), _raw_lm(answer, answer)
    module = dspy.ChainOfThought if kind == "chain_of_thought" else dspy.Predict
    with dspy.context(lm=stock_lm, adapter=dspy.ChatAdapter()):
        prediction = await module(QA.to_dspy()).acall(question="q")
    backend = DspyBackend(lm=lm)
    results = [await backend.complete(_backend_request(QA, kind, question="q")) for _ in range(2)]
    assert isinstance(backend._call_adapter(), FastChatAdapter)
    assert _sent(lm) == _sent(stock_lm) * 2
    for result in results:
        assert result.outputs == {"answer": prediction.answer, "score": prediction.score}
        if kind == "chain_of_thought":
            assert result.extras == {"reasoning": prediction.reasoning}


async def test_the_backend_falls_back_to_json_once_then_parses() -> None:
    lm = _raw_lm("no fields here", '{"answer": "42", "score": 7}')
    result = await DspyBackend(lm=lm).complete(_backend_request(QA, question="q"))
    assert result.outputs == {"answer": "42", "score": 7}
    assert len(lm.history) == 2


class _Events(BaseCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events.append(f"module_start:{type(instance).__name__}")

    def on_module_end(self, call_id: str, outputs: Any, exception: Any = None) -> None:
        self.events.append("module_end")

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events.append("lm_start")

    def on_lm_end(self, call_id: str, outputs: Any, exception: Any = None) -> None:
        self.events.append("lm_end")

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events.append("format_start")

    def on_adapter_format_end(self, call_id: str, outputs: Any, exception: Any = None) -> None:
        self.events.append("format_end")

    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events.append("parse_start")

    def on_adapter_parse_end(self, call_id: str, outputs: Any, exception: Any = None) -> None:
        self.events.append("parse_end")


@pytest.mark.parametrize("kind", ["predict", "chain_of_thought"])
async def test_configured_callbacks_see_the_same_events_as_with_stock_dspy(kind: Any) -> None:
    answer = ("[[ ## reasoning ## ]]\nr\n\n" if kind == "chain_of_thought" else "") + QA_ANSWER
    stock, ours = _Events(), _Events()
    module = dspy.ChainOfThought if kind == "chain_of_thought" else dspy.Predict
    with dspy.context(lm=_raw_lm(answer), adapter=dspy.ChatAdapter(), callbacks=[stock]):
        await module(QA.to_dspy()).acall(question="q")
    with dspy.context(callbacks=[ours]):
        await DspyBackend(lm=_raw_lm(answer)).complete(_backend_request(QA, kind, question="q"))
    assert ours.events == stock.events
    assert ours.events.count("format_start") == 1
    assert ours.events.count("parse_start") == 1


def test_callbacks_see_one_format_when_dspy_itself_formats_a_history_or_an_image() -> None:
    history_sig = dspy.Signature("question: str, history: dspy.History -> answer: str")
    image_sig = dspy.Signature("image: dspy.Image -> answer: str")
    calls = [
        (history_sig, {"question": "q", "history": dspy.History(messages=[])}),
        (image_sig, {"image": dspy.Image("data:image/png;base64,iVBORw0KGgo=")}),
    ]
    for sig, inputs in calls:
        stock, ours = _Events(), _Events()
        with dspy.context(callbacks=[stock]):
            dspy.ChatAdapter().format(sig, [], inputs)
        with dspy.context(callbacks=[ours]):
            FastChatAdapter().format(sig, [], inputs)
        assert ours.events == stock.events == ["format_start", "format_end"]


# --- which adapter ------------------------------------------------------------------------------


class CountingChatAdapter(dspy.ChatAdapter):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.formats = 0

    def format(self, signature: Any, demos: Any, inputs: Any) -> Any:
        self.formats += 1
        return super().format(signature, demos, inputs)


async def test_a_custom_adapter_is_used_as_given() -> None:
    adapter = CountingChatAdapter()
    backend = DspyBackend(lm=_raw_lm(QA_ANSWER), adapter=adapter)
    result = await backend.complete(_backend_request(QA, question="q"))
    assert result.outputs == {"answer": "42", "score": 7}
    assert adapter.formats == 1
    assert backend._call_adapter() is adapter


async def test_a_plain_chat_adapter_given_to_the_backend_is_used_as_given() -> None:
    adapter = dspy.ChatAdapter()
    lm = _raw_lm(QA_ANSWER)
    backend = DspyBackend(lm=lm, adapter=adapter)
    assert backend._call_adapter() is adapter
    seen = _Formatters()
    with dspy.context(callbacks=[seen]):
        result = await backend.complete(_backend_request(QA, question="q"))
    assert result.outputs == {"answer": "42", "score": 7}
    assert seen.instances == [adapter]


class _Formatters(BaseCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.instances: list[Any] = []

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.instances.append(instance)


async def test_a_plain_chat_adapter_configured_in_dspy_is_used_as_given() -> None:
    adapter = dspy.ChatAdapter()
    backend = DspyBackend(lm=_raw_lm(QA_ANSWER))
    with dspy.context(adapter=adapter):
        assert backend._call_adapter() is adapter
        result = await backend.complete(_backend_request(QA, question="q"))
    assert result.outputs == {"answer": "42", "score": 7}
    assert isinstance(backend._call_adapter(), FastChatAdapter)  # none configured any more


async def test_a_chat_adapter_with_non_default_settings_is_used_as_given() -> None:
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    lm = _raw_lm("no fields here", '{"answer": "42", "score": 7}')
    backend = DspyBackend(lm=lm, adapter=adapter)
    assert backend._call_adapter() is adapter
    with pytest.raises(ParseError):
        await backend.complete(_backend_request(QA, question="q"))
    assert len(lm.history) == 1  # no JSON retry


async def test_an_adapter_configured_in_dspy_settings_is_used() -> None:
    lm = _raw_lm('{"answer": "json", "score": 3}')
    backend = DspyBackend(lm=lm)
    with dspy.context(adapter=dspy.JSONAdapter()):
        result = await backend.complete(_backend_request(QA, question="q"))
    assert result.outputs == {"answer": "json", "score": 3}
    assert _sent(lm)[0] == dspy.JSONAdapter().format(QA.to_dspy(), [], {"question": "q"})


def test_a_used_fast_adapter_pickles_without_its_caches() -> None:
    fast = FastChatAdapter()
    fast.format(_sig("question: str -> answer: str"), [], {"question": "q"})
    copy = pickle.loads(pickle.dumps(fast))
    assert isinstance(copy, FastChatAdapter)
    sig = _sig("a: int -> b: int")
    assert copy.format(sig, [], {"a": 1}) == dspy.ChatAdapter().format(sig, [], {"a": 1})


# --- usage --------------------------------------------------------------------------------------


@pytest.fixture
def loopback_lm(openai_server: OpenAIServer) -> Any:
    return dspy.LM(
        "openai/loopback-model",
        api_base=openai_server.base_url,
        api_key="k",
        num_retries=0,
        cache=False,
    )


async def test_usage_is_counted_and_also_reaches_an_enclosing_tracker(
    openai_server: OpenAIServer, loopback_lm: Any
) -> None:
    content = "[[ ## answer ## ]]\nyes\n\n[[ ## score ## ]]\n1\n\n[[ ## completed ## ]]"
    openai_server.script(ok(content), ok(content))
    backend = DspyBackend(lm=loopback_lm)
    alone = await backend.complete(_backend_request(QA, question="q"))
    with dspy.track_usage() as tracker:
        nested = await backend.complete(_backend_request(QA, question="q"))
    sent = openai_server.requests[0].json["messages"]
    expected = Usage(
        prompt_tokens=len("\n\n".join(m["content"] for m in sent).split()),
        completion_tokens=len(content.split()),
    )
    assert alone.usage == nested.usage == {"openai/loopback-model": expected}
    totals = tracker.get_total_tokens()["openai/loopback-model"]
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (
        expected.prompt_tokens,
        expected.completion_tokens,
    )
    assert openai_server.requests[1].json["messages"] == sent
    await loopback_lm.aclose()


async def test_the_loopback_provider_receives_the_stock_messages(
    openai_server: OpenAIServer, loopback_lm: Any
) -> None:
    sig = Signature.parse("question: str, k: int, tags: list[str] -> answer: str, score: int")
    inputs = {"question": "q?", "k": 3, "tags": ["a", "b"]}
    await DspyBackend(lm=loopback_lm).complete(PredictRequest(signature=sig, inputs=inputs))
    with dspy.context(lm=loopback_lm, adapter=dspy.ChatAdapter()):
        await dspy.Predict(sig.to_dspy()).acall(**inputs)
    ours, stock = (r.json["messages"] for r in openai_server.requests)
    assert ours == stock
    await loopback_lm.aclose()
