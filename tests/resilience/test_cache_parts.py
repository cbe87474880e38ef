"""The response cache's parts on their own: modes, keys and backend identities, what a store
failure does, and the wrapper an optimization uses."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from pydantic import BaseModel

from dspex.backends.base import PredictRequest, Usage
from dspex.backends.dspy_backend import DspyBackend
from dspex.backends.mock import MockBackend
from dspex.backends.openai_backend import OpenAIBackend
from dspex.backends.pricing import Price, PriceTable
from dspex.errors import StorageError, ValidationError
from dspex.resilience.cache import (
    CachingBackend,
    ResponseCache,
    backend_identity,
    check_mode,
    jsonable,
    request_key,
)
from dspex.resilience.coordinator import Coordinator
from dspex.resilience.ratelimit import rate_limited
from dspex.signatures.signature import Signature
from dspex.store import MemoryStore
from dspex.store.cache import CacheEntry

QA = Signature.parse("question: str -> answer: str")
SCORED = Signature.parse("question: str -> answer: str, confidence: probability")


def _request(signature: Signature = QA, question: str = "q", **changes: Any) -> PredictRequest:
    return PredictRequest(signature, {"question": question}, module="answer", **changes)


class _Colour(enum.Enum):
    RED = "red"


class _Point(BaseModel):
    x: int


class _Custom:
    """A backend-like object without ``cache_identity``."""

    name = "custom"


def test_check_mode_accepts_the_three_modes_and_none() -> None:
    assert [check_mode(m) for m in ("off", "read_only", "read_write", None)] == [
        "off",
        "read_only",
        "read_write",
        None,
    ]
    with pytest.raises(ValidationError) as caught:
        check_mode("write_only")
    assert caught.value.errors[0].field == "cache"


def test_jsonable_turns_models_enums_and_sets_into_json() -> None:
    assert jsonable(_Point(x=1)) == {"x": 1}
    assert jsonable(_Colour.RED) == "red"
    assert jsonable({3, 1, 2}) == [1, 2, 3]
    assert jsonable(b"raw") == "b'raw'"


def test_the_key_changes_with_every_part_of_the_request() -> None:
    identity = {"kind": "openai", "model": "m"}
    base = request_key(identity, _request())
    assert base == request_key(identity, _request())  # stable
    assert len(base) == 64
    different = [
        request_key({"kind": "openai", "model": "other"}, _request()),
        request_key(identity, _request(question="other")),
        request_key(identity, _request(SCORED)),
        request_key(identity, _request(kind="chain_of_thought")),
        request_key(identity, _request(config={"temperature": 0.5})),
        request_key(identity, _request(demos=({"question": "a", "answer": "b"},))),
    ]
    assert len({base, *different}) == 7
    # what does not reach the provider is not part of it
    assert request_key(identity, _request(timeout=5.0)) == base


def test_backend_identities_name_what_decides_the_request() -> None:
    openai = OpenAIBackend("a", base_url="http://h/v1", model="m", params={"temperature": 0})
    renamed = OpenAIBackend("b", base_url="http://h/v1", model="m", params={"temperature": 0})
    assert backend_identity(openai) == backend_identity(renamed)  # the name is not sent
    assert backend_identity(openai)["params"] == {"temperature": 0}
    # a rate limiter is transparent
    assert backend_identity(rate_limited(openai, 60, None)) == backend_identity(openai)
    dspy_backend = DspyBackend("d", model="openai/m", lm_kwargs={"temperature": 0.2})
    assert backend_identity(dspy_backend)["lm"] == {"temperature": 0.2}
    assert backend_identity(MockBackend("x", seed=3)) == {"kind": "mock", "name": "x", "seed": 3}
    group = Coordinator("g", [MockBackend("x"), MockBackend("y")])
    assert backend_identity(group) == {
        "group": [backend_identity(MockBackend("x")), backend_identity(MockBackend("y"))],
        "fallback": [],
    }

    assert backend_identity(_Custom()) == {"class": "_Custom", "name": "custom"}  # type: ignore[arg-type]


def test_the_mode_of_a_call_is_the_runs_then_the_modules_then_the_backends() -> None:
    cache = ResponseCache(MemoryStore(), mode="read_only", backend_modes={"b": "off"})
    assert cache.mode_for("b", "read_write", "read_only") == "read_only"
    assert cache.mode_for("b", "read_write", None) == "read_write"
    assert cache.mode_for("b", None, None, "read_write") == "off"
    assert cache.mode_for("other", None, None, "read_write") == "read_write"
    assert cache.mode_for("other", None, None) == "read_only"


async def test_a_stored_answer_is_found_with_its_cost_and_ttl() -> None:
    store = MemoryStore()
    prices = PriceTable({"m": Price(0.5, 1.0)})
    cache = ResponseCache(store, ttl=60.0, prices=prices)
    await cache.save(
        "k",
        program="p",
        module="answer",
        backend="b",
        outputs={"answer": _Point(x=1)},
        extras={"reasoning": "because"},
        usage={"m": Usage(2, 3)},
    )
    entry = await store.get_cached("k")
    assert entry is not None
    assert entry.model == "m"  # the one model of its usage
    assert entry.cost_usd == pytest.approx(2 * 0.5 + 3 * 1.0)
    assert entry.expires_at is not None
    assert entry.created_at is not None
    assert (entry.expires_at - entry.created_at).total_seconds() == pytest.approx(60.0, abs=1)
    found = await cache.lookup("k")
    assert found is not None
    assert found.result.outputs == {"answer": {"x": 1}}
    assert found.result.extras == {"reasoning": "because"}
    assert found.result.usage == {}
    assert found.cost_usd == pytest.approx(4.0)
    await cache.save("k2", program="p", module="m", backend="b", outputs={}, extras={}, usage={})
    never = await store.get_cached("k2")
    assert never is not None
    assert never.model == "b"  # no usage, no model: the backend's name
    assert ResponseCache(store, ttl=None).ttl is None


class _BrokenStore(MemoryStore):
    async def get_cached(self, key: str, now: Any = None) -> CacheEntry | None:
        raise StorageError("database is down")

    async def put_cached(self, entry: CacheEntry) -> None:
        raise StorageError("database is down")


async def test_a_store_failure_is_a_miss_and_an_unstored_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = ResponseCache(_BrokenStore())
    assert await cache.lookup("k") is None
    await cache.save("k", program="p", module="m", backend="b", outputs={}, extras={}, usage={})
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "response cache lookup failed, calling the backend",
        "response cache write failed, the answer is not cached",
    ]


class _Answers:
    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, request: PredictRequest) -> dict[str, Any]:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


async def test_the_wrapper_stores_only_answers_that_pass_the_signature() -> None:
    answers = _Answers({"answer": "a", "confidence": 3.0}, {"answer": "a", "confidence": 0.5})
    hits: list[None] = []
    cache = ResponseCache(MemoryStore())
    backend = CachingBackend(
        MockBackend("m", handler=answers),
        cache,
        program="p",
        mode_of=lambda module: "read_write",
        on_hit=lambda: hits.append(None),
    )
    bad = await backend.complete(_request(SCORED))
    assert bad.outputs["confidence"] == 3.0  # handed back for the caller to refuse
    assert (await cache.store.cache_stats()).entries == 0
    await backend.complete(_request(SCORED))
    hit = await backend.complete(_request(SCORED))
    assert answers.calls == 2
    assert hits == [None]
    assert hit.outputs == {"answer": "a", "confidence": 0.5}
    assert hit.usage == {}
    assert (await backend.health()).status == "healthy"
    await backend.aclose()
    assert "CachingBackend" in repr(backend)


async def test_the_wrapper_passes_calls_through_when_off_or_read_only() -> None:
    answers = _Answers({"answer": "a"})
    modes = {"answer": "off"}
    cache = ResponseCache(MemoryStore())
    backend = CachingBackend(
        MockBackend("m", handler=answers),
        cache,
        program="p",
        mode_of=lambda m: modes[m],  # type: ignore[arg-type,return-value]
    )
    await backend.complete(_request())
    modes["answer"] = "read_only"
    await backend.complete(_request())
    assert answers.calls == 2
    assert (await cache.store.cache_stats()).entries == 0
    modes["answer"] = "read_write"
    await backend.complete(_request())
    modes["answer"] = "read_only"
    answered = await backend.complete(_request())
    assert answers.calls == 3
    assert answered.outputs == {"answer": "a"}
