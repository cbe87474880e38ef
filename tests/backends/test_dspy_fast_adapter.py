"""The dspy backend's fast ChatAdapter: DSPy's stock ChatAdapter, byte for byte, for less work.

Every comparison runs the real thing twice: DSPy's ``ChatAdapter`` and ``FastChatAdapter`` on
the same signature and inputs (the fast one at least twice, so its caches are exercised), on
DummyLM or on the loopback OpenAI-compatible server, and checks that what the LM was sent and
what came back parsed are equal.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import math
import pickle
import uuid
from typing import Any, Literal

import dspy
import pytest
from dspy.adapters.types.citation import Citations
from dspy.adapters.utils import serialize_for_json as stock_serialize_for_json
from dspy.utils.callback import BaseCallback
from pydantic import BaseModel
from tests.support.openai_server import OpenAIServer, ok

from dspex.backends._dspy_adapter import (
    FastChatAdapter,
    is_default_chat_adapter,
    serialize_for_json,
)
from dspex.backends.base import PredictRequest, Usage
from dspex.backends.dspy_backend import DspyBackend
from dspex.errors import ParseError
from dspex.signatures.signature import Signature

# --- signatures and inputs ----------------------------------------------------------------------


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


def _sig(text: str) -> type[dspy.Signature]:
    cls: type[dspy.Signature] = Signature.parse(text).to_dspy()
    return cls


PERSON = Person(name="Ada", age=36, address=Address(street="1 Main St", city="Paris"), tags=["x"])

# (case id, DSPy signature, inputs)
FORMAT_CASES: list[tuple[str, type[dspy.Signature], dict[str, Any]]] = [
    ("str", _sig("question: str -> answer: str"), {"question": "What is 6 * 7?"}),
    (
        "str-multiline-unicode",
        _sig("question: str -> answer: str"),
        {"question": "Ligne 1 «é»\n  ligne 2 — 日本語\t"},
    ),
    (
        "scalars",
        _sig("n: int, x: float, flag: bool -> total: int, ratio: float, ok: bool"),
        {"n": 7, "x": 2.5, "flag": False},
    ),
    (
        "float-specials",
        _sig("x: float, y: float -> z: float"),
        {"x": math.nan, "y": -math.inf},
    ),
    (
        "list-of-str-input-numbered",
        _sig("passages: list[str] -> answer: list[str]"),
        {"passages": ["one", "two\nlines", "«quoted»"]},
    ),
    ("list-single-and-empty", _sig("a: list[str], b: list[str] -> c: str"), {"a": ["x"], "b": []}),
    ("list-into-str-field", _sig("context: str -> answer: str"), {"context": ["p1", "p2"]}),
    (
        "list-of-int",
        _sig("numbers: list[int] -> total: int"),
        {"numbers": [1, 2, 3]},
    ),
    (
        "dict",
        _sig("counts: dict[str, int] -> best: dict[str, list[int]]"),
        {"counts": {"a": 1, "é": 2}},
    ),
    (
        "literal",
        _sig("tone: Literal['calm', 'angry'] -> label: Literal['pos', 'neg', 'neutral']"),
        {"tone": "calm"},
    ),
    (
        "optional-given-none-and-missing",
        _sig("q: str, hint: optional[str], k: int | None -> answer: optional[int]"),
        {"q": "why?", "hint": None},
    ),
    ("no-inputs-given", _sig("q: str -> answer: str"), {}),
    (
        "described-fields",
        _sig("question: str 'the user question' -> answer: str 'short answer'"),
        {"question": "Who?"},
    ),
    (
        "pydantic-literal-enum-optional",
        Profile,
        {"person": PERSON, "style": "short", "notes": None},
    ),
    (
        "pydantic-given-as-dict",
        Profile,
        {"person": PERSON.model_dump(), "style": "long", "notes": "n"},
    ),
    (
        "chain-of-thought",
        dspy.ChainOfThought(_sig("question: str -> answer: str, score: int")).predict.signature,
        {"question": "What is 6 * 7?"},
    ),
    (
        "chain-of-thought-over-models",
        dspy.ChainOfThought(Profile).predict.signature,
        {"person": PERSON, "style": "long", "notes": "likes tea"},
    ),
]


@pytest.mark.parametrize(
    ("signature", "inputs"),
    [pytest.param(s, i, id=name) for name, s, i in FORMAT_CASES],
)
def test_messages_are_those_of_the_stock_chat_adapter(
    signature: type[dspy.Signature], inputs: dict[str, Any]
) -> None:
    expected = dspy.ChatAdapter().format(signature, [], inputs)
    fast = FastChatAdapter()
    assert fast.format(signature, [], inputs) == expected
    assert fast.format(signature, [], inputs) == expected  # from the per-class caches


def test_messages_with_demos_and_history_are_those_of_the_stock_chat_adapter() -> None:
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
    expected = dspy.ChatAdapter().format(sig, demos, inputs)
    fast = FastChatAdapter()
    for _ in range(2):
        assert fast.format(sig, demos, inputs) == expected
    plain = _sig("question: str -> answer: int")
    assert fast.format(plain, demos[:1], {"question": "q"}) == dspy.ChatAdapter().format(
        plain, demos[:1], {"question": "q"}
    )


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
    assert fast.format_system_message(sig) == stock.format_system_message(sig)
    assert fast.format_assistant_message_content(
        sig, outputs
    ) == stock.format_assistant_message_content(sig, outputs)
    for kwargs in ({}, {"main_request": True}, {"prefix": "P", "suffix": "S"}):
        assert fast.format_user_message_content(
            sig, {"person": PERSON, "style": "short"}, **kwargs
        ) == stock.format_user_message_content(sig, {"person": PERSON, "style": "short"}, **kwargs)


# --- values -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Opaque:
    def __str__(self) -> str:
        return "<opaque>"


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
    PERSON,
    Point(1, 2.0),
    Opaque(),
    [Opaque(), 1],
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_serialize_for_json_matches_dspy(value: Any) -> None:
    expected = stock_serialize_for_json(value)
    for _ in range(2):  # built, then from the per-type cache
        got = serialize_for_json(value)
        assert type(got) is type(expected)
        assert repr(got) == repr(expected)


def test_a_rebuilt_model_gets_a_new_type_adapter() -> None:
    class Box(BaseModel):
        size: int

    assert serialize_for_json(Box(size=1)) == {"size": 1}
    Box.model_rebuild(force=True)
    assert serialize_for_json(Box(size=2)) == stock_serialize_for_json(Box(size=2))


# --- parsing ------------------------------------------------------------------------------------

OPTIONALS = _sig("q: str -> answer: str, score: optional[int], tags: list[str] | None")

# (case id, DSPy signature, completion)
PARSE_TEXTS: list[tuple[str, type[dspy.Signature], str]] = [
    ("plain", OPTIONALS, "[[ ## answer ## ]]\nyes\n\n[[ ## score ## ]]\n3\n\n[[ ## tags ## ]]\n[]"),
    (
        "preamble-and-inline",
        OPTIONALS,
        "Sure!\n[[ ## answer ## ]] inline\nmore\n[[ ## score ## ]] 4",
    ),
    ("first-header-wins", OPTIONALS, "[[ ## answer ## ]]\none\n[[ ## answer ## ]]\ntwo"),
    (
        "indented-header",
        OPTIONALS,
        "   [[ ## answer ## ]]   \n  padded  \n\n[[ ## unknown ## ]]\nx",
    ),
    ("optional-missing", OPTIONALS, "[[ ## answer ## ]]\nonly the answer"),
    ("required-missing", OPTIONALS, "[[ ## score ## ]]\n3"),
    ("bad-int", OPTIONALS, "[[ ## answer ## ]]\na\n\n[[ ## score ## ]]\nthree"),
    ("empty", OPTIONALS, ""),
    (
        "literal-and-model",
        Profile,
        "[[ ## summary ## ]]\ns\n[[ ## friend ## ]]\n"
        '{"name": "B", "age": "41", "address": {"street": "s", "city": "c"}}\n'
        "[[ ## mood ## ]]\nSAD\n[[ ## kind ## ]]\nLiteral['child']",
    ),
    ("bad-literal", Profile, "[[ ## summary ## ]]\ns\n[[ ## kind ## ]]\nteen"),
    ("bad-model", Profile, "[[ ## friend ## ]]\n{not json"),
]


@pytest.mark.parametrize(
    ("signature", "completion"),
    [pytest.param(s, c, id=name) for name, s, c in PARSE_TEXTS],
)
def test_parse_matches_the_stock_chat_adapter(
    signature: type[dspy.Signature], completion: str
) -> None:
    def outcome(adapter: Any) -> Any:
        try:
            return adapter.parse(signature, completion)
        except Exception as exc:
            return (type(exc), str(exc), getattr(exc, "parsed_result", None))

    expected = outcome(dspy.ChatAdapter())
    fast = FastChatAdapter()
    assert outcome(fast) == expected
    assert outcome(fast) == expected


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


PARSE_CASES: list[tuple[str, type[dspy.Signature], dict[str, Any], str]] = [
    (
        "scalars",
        _sig("q: str -> total: int, ratio: float, ok: bool, note: str"),
        {"q": "go"},
        "[[ ## total ## ]]\n42\n\n[[ ## ratio ## ]]\n0.5\n\n[[ ## ok ## ]]\nTrue\n\n"
        "[[ ## note ## ]]\n  spaced text \n\n[[ ## completed ## ]]",
    ),
    (
        "lists-dicts-literal-optional",
        _sig(
            "q: str -> things: list[str], best: dict[str, int], label: Literal['a', 'b'], "
            "extra: optional[int]"
        ),
        {"q": "go"},
        '[[ ## things ## ]]\n["x", "y"]\n\n[[ ## best ## ]]\n{"a": 1}\n\n'
        "[[ ## label ## ]]\n'b'\n\n[[ ## completed ## ]]",
    ),
    (
        "models-enum",
        Profile,
        {"person": PERSON, "style": "short"},
        "[[ ## summary ## ]]\nAda lives in Paris.\n\n[[ ## friend ## ]]\n"
        '{"name": "Bob", "age": 40, "address": {"street": "2 Rue", "city": "Lyon"}}\n\n'
        "[[ ## mood ## ]]\nhappy\n\n[[ ## kind ## ]]\nadult\n\n[[ ## completed ## ]]",
    ),
    (
        "chain-of-thought",
        dspy.ChainOfThought(_sig("question: str -> answer: str")).predict.signature,
        {"question": "q"},
        "[[ ## reasoning ## ]]\nstep 1\nstep 2\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]",
    ),
]


@pytest.mark.parametrize(
    ("signature", "inputs", "answer"),
    [pytest.param(s, i, a, id=name) for name, s, i, a in PARSE_CASES],
)
async def test_a_call_sends_and_parses_as_the_stock_chat_adapter(
    signature: type[dspy.Signature], inputs: dict[str, Any], answer: str
) -> None:
    stock_lm, fast_lm = _raw_lm(answer), _raw_lm(answer, answer)
    expected = await dspy.ChatAdapter().acall(stock_lm, {}, signature, [], inputs)
    fast = FastChatAdapter()
    got = [await fast.acall(fast_lm, {}, signature, [], inputs) for _ in range(2)]
    assert got == [expected, expected]
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


def test_only_a_default_chat_adapter_is_replaced() -> None:
    assert is_default_chat_adapter(dspy.ChatAdapter())
    assert not is_default_chat_adapter(dspy.JSONAdapter())
    assert not is_default_chat_adapter(CountingChatAdapter())
    assert not is_default_chat_adapter(dspy.ChatAdapter(callbacks=[_Events()]))
    assert not is_default_chat_adapter(dspy.ChatAdapter(use_native_function_calling=True))
    assert not is_default_chat_adapter(dspy.ChatAdapter(parallel_tool_calls=False))
    assert not is_default_chat_adapter(dspy.ChatAdapter(native_response_types=[Citations]))
    patched = dspy.ChatAdapter()
    patched.format = lambda *args, **kwargs: []
    assert not is_default_chat_adapter(patched)
    backend = DspyBackend(lm=_raw_lm(), adapter=dspy.ChatAdapter())
    assert isinstance(backend._call_adapter(), FastChatAdapter)


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
