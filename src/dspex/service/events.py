"""Progress of background work as Server-Sent Events: one feed per job (a batch, an evaluation's
batch, an optimization run), kept for subscribers who come late.

A feed keeps its most recent :data:`KEEP_EVENTS` events; a subscriber receives every kept
event, then each new one as it happens, then one final ``done`` event once the job finished,
after which the stream ends.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["KEEP_EVENTS", "EventFeed", "sse"]

KEEP_EVENTS = 1024


def sse(event: str, data: dict[str, Any], sequence: int) -> str:
    """One Server-Sent Event: its id (the sequence number), name and JSON data."""
    return f"id: {sequence}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class EventFeed:
    """The progress events of one background job, for any number of subscribers."""

    def __init__(self) -> None:
        self.events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=KEEP_EVENTS)
        self.sequence = 0
        self.finished = False
        self.changed = asyncio.Event()

    def publish(self, data: dict[str, Any]) -> None:
        """Keep a ``progress`` event and wake the subscribers."""
        self.sequence += 1
        self.events.append((self.sequence, data))
        self._wake()

    def close(self) -> None:
        """The job finished: subscribers get ``done`` and their streams end."""
        self.finished = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def stream(self, summary: Callable[[], dict[str, Any]]) -> AsyncIterator[str]:
        """Every kept ``progress`` event, each new one, then ``done`` with ``summary()``."""
        seen = 0
        while True:
            waiter = self.changed
            for sequence, data in list(self.events):
                if sequence > seen:
                    seen = sequence
                    yield sse("progress", data, sequence)
            if self.finished:
                yield sse("done", summary(), seen + 1)
                return
            await waiter.wait()
