"""The response cache through the runtime, on every store: what is stored (validated answers
only), which mode applies (run, module, backend, operation default), what a hit records, TTL,
and stats and clearing.

The backend is a mock whose handler counts its calls and answers what the test scripts, so a hit
is proven by the call count not moving.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.runtime._support import QA, changed, ready
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.config import BackendConfig, CacheSettings, PriceConfig, Settings
from dspex.errors import ValidationError
from dspex.runtime import Runtime
from dspex.store.cache import CacheEntry
from dspex.telemetry import Telemetry

PROMPT_PRICE = 0.001
COMPLETION_PRICE = 0.002

SCORED: dict[str, Any] = {
    "name": "scored",
    "signature": "question: str -> answer: str, confidence: probability",
    "modules": {
        "answer": {
            "kind": "predict",
            "signature": "question: str -> answer: str, confidence: probability",
        }
    },
}


class Scripted:
    """A mock handler: answers ``answers`` in turn (the last one from then on), counting calls."""

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers) or [{"answer": "Paris"}]
        self.requests: list[PredictRequest] = []

    def __call__(self, request: PredictRequest) -> dict[str, Any]:
        self.requests.append(request)
        index = min(len(self.requests), len(self.answers)) - 1
        return dict(self.answers[index])

    @property
    def calls(self) -> int:
        return len(self.requests)


def _settings(*, mode: str = "off", ttl: str = "7d", backend_mode: str | None = None) -> Settings:
    return Settings(
        resources={"lm_slots": 2},
        backends={"default": BackendConfig(kind="mock", cache=backend_mode)},  # type: ignore[arg-type]
        cache=CacheSettings(mode=mode, ttl=ttl),  # type: ignore[arg-type]
        prices={
            "mock": PriceConfig(
                input_cost_per_token=PROMPT_PRICE, output_cost_per_token=COMPLETION_PRICE
            )
        },
    )


def _runtime(
    store: Any, handler: Scripted | MockBackend, settings: Settings | None = None
) -> Runtime:
    backend = (
        handler if isinstance(handler, MockBackend) else MockBackend("default", handler=handler)
    )
    return Runtime(
        settings or _settings(),
        store,
        backends={"default": backend},
        worker_id="worker-1",
        telemetry=Telemetry(spans=False),
    )


@pytest.fixture
def handler() -> Scripted:
    return Scripted()


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    async with open_kind(request.param, request, clock) as opened:
        yield opened


@pytest.fixture
async def rt(store: Any, handler: Scripted) -> AsyncIterator[Runtime]:
    async with _runtime(store, handler) as runtime:
        await ready(runtime)
        yield runtime


async def test_without_a_mode_nothing_is_cached(rt: Runtime, handler: Scripted) -> None:
    first = await rt.execute("qa", {"question": "capital of France?"})
    second = await rt.execute("qa", {"question": "capital of France?"})
    assert handler.calls == 2
    assert not first.steps[0].cache_hit
    assert not second.steps[0].cache_hit
    assert (await rt.cache_stats()).entries == 0


async def test_a_repeated_request_is_answered_from_the_cache(
    rt: Runtime, handler: Scripted
) -> None:
    first = await rt.execute("qa", {"question": "capital of France?"}, cache="read_write")
    second = await rt.execute("qa", {"question": "capital of France?"}, cache="read_write")
    assert handler.calls == 1
    assert second.ok
    assert second.outputs == first.outputs == {"answer": "Paris"}
    step = second.steps[0]
    assert step.cache_hit
    assert step.attempts == 0
    assert step.usage == {}
    assert step.cost_usd == 0.0
    assert step.cost_saved_usd == pytest.approx(first.steps[0].cost_usd)
    assert first.steps[0].cost_usd > 0
    assert second.cost_usd == 0.0


async def test_a_hit_is_recorded_on_its_step(rt: Runtime) -> None:
    first = await rt.execute("qa", {"question": "q"}, cache="read_write")
    second = await rt.execute("qa", {"question": "q"}, cache="read_write")
    detail = await rt.get_execution(second.execution_id)
    assert detail.steps[0].cache_hit
    assert detail.steps[0].cost_saved_usd == pytest.approx(first.steps[0].cost_usd)
    assert detail.attempt_records == []  # no backend call was made
    missed = await rt.get_execution(first.execution_id)
    assert not missed.steps[0].cache_hit
    assert missed.steps[0].cost_saved_usd == 0.0


async def test_different_inputs_are_different_requests(rt: Runtime, handler: Scripted) -> None:
    await rt.execute("qa", {"question": "one"}, cache="read_write")
    other = await rt.execute("qa", {"question": "two"}, cache="read_write")
    assert handler.calls == 2
    assert not other.steps[0].cache_hit
    assert (await rt.cache_stats()).entries == 2


async def test_a_module_config_change_is_a_different_request(
    rt: Runtime, handler: Scripted
) -> None:
    await rt.execute("qa", {"question": "q"}, cache="read_write")
    spec = changed(QA)
    spec["modules"]["answer"]["config"] = {"temperature": 0.7}
    await ready(rt, spec)  # version 2 is now the one that runs
    result = await rt.execute("qa", {"question": "q"}, cache="read_write")
    assert handler.calls == 2
    assert not result.steps[0].cache_hit


async def test_an_answer_that_breaks_the_contract_is_never_stored(store: Any) -> None:
    handler = Scripted(
        {"answer": "Paris", "confidence": 7.0}, {"answer": "Paris", "confidence": 0.9}
    )
    async with _runtime(store, handler) as rt:
        await ready(rt, SCORED)
        bad = await rt.execute("scored", {"question": "q"}, cache="read_write")
        assert not bad.ok
        assert (await rt.cache_stats()).entries == 0
        good = await rt.execute("scored", {"question": "q"}, cache="read_write")
        assert good.ok
        assert not good.steps[0].cache_hit
        again = await rt.execute("scored", {"question": "q"}, cache="read_write")
        assert again.steps[0].cache_hit
        assert again.outputs == {"answer": "Paris", "confidence": 0.9}
        assert handler.calls == 2


async def test_read_only_answers_from_the_cache_but_stores_nothing(
    rt: Runtime, handler: Scripted
) -> None:
    await rt.execute("qa", {"question": "new"}, cache="read_only")
    await rt.execute("qa", {"question": "new"}, cache="read_only")
    assert handler.calls == 2
    assert (await rt.cache_stats()).entries == 0
    await rt.execute("qa", {"question": "new"}, cache="read_write")
    hit = await rt.execute("qa", {"question": "new"}, cache="read_only")
    assert hit.steps[0].cache_hit
    assert handler.calls == 3


async def test_the_backends_mode_applies_when_the_run_names_none(store: Any) -> None:
    handler = Scripted()
    async with _runtime(store, handler, _settings(backend_mode="read_write")) as rt:
        await ready(rt)
        await rt.execute("qa", {"question": "q"})
        hit = await rt.execute("qa", {"question": "q"})
        assert hit.steps[0].cache_hit
        assert handler.calls == 1
        # the run's own mode wins over the backend's
        await rt.execute("qa", {"question": "q"}, cache="off")
        assert handler.calls == 2


async def test_a_modules_mode_wins_over_its_backends(store: Any) -> None:
    handler = Scripted()
    async with _runtime(store, handler, _settings(backend_mode="read_write")) as rt:
        spec = changed(QA)
        spec["modules"]["answer"]["cache"] = "off"
        await ready(rt, spec)
        await rt.execute("qa", {"question": "q"})
        await rt.execute("qa", {"question": "q"})
        assert handler.calls == 2
        # and the run's mode wins over the module's
        await rt.execute("qa", {"question": "q"}, cache="read_write")
        hit = await rt.execute("qa", {"question": "q"}, cache="read_write")
        assert hit.steps[0].cache_hit
        assert handler.calls == 3


async def test_the_configured_mode_is_the_default_of_a_run(store: Any) -> None:
    handler = Scripted()
    async with _runtime(store, handler, _settings(mode="read_write")) as rt:
        await ready(rt)
        await rt.execute("qa", {"question": "q"})
        assert (await rt.execute("qa", {"question": "q"})).steps[0].cache_hit
        assert handler.calls == 1


async def test_an_expired_entry_answers_no_more_and_cleanup_purges_it(
    store: Any, clock: FakeClock
) -> None:
    handler = Scripted()
    async with _runtime(store, handler, _settings(ttl="1h")) as rt:
        await ready(rt)
        await rt.execute("qa", {"question": "q"}, cache="read_write")
        clock.advance(3601)
        stats = await rt.cache_stats()
        assert (stats.entries, stats.expired) == (1, 1)
        report = await rt.cleanup(dry_run=True)
        assert report.cache_expired.count == 1
        again = await rt.execute("qa", {"question": "q"}, cache="read_only")
        assert not again.steps[0].cache_hit
        assert handler.calls == 2
        report = await rt.cleanup()
        assert report.cache_expired.count == 1
        assert (await rt.cache_stats()).entries == 0


async def test_chain_of_thought_keeps_its_reasoning_on_a_hit(store: Any) -> None:
    backend = MockBackend("default")  # the plain mock: it adds an undeclared reasoning
    async with _runtime(store, backend, _settings(mode="read_write")) as rt:
        spec = changed(QA, signature="question: str -> answer: str, reasoning: str")
        spec["modules"]["answer"]["kind"] = "chain_of_thought"
        spec["outputs"] = {"answer": "answer.answer", "reasoning": "answer.reasoning"}
        await ready(rt, spec)
        first = await rt.execute("qa", {"question": "why?"})
        second = await rt.execute("qa", {"question": "why?"})
        assert backend.calls == 1
        assert second.steps[0].cache_hit
        assert second.outputs == first.outputs
        assert "reasoning" in second.outputs


async def test_stats_count_hits_and_clear_deletes_by_program(rt: Runtime) -> None:
    await rt.execute("qa", {"question": "a"}, cache="read_write")
    await rt.execute("qa", {"question": "a"}, cache="read_write")
    await rt.execute("qa", {"question": "a"}, cache="read_write")
    stats = await rt.cache_stats()
    assert (stats.entries, stats.hits) == (1, 2)
    assert stats.cost_saved_usd > 0
    assert [m.model for m in stats.by_model] == ["mock"]
    assert (await rt.cache_stats(program="other")).entries == 0
    assert (await rt.clear_cache(program="other")).deleted == 0
    assert (await rt.clear_cache(dry_run=True)).deleted == 1
    assert (await rt.clear_cache(older_than=3600)).deleted == 0
    assert (await rt.clear_cache(program="qa")).deleted == 1
    assert (await rt.cache_stats()).entries == 0


async def test_a_bad_mode_or_age_is_a_validation_error(rt: Runtime) -> None:
    with pytest.raises(ValidationError, match="unknown cache mode"):
        await rt.execute("qa", {"question": "q"}, cache="sometimes")
    with pytest.raises(ValidationError, match="older_than"):
        await rt.clear_cache(older_than=-1)
    with pytest.raises(ValidationError):
        await rt.run_batch("qa", [{"question": "q"}], cache="sometimes")


async def test_a_batch_uses_the_cache_it_is_given(rt: Runtime, handler: Scripted) -> None:
    items = [{"question": f"q{i % 3}"} for i in range(6)]
    first = await rt.run_batch("qa", items, max_concurrency=1, cache="read_write")
    assert first.ok
    assert handler.calls == 3
    second = await rt.run_batch("qa", items, max_concurrency=4, cache="read_only")
    assert second.ok
    assert handler.calls == 3


async def test_evaluate_reads_and_writes_the_cache_by_default(
    rt: Runtime, handler: Scripted, tmp_path: Path
) -> None:
    devset = tmp_path / "dev.jsonl"
    devset.write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": "Paris"}) + "\n" for i in range(4))
    )
    first = await rt.evaluate("qa", devset, metric="exact_match")
    assert handler.calls == 4
    second = await rt.evaluate("qa", devset, metric="exact_match")
    assert handler.calls == 4
    assert first.score == second.score == 1.0
    third = await rt.evaluate("qa", devset, metric="exact_match", cache="off")
    assert handler.calls == 8
    assert third.score == 1.0


async def test_a_stored_answer_that_no_longer_passes_is_asked_again(
    rt: Runtime, handler: Scripted
) -> None:
    program = await rt.load_program("qa")
    request = PredictRequest(program.module_signature("answer"), {"question": "q"}, module="answer")
    key = rt.cache.key(rt.engine.backends["default"], request)
    await rt.store.put_cached(
        CacheEntry(key, "qa", "answer", "default", "mock", {"outputs": {"answer": 42}})
    )
    result = await rt.execute("qa", {"question": "q"}, cache="read_write")
    assert result.ok
    assert not result.steps[0].cache_hit
    assert handler.calls == 1
    assert result.outputs == {"answer": "Paris"}
    assert (await rt.execute("qa", {"question": "q"}, cache="read_only")).steps[0].cache_hit


async def test_a_resource_aware_run_uses_the_cache_too(rt: Runtime, handler: Scripted) -> None:
    spec = changed(QA, strategy="resource_aware")
    spec["modules"]["answer"]["resources"] = {"lm_slots": 1}
    await ready(rt, spec)
    await rt.execute("qa", {"question": "q"}, cache="read_write")
    hit = await rt.execute("qa", {"question": "q"}, cache="read_write")
    assert hit.steps[0].cache_hit
    assert handler.calls == 1
