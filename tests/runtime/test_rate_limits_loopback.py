"""``rpm`` on a backend, measured by the loopback server's request log.

``rpm = 600`` is 10 requests a second with a burst of one second's worth (10), so the limiter
lets at most 18 requests start in any 0.8 s, however many executions, batch items or worker
processes share the limit. The server counts at most 20 in any 0.8 s of its log: two requests of
slack for the time between a request's turn and its arrival, which a busy machine stretches.
Without the limit, the 40 requests of these tests arrive within a fraction of a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.support.openai_server import OpenAIServer

from dspex.runtime import Runtime

RPM = 600
WINDOW_S = 0.8
MOST_IN_A_WINDOW = RPM // 60 + int(RPM / 60 * WINDOW_S) + 2
QA = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def _config(server: OpenAIServer) -> str:
    return (
        f'[backends.default]\nkind = "openai"\nbase_url = "{server.base_url}"\n'
        f'model = "loopback-model"\nrpm = {RPM}\n'
    )


def _busiest_window(server: OpenAIServer) -> int:
    """The most requests the server received within any :data:`WINDOW_S` seconds."""
    times = sorted(r.received_at for r in server.requests)
    return max(sum(1 for t in times[i:] if t < start + WINDOW_S) for i, start in enumerate(times))


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
async def runtime(tmp_path: Path, server: OpenAIServer) -> AsyncIterator[Runtime]:
    config = tmp_path / "dspex.toml"
    config.write_text(_config(server))
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config) as rt:
        await rt.register(QA)
        await rt.initialize("qa")
        yield rt


async def test_concurrent_executions_share_the_backends_rpm(
    runtime: Runtime, server: OpenAIServer
) -> None:
    results = await asyncio.gather(
        *(runtime.execute("qa", {"question": f"q{i}"}) for i in range(40))
    )
    assert all(r.ok for r in results)
    assert server.request_count == 40
    assert _busiest_window(server) <= MOST_IN_A_WINDOW


async def test_a_batch_waits_for_the_rpm_and_reports_the_time_waited(
    runtime: Runtime, server: OpenAIServer
) -> None:
    items = [{"question": f"q{i}"} for i in range(40)]
    result = await runtime.run_batch("qa", items, max_concurrency=16)
    assert result.ok
    assert _busiest_window(server) <= MOST_IN_A_WINDOW
    assert result.stats.rate_limited_s > 0
    info = await runtime.get_batch(result.batch_id)
    assert info.rate_limited_s == pytest.approx(result.stats.rate_limited_s, rel=1e-6)


async def test_worker_processes_split_the_rpm_instead_of_multiplying_it(
    runtime: Runtime, server: OpenAIServer
) -> None:
    items = [{"question": f"q{i}"} for i in range(40)]
    result = await runtime.run_batch("qa", items, max_concurrency=16, workers=2, chunk_size=10)
    assert result.ok
    assert server.request_count == 40
    assert _busiest_window(server) <= MOST_IN_A_WINDOW
    assert result.stats.rate_limited_s > 0
    assert (await runtime.get_batch(result.batch_id)).rate_limited_s > 0
