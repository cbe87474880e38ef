"""Crash tests: databases to point a ``dspex`` subprocess at, and SQL that ages leases."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from dspex.store import SqlStore
from dspex.store._engine import normalize_url
from dspex.store.tables import executions

# One module whose mock backend takes a minute: the run is reliably in flight when killed.
SLOW: dict[str, Any] = {
    "name": "slow",
    "signature": "question: str -> answer: str",
    "modules": {
        "answer": {
            "kind": "predict",
            "signature": "question: str -> answer: str",
            "config": {"mock_latency_ms": 60_000},
        }
    },
}


@asynccontextmanager
async def postgres_database(server_url: str) -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database (dropped afterwards); yields its URL."""
    name = f"dspex_crash_{uuid.uuid4().hex[:10]}"
    admin = server_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        async with SqlStore(url, auto_upgrade=True):
            pass
        yield url
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def age_leases(url: str, seconds: float = 3600.0) -> int:
    """Move the lease of every running execution ``seconds`` into the past (no sleeping)."""
    engine = create_async_engine(normalize_url(url))
    past = datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        async with engine.begin() as conn:
            stmt = (
                executions.update()
                .where(executions.c.status == "running")
                .values(lease_expires_at=past)
            )
            return (await conn.execute(stmt)).rowcount
    finally:
        await engine.dispose()


def spawn_run(cwd: Path, database_url: str, *args: str) -> subprocess.Popen[str]:
    """``dspex run slow -i question=…`` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["DSPEX_DATABASE_URL"] = database_url
    return subprocess.Popen(
        [sys.executable, "-m", "dspex", "run", "slow", "-i", "question=hello", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def wait_for(
    probe: Callable[[], Any], *, process: subprocess.Popen[str], limit: float = 60.0
) -> Any:
    """Poll ``probe`` (async) until it returns something truthy; the process must stay alive.

    This waits on another process, so it has to watch real time; it returns as soon as the
    condition holds.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"dspex run exited early ({process.returncode}): {err}{out}")
        await _pause()
    raise AssertionError("timed out waiting for the subprocess")


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)


__all__ = ["SLOW", "age_leases", "postgres_database", "spawn_run", "wait_for"]
