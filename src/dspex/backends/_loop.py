"""Which event loop, if any, runs the calling thread (the LM clients call from both sides)."""

from __future__ import annotations

import asyncio

__all__ = ["running_loop"]


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or ``None`` in a plain thread."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
