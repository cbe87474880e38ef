"""Interpreter tuning for a process that runs dspex alone — never applied by the library itself.

The library leaves its host's interpreter as it found it: ``import dspex``, a
:class:`~dspex.Runtime`, ``run_batch`` and an app from ``create_app`` change no garbage collector
setting, switch interval, signal handler or ``multiprocessing`` global. The processes dspex owns
tune themselves with :func:`tune_process`: the ``dspex`` command, the batch worker server and
the worker processes forked from it. A script that owns its process may opt in the same way.

Measured (medians of four runs each on a shared two-core machine, so a few percent is noise):
on the mock case of ``benchmarks/bench_batch.py`` (10,000 items at 20 ms, concurrency 256,
SQLite) the larger young generation took the CPU per item from 0.13 to 0.11 ms and throughput
up by about a tenth, with or without the frozen heap; on the DSPy-over-HTTP path (``dspy.LM``
against a loopback OpenAI-compatible server, about 3 ms of CPU per item) no tuning moved the
numbers beyond noise. A 1 ms GIL switch interval (Python's default is 5 ms) took the same mock
case from 1.47x to 1.28x the ideal wall time (medians of four alternating runs on a quiet
machine): the SQLite writer thread otherwise waits up to 5 ms for the GIL behind a busy event
loop before each statement. That interval costs where Python threads do the work, though: a call
through ``dspy.LM`` hands four pieces of itself to worker threads (``asyncio.to_thread``), and a
1 ms interval makes those threads and the event loop take the GIL from each other by force more
often. On the DSPy-over-HTTP path of ``benchmarks/bench_batch.py`` (2,000 items at concurrency
64) it cost 0.13 ms of CPU per item to ``Predict.acall`` and 0.19 ms to a recorded dspex batch
(medians of four alternating runs on the shared two-core machine), so a process whose work runs
through ``dspy.LM`` keeps Python's 5 ms (``tune_process(dspy_lm=True)``).
"""

from __future__ import annotations

import gc
import sys

__all__ = ["SWITCH_INTERVAL", "YOUNG_THRESHOLD", "tune_process"]

YOUNG_THRESHOLD = 50_000
"""Allocations between young collections in a tuned process (Python's default is 700)."""

SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL in a tuned process (Python's default is 0.005)."""

_shortened_from: float | None = None
"""The switch interval :func:`tune_process` found before shortening it (``None``: it did not)."""


def tune_process(*, freeze: bool = True, dspy_lm: bool = False) -> None:
    """Tune this interpreter for dspex's work. Process-wide and never undone.

    - Young collections run every 50,000 allocations rather than every 700: a DSPy call
      allocates thousands of objects, a batch item a few dozen short-lived ones, and collecting
      every 700 cost about a fifth of a DSPy call's CPU. A larger threshold already set is kept.
    - With ``freeze`` (the default), every object alive now moves out of the collector's sight
      (:func:`gc.freeze`): modules, classes and caches live as long as the process, and each full
      collection would walk them although none of them is garbage.
    - The GIL switch interval is 1 ms rather than 5 ms, so the SQLite writer thread is not held
      up behind a busy event loop; a shorter interval already set is kept.
    - With ``dspy_lm`` (the process's work runs through ``dspy.LM``: a ``dspy`` backend or a
      ``dspy`` module, see :meth:`dspex.Runtime.calls_dspy_lm`), the switch interval is left
      as it is (Python's 5 ms), or put back as it was if an earlier call shortened it: DSPy hands
      four pieces of every LM call to worker threads, and a shorter interval makes them and the
      event loop trade the GIL by force more often, for more CPU per call. An interval the
      process set itself is never changed.

    Call it only from the main of a process you own — a script, a worker — never from library
    code: it changes the interpreter for everything else running in the process. The ``dspex``
    command, ``dspex serve`` and the batch worker processes apply it themselves (``dspex batch``
    and ``dspex evaluate`` once more with ``dspy_lm`` when their program calls a ``dspy.LM``).

    Example:
        >>> import dspex
        >>> def main() -> None:  # doctest: +SKIP
        ...     dspex.tune_process()  # this script runs batches and nothing else
        ...     asyncio.run(run_my_batches())
    """
    global _shortened_from
    interval = sys.getswitchinterval()
    if dspy_lm:
        if _shortened_from is not None and interval == SWITCH_INTERVAL:
            sys.setswitchinterval(_shortened_from)
            _shortened_from = None
    elif interval > SWITCH_INTERVAL:
        _shortened_from = interval
        sys.setswitchinterval(SWITCH_INTERVAL)
    young, middle, old = gc.get_threshold()
    if young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, max(middle, 20), max(old, 20))
    if freeze:
        gc.freeze()
