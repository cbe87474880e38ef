"""Deep health makes one live call per backend (kept for a minute); every level reports batches
whose driver died."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.runtime._support import make_runtime
from tests.store._clock import FakeClock
from tests.support import OpenAIServer, status

from dspex.actions.health import HealthContext, LiveCalls, health
from dspex.backends.base import Backend
from dspex.backends.mock import MockBackend
from dspex.backends.openai_backend import OpenAIBackend
from dspex.errors import AuthenticationError
from dspex.records import BatchStatus
from dspex.store import MemoryStore

KEY_ENV = "DSPEX_TEST_HEALTH_KEY"


class Ticks:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _revoked(request: Any) -> dict[str, Any]:
    raise AuthenticationError("invalid api key", status=401, backend="revoked")


async def _deep(backends: dict[str, Backend], live: LiveCalls) -> Any:
    ctx = HealthContext(store=MemoryStore(), backends=backends, live_calls=live)
    await ctx.store.initialize()
    return await health(ctx, "deep")


async def test_deep_health_calls_each_backend_once_and_reports_the_answer() -> None:
    backend = MockBackend("default")
    report = await _deep({"default": backend}, LiveCalls())
    check = report.check("backend:default")
    assert check.status == "healthy"
    assert check.details["live_call"]["ok"] is True
    assert check.details["live_call"]["cached"] is False
    assert backend.calls == 1


async def test_a_revoked_key_shows_as_unhealthy_with_its_error_code() -> None:
    backends: dict[str, Backend] = {
        "default": MockBackend("default"),
        "revoked": MockBackend("revoked", handler=_revoked),
    }
    report = await _deep(backends, LiveCalls())
    check = report.check("backend:revoked")
    assert check.status == "unhealthy"
    assert check.details["live_call"]["code"] == "backend_auth"
    assert "backend_auth" in check.reason
    assert report.status == "unhealthy"
    assert report.check("backend:default").status == "healthy"


async def test_a_live_result_is_reused_for_a_minute_then_asked_again() -> None:
    backend = MockBackend("default")
    ticks = Ticks()
    live = LiveCalls(clock=ticks)
    await _deep({"default": backend}, live)
    ticks.now += 59.0
    again = await _deep({"default": backend}, live)
    assert again.check("backend:default").details["live_call"]["cached"] is True
    assert backend.calls == 1
    ticks.now += 2.0
    later = await _deep({"default": backend}, live)
    assert later.check("backend:default").details["live_call"]["cached"] is False
    assert backend.calls == 2


async def test_concurrent_probes_of_one_backend_share_one_call() -> None:
    backend = MockBackend("default", latency_ms=20)
    live = LiveCalls()
    results = await asyncio.gather(*(live.get("default", backend) for _ in range(5)))
    assert backend.calls == 1
    assert all(call.ok for call, _ in results)


async def test_a_backend_that_does_not_answer_is_unhealthy_with_a_timeout() -> None:
    backend = MockBackend("stuck", hang_rate=1.0)
    report = await _deep({"stuck": backend}, LiveCalls(timeout=0.05))
    check = report.check("backend:stuck")
    assert check.status == "unhealthy"
    assert check.details["live_call"]["code"] == "timeout"


async def test_standard_and_comprehensive_health_make_no_live_call() -> None:
    backend = MockBackend("default")
    async with make_runtime(MemoryStore(), {"default": backend}) as rt:
        for level in ("standard", "comprehensive"):
            report = await rt.health(level)
            assert "live_call" not in report.check("backend:default").details
    assert backend.calls == 0


async def test_a_runtime_reuses_its_live_results_across_health_calls() -> None:
    backend = MockBackend("default")
    async with make_runtime(MemoryStore(), {"default": backend}) as rt:
        await rt.health("deep")
        report = await rt.health("deep")
    assert report.check("backend:default").details["live_call"]["cached"] is True
    assert backend.calls == 1


async def test_an_openai_endpoint_refusing_the_key_is_unhealthy_at_deep_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-revoked")
    with OpenAIServer() as server:
        server.script(status(401))
        backend = OpenAIBackend("remote", base_url=server.base_url, model="m", api_key_env=KEY_ENV)
        try:
            standard = await health(
                HealthContext(store=MemoryStore(), backends={"remote": backend}), "standard"
            )
            report = await _deep({"remote": backend}, LiveCalls())
        finally:
            await backend.aclose()
        assert len(server.requests) == 1  # standard made no request; deep made one
    assert standard.check("backend:remote").status == "healthy"  # the key is set
    check = report.check("backend:remote")
    assert check.status == "unhealthy"
    assert check.details["live_call"]["code"] == "backend_auth"


async def test_health_reports_a_batch_whose_driver_died() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    async with make_runtime(store) as rt:
        await store.put_program("qa", {"modules": ["answer"]}, "hash-1")
        batch = await store.create_batch("qa", 1, {"input": "in.jsonl"}, 2)
        await store.set_batch_status(batch.id, BatchStatus.RUNNING)
        fresh = await rt.health()
        assert fresh.check("batches").status == "healthy"
        clock.advance(3600)
        report = await rt.health()
    check = report.check("batches")
    assert check.status == "degraded"
    assert check.details["stalled_count"] == 1
    assert check.details["stalled"][0]["batch_id"] == batch.id
    assert check.details["stalled"][0]["missing"] == 2
    assert any("dspex cleanup" in advice for advice in report.recommendations)
