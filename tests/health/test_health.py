"""The health operation: every check, worst-of status, per-check timeouts, broken databases."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.runtime._support import QA, make_runtime, ready
from tests.store._clock import FakeClock

import dspex
from dspex.backends.base import BackendHealth, PredictRequest, PredictResult
from dspex.backends.mock import MockBackend
from dspex.records import BreakerRecord
from dspex.store import MemoryStore

STANDARD = [
    "database",
    "migrations",
    "tables",
    "backend:default",
    "breakers",
    "executions",
    "batches",
]


class HangingHealth(MockBackend):
    """A backend whose health() never answers."""

    async def health(self) -> BackendHealth:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class FailingHealth(MockBackend):
    async def health(self) -> BackendHealth:
        raise RuntimeError("provider exploded")

    async def complete(self, request: PredictRequest) -> PredictResult:
        return await super().complete(request)


async def test_a_fresh_runtime_is_healthy_at_every_standard_check() -> None:
    async with make_runtime(MemoryStore()) as rt:
        report = await rt.health()
    assert report.status == "healthy"
    assert report.exit_code == 0
    assert [c.name for c in report.checks] == [*STANDARD, "process"]
    assert all(c.reason == "" for c in report.checks)
    assert report.check("process").details["uptime_s"] >= 0


async def test_the_json_of_a_report_has_stable_keys() -> None:
    async with make_runtime(MemoryStore()) as rt:
        data = json.loads((await rt.health()).model_dump_json())
    assert set(data) == {
        "status", "level", "checks", "duration_ms", "recommendations", "checked_at",
    }  # fmt: skip
    assert set(data["checks"][0]) == {"name", "status", "duration_ms", "details", "reason"}


async def test_an_expired_lease_degrades_and_recommends_cleanup() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    async with make_runtime(store) as rt:
        await ready(rt, QA)
        await store.start_execution("qa", 1, {}, worker_id="dead", lease_seconds=30)
        clock.advance(60)
        report = await rt.health()
    check = report.check("executions")
    assert (report.status, check.status, check.details["expired"]) == ("degraded", "degraded", 1)
    assert any("dspex cleanup" in r for r in report.recommendations)


async def test_an_open_breaker_degrades_its_backend() -> None:
    store = MemoryStore()
    async with make_runtime(store) as rt:
        await store.save_breaker(BreakerRecord(backend="default", state="open"))
        report = await rt.health()
    assert report.check("backend:default").status == "degraded"
    assert report.check("backend:default").details["breaker"] == "open"
    assert report.check("breakers").status == "degraded"
    assert report.exit_code == 1


@pytest.mark.looptime
async def test_a_hanging_check_times_out_alone_as_unhealthy() -> None:
    async with make_runtime(MemoryStore(), {"default": HangingHealth("default")}) as rt:
        report = await rt.health(timeout=1.5)
    check = report.check("backend:default")
    assert check.status == "unhealthy"
    assert "1.5s" in check.reason
    assert report.check("database").status == "healthy"
    assert report.status == "unhealthy"
    assert report.exit_code == 2


async def test_a_check_that_raises_is_reported_not_raised() -> None:
    async with make_runtime(MemoryStore(), {"default": FailingHealth("default")}) as rt:
        report = await rt.health()
    assert report.check("backend:default").reason == "RuntimeError: provider exploded"


async def test_a_closed_store_is_unhealthy_with_a_reason() -> None:
    store = MemoryStore()
    rt = make_runtime(store)
    await store.close()
    report = await rt.health()
    assert report.check("database").status == "unhealthy"
    assert report.check("database").reason == "the store is closed"
    await rt.aclose()


async def test_an_unreachable_postgres_server_is_unhealthy_quickly() -> None:
    rt = dspex.Runtime.open("postgresql://postgres@127.0.0.1:1/nothing")
    try:
        report = await asyncio.wait_for(rt.health(timeout=5), 20)
    finally:
        await rt.aclose()
    assert report.status == "unhealthy"
    assert "Connect call failed" in report.check("database").reason
    assert report.check("backend:default").status == "healthy"


async def test_a_corrupt_sqlite_file_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "dspex.db"
    path.write_bytes(b"this is not a database" * 100)
    rt = dspex.Runtime.open(f"sqlite:///{path}", cwd=tmp_path)
    try:
        report = await rt.health()
    finally:
        await rt.aclose()
    assert report.check("database").status == "unhealthy"
    assert "not a database" in report.check("database").reason


async def test_an_unmigrated_database_recommends_db_upgrade(tmp_path: Path) -> None:
    rt = dspex.Runtime.open(f"sqlite:///{tmp_path / 'empty.db'}", cwd=tmp_path)
    try:
        report = await rt.health()
    finally:
        await rt.aclose()
    assert report.check("migrations").status == "unhealthy"
    assert report.check("migrations").details == {"revision": None, "current": False}
    assert any("dspex db upgrade" in r for r in report.recommendations)


async def test_unknown_levels_and_bad_timeouts_are_rejected() -> None:
    async with make_runtime(MemoryStore()) as rt:
        with pytest.raises(dspex.ValidationError):
            await rt.health("thorough")
        with pytest.raises(dspex.ValidationError):
            await rt.health(timeout=0)


async def test_the_sql_stores_are_healthy(sql_runtime: dspex.Runtime) -> None:
    report = await sql_runtime.health()
    assert report.status == "healthy", report
    assert report.check("database").details["latency_ms"] >= 0
    assert report.check("migrations").details["current"] is True
