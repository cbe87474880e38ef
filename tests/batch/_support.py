"""Helpers shared by the batch tests."""

from __future__ import annotations

import asyncio
from typing import Any

from dspex.backends.base import PredictRequest
from dspex.errors import BackendUnavailableError, BadRequestError
from dspex.records import ExecutionStatus, FinishRequest
from dspex.runtime import Runtime


class Scripted:
    """A mock handler that tracks concurrency and fails the questions it is told to."""

    def __init__(self, latency: float = 0.01) -> None:
        self.latency = latency
        self.running = 0
        self.peak = 0
        self.calls: dict[str, int] = {}
        self.fail_permanently: set[str] = set()
        self.fail_first: dict[str, int] = {}
        self.hang: set[str] = set()

    async def __call__(self, request: PredictRequest) -> dict[str, Any]:
        question = str(request.inputs["question"])
        self.calls[question] = self.calls.get(question, 0) + 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.latency)
            if question in self.hang:
                await asyncio.sleep(3600)
            if question in self.fail_permanently:
                raise BadRequestError("bad question", status=400)
            if self.fail_first.get(question, 0) >= self.calls[question]:
                raise BackendUnavailableError("try again", status=503)
            return {"answer": f"answer to {question}"}
        finally:
            self.running -= 1


def questions(n: int) -> list[dict[str, str]]:
    return [{"question": f"q{i}"} for i in range(n)]


HELD = (1, 4)


async def hold(
    rt: Runtime, total: int, indexes: tuple[int, ...] = HELD
) -> tuple[str, dict[int, tuple[str, str]]]:
    """A batch of ``total`` items whose ``indexes`` another (live) worker claimed."""
    batch = await rt.store.create_batch("qa", 1, {}, total)
    items = [(i, {"question": f"q{i}"}) for i in indexes]
    held = await rt.store.add_and_claim_batch_items(
        batch.id, "qa", 1, items, worker_id="other", lease_seconds=30.0
    )
    assert sorted(held) == list(indexes)
    return batch.id, held


def finished_by_other(held: dict[int, tuple[str, str]]) -> list[FinishRequest]:
    """What the other worker writes when it finishes the items it holds."""
    return [
        FinishRequest(
            execution_id=eid,
            lease_token=token,
            status=ExecutionStatus.COMPLETED,
            outputs={"answer": f"the other worker answered q{index}"},
            duration_ms=1.0,
        )
        for index, (eid, token) in held.items()
    ]


class SpanLog:
    """A mock handler for worker processes: appends each call's start and end (wall clock) to a
    file, one line per call, so the parent can measure how many ran at once across processes."""

    def __init__(self, path: str, latency: float = 0.02) -> None:
        self.path = path
        self.latency = latency

    async def __call__(self, request: PredictRequest) -> dict[str, Any]:
        import time

        started = time.time()
        await asyncio.sleep(self.latency)
        with open(self.path, "a", encoding="utf-8") as handle:  # noqa: ASYNC230 - one line
            handle.write(f"{started} {time.time()}\n")
        return {"answer": "a"}


def peak_overlap(path: str) -> int:
    """The most calls of a :class:`SpanLog` file that were running at the same moment."""
    events: list[tuple[float, int]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            start, end = map(float, line.split())
            events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, delta in sorted(events):  # an end sorts before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak
