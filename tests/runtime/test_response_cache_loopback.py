"""The response cache shared through the database by separate processes, against the loopback
OpenAI-compatible server: its request log proves that a process answered from the cache sent
nothing.

Each ``dspex`` command runs in its own process (``python -m dspex``), on a SQLite file and on a
PostgreSQL database of its own; the test process then reads the same entries through Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.crash._support import postgres_database
from tests.support.openai_server import OpenAIServer

import dspex
from dspex.store import open_store

pytestmark = pytest.mark.slow  # each command is a fresh process

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database: a SQLite file, or a fresh PostgreSQL database of its own."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dspex.db'}"
        async with open_store(url, auto_upgrade=True):
            pass
        yield url
        return
    async with postgres_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
async def workdir(tmp_path: Path, server: OpenAIServer, database: str) -> Path:
    """A directory with a ``dspex.toml`` naming the loopback server (with a price, so a hit
    has a cost to save) and the ``qa`` program registered and ready."""
    (tmp_path / "dspex.toml").write_text(
        f'[backends.default]\nkind = "openai"\nbase_url = "{server.base_url}"\n'
        'model = "loopback-model"\n\n'
        '[prices."loopback-model"]\n'
        "input_cost_per_token = 0.000001\noutput_cost_per_token = 0.000002\n"
    )
    async with dspex.Runtime.open(database, cwd=tmp_path) as rt:
        await rt.register(QA)
        await rt.initialize("qa")
    return tmp_path


def dspex_process(cwd: Path, database: str, *args: str) -> dict[str, Any]:
    """Run ``dspex ARGS --json`` in a fresh process; its JSON output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["DSPEX_DATABASE_URL"] = database
    done = subprocess.run(
        [sys.executable, "-m", "dspex", *args, "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_a_second_process_is_answered_from_the_cache_and_sends_nothing(
    workdir: Path, database: str, server: OpenAIServer
) -> None:
    ask = ("run", "qa", "-i", "question=What is DSPy?", "--cache", "read_write")
    first = dspex_process(workdir, database, *ask)
    assert server.request_count == 1
    assert first["steps"][0]["cache_hit"] is False
    assert first["steps"][0]["cost_usd"] > 0

    second = dspex_process(workdir, database, *ask)
    assert server.request_count == 1  # the second process sent nothing
    assert second["status"] == "completed"
    assert second["outputs"] == first["outputs"]
    assert second["steps"][0]["cache_hit"] is True
    assert second["steps"][0]["attempts"] == 0
    assert second["steps"][0]["cost_saved_usd"] == pytest.approx(first["steps"][0]["cost_usd"])

    # this process, through Python, reads the same entry
    async with dspex.Runtime.open(database, cwd=workdir) as rt:
        third = await rt.execute("qa", {"question": "What is DSPy?"}, cache="read_only")
        assert third.steps[0].cache_hit
        assert dict(third.outputs) == first["outputs"]
        stats = await rt.cache_stats()
    assert server.request_count == 1
    assert (stats.entries, stats.hits) == (1, 2)

    shown = dspex_process(workdir, database, "executions", "show", second["execution_id"])
    assert shown["steps"][0]["cache_hit"] is True
    listed = dspex_process(workdir, database, "cache", "stats")
    assert listed["entries"] == 1
    assert listed["hits"] == 2
    assert listed["by_model"] == [
        {"model": "loopback-model", "entries": 1, "size_bytes": stats.size_bytes}
    ]


async def test_without_the_cache_each_process_calls_the_server(
    workdir: Path, database: str, server: OpenAIServer
) -> None:
    ask = ("run", "qa", "-i", "question=What is DSPy?")
    dspex_process(workdir, database, *ask)
    again = dspex_process(workdir, database, *ask)
    assert server.request_count == 2
    assert again["steps"][0]["cache_hit"] is False


async def test_a_batch_in_one_process_fills_the_cache_for_a_batch_in_another(
    workdir: Path, database: str, server: OpenAIServer
) -> None:
    lines = [json.dumps({"question": f"question {i}"}) for i in range(5)]
    (workdir / "items.jsonl").write_text("\n".join(lines) + "\n")
    first = dspex_process(workdir, database, "batch", "qa", "items.jsonl", "--cache", "read_write")
    assert first["stats"]["completed"] == 5
    assert server.request_count == 5
    # the second batch runs its items in two worker processes of its own
    second = dspex_process(
        workdir, database, "batch", "qa", "items.jsonl", "--cache", "read_only", "--workers", "2"
    )
    assert second["stats"]["completed"] == 5
    assert server.request_count == 5
    cleared = dspex_process(workdir, database, "cache", "clear", "--program", "qa")
    assert cleared["deleted"] == 5
    dspex_process(workdir, database, "batch", "qa", "items.jsonl", "--cache", "read_only")
    assert server.request_count == 10
