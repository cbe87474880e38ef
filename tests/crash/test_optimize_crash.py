"""Optimization runs under crashes: a real ``dspex optimize`` process killed with SIGKILL in the
middle of a ``bootstrap_random_search``, on SQLite and PostgreSQL, then resumed by its id.

The killed run stays ``running`` in the database, so it is told apart by its lease: while the
lease is live it is shown ``running``; once it expired (aged with SQL, not by sleeping) it is
shown ``interrupted`` and ``dspex optimize --resume ID`` takes it up: the baseline and the
candidates scored before the kill are not run again, and the version it writes is the one an
uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from tests.crash._support import postgres_database, wait_for
from tests.support.openai_server import OpenAIServer, chat_adapter_content

import dspex
from dspex.store import open_store
from dspex.store._engine import normalize_url
from dspex.store.tables import optimizations

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}
ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
KEY_ENV = "DSPEX_TEST_CRASH_KEY"
# The baseline (8 program calls) and the zero-shot and labelled-only candidates (8 each) are
# scored before the first bootstrapping call: the gate holds every later call.
BEFORE_GATE = 24
_QUESTION = re.compile(r"\[\[ ## question ## \]\]\s*(\S+)")


class GatedLM:
    """The loopback LM's answers (right for even questions, wrong for odd ones) that, once
    armed, hold every call after the first ``limit`` until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.limit: int | None = None
        self.released = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> str:
        with self._lock:
            self.calls += 1
            held = self.limit is not None and self.calls > self.limit
        if held:
            self.released.wait(60)
        user = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
        match = _QUESTION.search(user)
        question = match.group(1) if match else ""
        number = int(question[1:]) if question[1:].isdigit() else 1
        return chat_adapter_content({"answer": f"a{number}" if number % 2 == 0 else "wrong"})


@pytest.fixture
def lm(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[GatedLM, OpenAIServer]]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    gated = GatedLM()
    with OpenAIServer(gated) as server:
        yield gated, server
        gated.released.set()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dspex.db'}"
        async with open_store(url, auto_upgrade=True):
            pass
        yield url
        return
    async with postgres_database(request.getfixturevalue("postgres_url")) as url:
        yield url


def _workdir(path: Path, server: OpenAIServer) -> Path:
    path.mkdir()
    (path / "dspex.toml").write_text(
        "lease_seconds = 2.0\n"
        "[backends.default]\n"
        'kind = "dspy"\n'
        'model = "openai/loopback"\n'
        f'api_base = "{server.base_url}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
        "[optimize]\n"
        "num_candidates = 2\n",
        encoding="utf-8",
    )
    (path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _spawn(cwd: Path, url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_") or k == KEY_ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "dspex", "optimize", *args, "--database-url", url, "--json"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def _show(cwd: Path, url: str, optimization_id: str) -> str:
    """``dspex optimizations show ID`` for people: its output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dspex", "optimizations", "show", optimization_id],
        cwd=cwd,
        env={**os.environ, "DSPEX_DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


START = ("qa", "train.jsonl", "--metric", "exact_match")
SEARCH = ("--optimizer", "bootstrap_random_search", "--max-demos", "2", "--seed", "3")


async def _age_lease(url: str) -> None:
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            past = datetime.now(UTC) - timedelta(hours=1)
            await conn.execute(optimizations.update().values(lease_expires_at=past))
    finally:
        await engine.dispose()


async def test_a_killed_optimization_is_shown_interrupted_and_resumes_where_it_stopped(
    database: str, lm: tuple[GatedLM, OpenAIServer], tmp_path: Path
) -> None:
    gated, server = lm
    cwd = _workdir(tmp_path / "work", server)
    async with dspex.Runtime.open(database, cwd=cwd) as rt:
        await rt.register(QA)

    # the run nobody interrupts, on a database of its own: what the resumed run must match
    reference_cwd = _workdir(tmp_path / "reference", server)
    reference_url = f"sqlite:///{reference_cwd / 'reference.db'}"
    async with dspex.Runtime.open(reference_url, cwd=reference_cwd) as rt:
        await rt.register(QA)
    whole = _finish(_spawn(reference_cwd, reference_url, *START, *SEARCH))
    async with dspex.Runtime.open(reference_url, cwd=reference_cwd) as rt:
        expected = (await rt.load_program("qa", whole["version"])).to_dict()["modules"]
    total_calls = whole["stats"]["lm_calls"]
    assert total_calls == gated.calls > BEFORE_GATE

    gated.calls, gated.limit = 0, BEFORE_GATE
    process = _spawn(cwd, database, *START, *SEARCH)
    try:
        async with dspex.Runtime.open(database, cwd=cwd) as rt:

            async def stuck_after_two_candidates() -> Any:
                runs = await rt.list_optimizations()
                if not runs or gated.calls <= BEFORE_GATE:
                    return None
                run = await rt.get_optimization(runs[0].optimization_id)
                return run if len(run.trials) == 3 else None

            run = await wait_for(stuck_after_two_candidates, process=process)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            assert process.returncode == -signal.SIGKILL

            killed = await rt.get_optimization(run.optimization_id)
            # its lease (2 s) may still be live: then it is running, else interrupted
            assert killed.status in ("running", "interrupted")
            assert [t.detail.get("seed") for t in killed.trials] == [None, -3, -2]
            await _age_lease(database)
            lost = await rt.get_optimization(run.optimization_id)
            assert (lost.status, lost.resumable) == ("interrupted", True)
            assert lost.error is not None
            assert "stopped renewing its lease" in lost.error
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        gated.released.set()

    shown = _show(cwd, database, run.optimization_id)
    assert f"dspex optimize --resume {run.optimization_id}" in shown

    gated.calls, gated.limit = 0, None
    resumed = _finish(_spawn(cwd, database, "--resume", run.optimization_id))
    assert (resumed["optimization_id"], resumed["status"], resumed["attempts"]) == (
        run.optimization_id,
        "completed",
        2,
    )
    assert (resumed["seed"], resumed["settings"]) == (whole["seed"], whole["settings"])
    assert (resumed["baseline_score"], resumed["score"]) == (
        whole["baseline_score"],
        whole["score"],
    )
    # the baseline and the two candidates recorded before the kill were not scored again
    assert gated.calls == total_calls - BEFORE_GATE
    seeds = [
        t["detail"].get("seed") for t in resumed["trials"] if t["detail"].get("seed") is not None
    ]
    assert seeds == [-3, -2, -1, 0, 1]
    async with dspex.Runtime.open(database, cwd=cwd) as rt:
        modules = (await rt.load_program("qa", resumed["version"])).to_dict()["modules"]
    assert modules == expected
