"""A batch re-runs an item whose coordinator group failed on retryable errors alone.

``AllBackendsFailedError`` is retryable exactly when every backend that was asked failed in a
retryable way, so ``max_retries`` (the batch's item retries) applies to coordinator groups too.
The backends are scripted mock backends; waits are fake (looptime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.resilience.faults import AUTH, OK, UNAVAILABLE, rate_limited, scripted

from dspex.backends.mock import MockBackend
from dspex.resilience import Coordinator, RetryPolicy
from dspex.runtime import Runtime

pytestmark = pytest.mark.looptime

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

# one round over the two backends, no retry inside the group
ONE_ROUND = RetryPolicy(max_attempts=2, initial_interval=0.1, jitter=0.0)


async def _batch(tmp_path: Path, first: MockBackend, second: MockBackend, retries: int) -> Any:
    group = Coordinator("main", [first, second], policy=ONE_ROUND)
    async with Runtime.open("memory://", cwd=tmp_path, backends={"main": group}) as rt:
        await rt.register(QA)
        await rt.initialize("qa")
        return await rt.run_batch("qa", [{"question": "What is 6 * 7?"}], max_retries=retries)


async def test_an_item_whose_group_failed_on_retryable_errors_alone_is_run_again(
    tmp_path: Path,
) -> None:
    first = scripted("first", UNAVAILABLE, OK)
    second = scripted("second", rate_limited(0.5))
    batch = await _batch(tmp_path, first, second, retries=2)
    [item] = batch.results
    assert item.status == "completed", item.error
    assert item.outputs == {"answer": "first answered"}
    assert batch.stats.retries == 1
    assert (first.calls, second.calls) == (2, 1)


async def test_an_item_whose_group_met_an_auth_error_is_not_run_again(tmp_path: Path) -> None:
    first = scripted("first", AUTH, OK)
    second = scripted("second", UNAVAILABLE, OK)
    batch = await _batch(tmp_path, first, second, retries=2)
    [item] = batch.results
    assert item.status == "failed"
    assert item.error is not None
    assert item.error.code == "all_backends_failed"
    assert batch.stats.retries == 0
    assert (first.calls, second.calls) == (1, 1)


async def test_without_max_retries_a_retryable_group_failure_fails_the_item(
    tmp_path: Path,
) -> None:
    first = scripted("first", UNAVAILABLE, OK)
    second = scripted("second", UNAVAILABLE, OK)
    batch = await _batch(tmp_path, first, second, retries=0)
    [item] = batch.results
    assert (item.status, item.error.code if item.error else None) == (
        "failed",
        "all_backends_failed",
    )
    assert batch.stats.retries == 0
