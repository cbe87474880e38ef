"""A recorded batch through a failover group whose two backends both misbehave, 30% of the time.

Both loopback OpenAI-compatible servers answer a seeded 30% of requests with a fault: 429 with
``Retry-After`` in seconds, 429 with ``Retry-After`` as an HTTP date, 500, 503, a hang past the
LM's read timeout, a 200 whose body is not JSON, and a 200 whose JSON is cut off. Everything
runs the real path: ``dspex.Runtime.run_batch`` → the engine → the coordinator group (failover)
→ ``dspy`` backends → ``dspy.LM`` → HTTP. Every item must succeed: the coordinator retries and
fails over, and an item whose group failed on transient faults alone is re-run by the batch.

Waits are kept short (small backoff, Retry-After values under a second, a 0.4 s read timeout).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.openai_server import OpenAIServer, Outcome, delay, malformed, status, truncated

from dspex.runtime import Runtime

KEY_ENV = "DSPEX_TEST_FAULTS_KEY"
ITEMS = 200
FAULT_RATE = 0.3

FAULTS: tuple[Outcome, ...] = (
    status(429, retry_after=0.2, label="429 retry-after seconds"),
    status(429, retry_after_date=1, label="429 retry-after date"),
    status(500),
    status(503),
    delay(5.0, label="hang"),
    malformed(),
    truncated(),
)

# What a fault may be recorded as; a hang is the LM's own read timeout.
FAULT_CODES = {"rate_limited", "backend_unavailable", "timeout", "backend_malformed_response"}

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {
        "answer": {
            "kind": "predict",
            "signature": "question: str -> answer: str",
            "backend": "main",
        }
    },
}


def _config(primary: OpenAIServer, secondary: OpenAIServer) -> str:
    backends = "\n".join(
        f"""
[backends.{name}]
kind = "dspy"
model = "openai/test"
api_base = "{server.base_url}"
api_key_env = "{KEY_ENV}"
timeout = 0.4
"""
        for name, server in (("first", primary), ("second", secondary))
    )
    return f"""
default_backend = "main"
{backends}
[coordinators.main]
backends = ["first", "second"]
strategy = "failover"

[coordinators.main.retry]
max_attempts = 4
initial_interval = 0.02
backoff_factor = 2
max_interval = 0.2
jitter = 0.2
max_retry_after = 1

# Breakers stay on, set for an outage rather than this fault rate: at 0.5, a window of 20 calls
# at 30% faults trips now and then by chance, and a call that finds both circuits open is final
# by design (AllBackendsFailedError with nothing asked), which is not what this test is about.
[breaker]
failure_rate_threshold = 0.8
minimum_calls = 10
window_size = 20
open_seconds = 0.5
"""


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as primary, OpenAIServer() as secondary:
        primary.inject(FAULT_RATE, FAULTS, seed=11)
        secondary.inject(FAULT_RATE, FAULTS, seed=12)
        yield primary, secondary


@pytest.mark.slow
async def test_every_item_succeeds_when_both_backends_of_a_failover_group_fail_30_percent(
    tmp_path: Path, servers: tuple[OpenAIServer, OpenAIServer]
) -> None:
    primary, secondary = servers
    config = tmp_path / "dspex.toml"
    config.write_text(_config(primary, secondary))
    items = [{"question": f"What is {i} + {i}?"} for i in range(ITEMS)]
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config) as rt:
        await rt.register(QA)
        await rt.initialize("qa")
        batch = await rt.run_batch("qa", items, max_concurrency=16, max_retries=3)
        assert batch.results is not None
        codes: Counter[str] = Counter()
        for item in batch.results:
            for row in await rt.store.list_attempts(item.execution_id):
                if row.error_code is not None:
                    codes[row.error_code] += 1

    failed = [(r.index, r.status, r.error) for r in batch.results if r.status != "completed"]
    assert failed == []
    assert batch.stats.completed == ITEMS
    # the faults really happened, every kind of them, and on both backends
    injected = primary.injected + secondary.injected
    assert set(injected) == {fault.name for fault in FAULTS}
    assert primary.injected
    assert secondary.injected
    assert injected.total() >= 50
    # each recorded as what it is: no read timeout or unreadable body as anything else
    assert set(codes) == FAULT_CODES
