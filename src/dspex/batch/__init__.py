"""Batch processing: run a program over many inputs with bounded concurrency, resumably.

- :mod:`dspex.batch.inputs` — lists, JSONL files and streams, with line numbers and validation.
- :mod:`dspex.batch.runner` — the worker pool of one process.
- :mod:`dspex.batch.recorder` — grouped writes of finished items and chunk leases.
- :mod:`dspex.batch.workers` — the same over several worker processes sharing a SQL store.
- :mod:`dspex.batch.progress` and :mod:`dspex.batch.stats` — events and statistics.

The operation users call is :meth:`dspex.Runtime.run_batch` (:mod:`dspex.actions.batch`).
"""

from __future__ import annotations

from dspex.batch.progress import ProgressCallback, ProgressEvent, ProgressTracker
from dspex.batch.stats import BatchStats

__all__ = ["BatchStats", "ProgressCallback", "ProgressEvent", "ProgressTracker"]
