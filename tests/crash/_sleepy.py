"""A ``python`` module function for crash tests: blocking, synchronous work (run in a thread)."""

from __future__ import annotations

import time

# Longer than the test's lease (1 s): the lease survives only if heartbeats keep running.
SECONDS = 2.4


def slow_echo(question: str) -> dict[str, str]:
    """Block the calling thread, as CPU-bound or sync-client DSPy work does, then answer."""
    time.sleep(SECONDS)
    return {"answer": question.upper()}
