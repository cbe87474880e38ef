"""Real ``dspex run`` processes killed mid-run, against SQLite and the PostgreSQL server.

SIGKILL: the execution stays ``running`` while its lease is live; once the lease has expired
(aged with SQL, not by sleeping) cleanup fails it as ``lease_expired``. SIGTERM: the run is
cancelled and recorded ``cancelled``; nothing is left running.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.crash._support import SLOW, age_leases, postgres_database, spawn_run, wait_for

import dspex
from dspex.records import ExecutionRecord, ExecutionStatus
from dspex.store import open_store

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database holding the ready program ``slow``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dspex.db'}"
        await _register(url, tmp_path)
        yield url
        return
    async with postgres_database(request.getfixturevalue("postgres_url")) as url:
        await _register(url, tmp_path)
        yield url


async def _register(url: str, cwd: Path) -> None:
    async with dspex.Runtime.open(url, cwd=cwd) as rt:
        await rt.register(SLOW)
        info = await rt.initialize("slow")
        assert info.status == "ready", info.error


async def _running(url: str) -> ExecutionRecord | None:
    async with open_store(url) as store:
        page = await store.list_executions()
        return next((r for r in page.items if r.status is ExecutionStatus.RUNNING), None)


async def _only_execution(url: str) -> ExecutionRecord:
    async with open_store(url) as store:
        page = await store.list_executions()
    assert len(page.items) == 1
    return page.items[0]


async def test_a_killed_run_stays_running_until_its_lease_expires_then_cleanup_fails_it(
    database: str, tmp_path: Path
) -> None:
    process = spawn_run(tmp_path, database)
    try:
        running = await wait_for(lambda: _running(database), process=process)
    finally:
        process.kill()
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL

    async with dspex.Runtime.open(database, cwd=tmp_path) as rt:
        early = await rt.cleanup()
        assert early.total == 0
        assert (await rt.get_execution(running.id)).status == "running"

        assert await age_leases(database) == 1
        report = await rt.cleanup()
        assert report.lease_expired.ids == [running.id]
        detail = await rt.get_execution(running.id)
    assert detail.status == "failed"
    assert detail.error is not None
    assert detail.error.code == "lease_expired"


async def test_a_terminated_run_is_recorded_cancelled_and_nothing_is_left_running(
    database: str, tmp_path: Path
) -> None:
    process = spawn_run(tmp_path, database, "--json")
    try:
        running = await wait_for(lambda: _running(database), process=process)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, err
    assert json.loads(out)["error"]["code"] == "cancelled"
    assert "Traceback" not in err

    record = await _only_execution(database)
    assert record.id == running.id
    assert record.status is ExecutionStatus.CANCELLED
    assert record.lease_token is None
    async with open_store(database) as store:
        assert (await store.open_executions()).running == 0


async def test_a_zombie_worker_cannot_overwrite_an_execution_the_reaper_took_back(
    database: str, tmp_path: Path
) -> None:
    process = spawn_run(tmp_path, database)
    try:
        running = await wait_for(lambda: _running(database), process=process)
    finally:
        process.kill()
        process.communicate(timeout=30)
    await age_leases(database)
    async with open_store(database) as store:
        await store.reap_expired_leases()
        with pytest.raises(dspex.DspexError) as lost:
            await store.finish_execution(
                running.id, running.lease_token or "", ExecutionStatus.COMPLETED, outputs={}
            )
        assert lost.value.code == "lease_lost"
        after = await store.get_execution(running.id)
    assert after.status is ExecutionStatus.FAILED
    assert after.outputs is None
