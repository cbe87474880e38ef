"""The single-process batch runner: a fixed pool of async workers draining one queue.

A producer streams the input: it validates each item and, in one store call per chunk
(:meth:`~dspex.store.Store.add_and_claim_batch_items`), creates the chunk's executions already
claimed under one lease (on a resumed batch the existing ones are claimed instead, and completed
items are not, so they are skipped); a few chunks are written ahead while the claimed items wait
on a bounded queue. ``max_concurrency``
workers each take one item at a time, run it through the engine (per-item timeout, retries of
retryable failures) and hand the result to the :class:`~dspex.batch.recorder.Recorder`, which
writes results in groups; progress and statistics count an item once its group is written.

There are no chunk barriers: a worker takes the next item as soon as it is free. A stop (more
failures than ``max_errors``, the batch deadline, or cancellation from outside) stops claiming,
cancels the running items and records them — and the claimed items not started yet —
``cancelled``, so that the batch holds no ``running`` item and can be resumed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from tenacity import retry_if_result

from dspex.batch.inputs import RawItem, check_item
from dspex.batch.options import BatchOptions
from dspex.batch.recorder import LeaseKeeper, Recorder
from dspex.engine.recording import run_records, spend_rows
from dspex.errors import DspexError, is_retryable
from dspex.records import (
    ExecutionFilter,
    ExecutionRecord,
    ExecutionStatus,
    FinishRequest,
    utc_now,
)
from dspex.resilience.policy import RetryPolicy
from dspex.resilience.ratelimit import measure_waits

if TYPE_CHECKING:
    from dspex.batch.progress import ProgressTracker
    from dspex.batch.stats import StatsCollector
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program
    from dspex.engine.recording import PriceTable
    from dspex.engine.results import RunResult, StepResult
    from dspex.store.base import Store

__all__ = [
    "BatchRunner",
    "Kept",
    "RunnerOptions",
    "StopReason",
    "finish_request",
    "storable_inputs",
]

log = logging.getLogger("dspex.batch")

StopReason = Literal["completed", "max_errors", "max_cost", "deadline", "cancelled", "incomplete"]

_AHEAD = 3  # chunks written and claimed ahead of the workers

_Outcome = tuple[
    ExecutionStatus, dict[str, Any] | None, str | None, str | None, "Sequence[StepResult]", bool
]
"""One run of an item: status, outputs, error code and message, steps, and whether a failure
may pass when the item runs again."""


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """How one runner runs a batch: the batch's options (validated by
    :func:`dspex.actions.batch.run_batch`; a worker process gets its share of
    ``max_concurrency`` and what is left of the ``deadline``) and where it runs."""

    batch: BatchOptions = field(default_factory=BatchOptions)
    strategy: str | None = None
    lease_seconds: float = 30.0
    worker_id: str = "batch"
    flush_interval: float = 0.02
    flush_size: int = 200
    recorded: bool = False
    """Every item of the batch is recorded already (a recoverable batch): chunks are claimed,
    not written."""


class Kept(NamedTuple):
    """One written item as the store now holds it (see ``BatchRunner(keep=True)``)."""

    execution_id: str
    status: str
    outputs: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    duration_ms: float | None


@dataclass(slots=True)
class _Job:
    index: int
    execution_id: str
    token: str
    inputs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Feed:
    """A chunk being written and claimed: the task, its checked items and their indexes."""

    task: asyncio.Future[dict[int, tuple[str, str]]]
    checked: dict[int, tuple[dict[str, Any] | None, str]]
    indexes: list[int]


class _Meta(NamedTuple):
    item: int  # the index in the batch (``index`` is a tuple method)
    token: str
    retries: int


def finish_request(
    execution_id: str,
    token: str,
    status: ExecutionStatus,
    *,
    outputs: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    duration_ms: float | None = None,
    steps: Sequence[StepResult] = (),
    started_at: datetime | None = None,
    prices: PriceTable | None = None,
    rate_limited_ms: float = 0.0,
) -> FinishRequest:
    """A :class:`FinishRequest` with the steps, attempts, usage, cost and backend of an engine
    run."""
    records = run_records(steps, started_at or utc_now(), prices)
    return FinishRequest(
        execution_id=execution_id,
        lease_token=token,
        status=status,
        outputs=outputs,
        error_code=error_code,
        error_message=error_message,
        usage=records.usage,
        duration_ms=duration_ms,
        backend=records.backend,
        steps=tuple(records.steps),
        attempts=tuple(records.attempts),
        cost_usd=records.cost_usd,
        rate_limited_ms=rate_limited_ms,
    )


class _Capture:
    """A per-run hook keeping the engine's result, so a cancelled run keeps its partial steps."""

    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result: RunResult | None = None

    def after_run(self, *, run_id: str, result: RunResult) -> None:
        self.result = result


def storable_inputs(value: Any) -> dict[str, Any]:
    """The inputs to store for an item that failed validation (what can be stored of them)."""
    if not isinstance(value, dict):
        return {}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return {}
    return value


class BatchRunner:
    """Runs the items of one batch in this process (see the module docstring).

    Args:
        store: the store holding the batch.
        engine: runs each item.
        program: the program (its signature validates the items).
        program_name: its stored name.
        version: its stored version.
        batch_id: the batch.
        items: the raw items to run (all of them, on resume too: completed ones are skipped),
            or an async iterable of them (read without blocking the event loop).
        options: concurrency, retries, limits.
        tracker: counts and emits progress.
        stats: collects statistics.
        keep: also keep each written item's result in :attr:`kept` (for a list input, whose
            results are returned in memory anyway: no need to read them back).
        validated: every item's inputs as up-front validation returned them, by index (a list
            input): the items are not validated a second time.
    """

    def __init__(
        self,
        *,
        store: Store,
        engine: Engine,
        program: Program,
        program_name: str,
        version: int,
        batch_id: str,
        items: Iterable[RawItem] | AsyncIterable[RawItem],
        options: RunnerOptions,
        tracker: ProgressTracker,
        stats: StatsCollector,
        keep: bool = False,
        validated: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.program = program
        self.program_name = program_name
        self.version = version
        self.batch_id = batch_id
        self.items = items
        self.options = options
        self.tracker = tracker
        self.stats = stats
        self.failed_this_run = 0
        self.spent_this_run = 0.0
        self.lost = 0
        self.ending = False  # the run stopped on its own and is recording what it holds
        self.kept: dict[int, Kept] | None = {} if keep else None
        self._validated = validated
        self._strategy = options.strategy or program.spec.strategy
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(
            maxsize=max(2 * options.batch.max_concurrency, options.batch.chunk_size)
        )
        self._recorder: Recorder[_Meta] = Recorder(
            store,
            self._written,
            interval=options.flush_interval,
            size=options.flush_size,
            high_water=max(4 * options.flush_size, 2 * options.batch.max_concurrency),
        )
        self._leases = LeaseKeeper(store, options.lease_seconds)
        self._finished = asyncio.Event()
        self._stop: StopReason | None = None
        self._error: BaseException | None = None
        self._workers_left = options.batch.max_concurrency
        self._unclaimed: list[int] = []
        # an item runs at most 1 + max_retries times, on the retry policy's one loop
        self._reruns = RetryPolicy.model_validate(
            {**options.batch.retry.model_dump(), "max_attempts": 1 + options.batch.max_retries}
        )
        self._rng = random.Random()

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> StopReason:
        """Run every claimable item; returns why the run ended.

        Raises:
            StorageError: the store failed (claimed items keep their leases until they expire).
            asyncio.CancelledError: cancelled from outside; running and claimed items were
                recorded ``cancelled`` first.
        """
        recorder_task = self._recorder.start()
        recorder_task.add_done_callback(self._watch)
        self._leases.start()
        producer = asyncio.create_task(self._produce(), name="batch-producer")
        producer.add_done_callback(self._watch)
        workers = [
            asyncio.create_task(self._work(), name=f"batch-worker-{n}")
            for n in range(self.options.batch.max_concurrency)
        ]
        for worker in workers:
            worker.add_done_callback(self._watch)
        reason: StopReason = "completed"
        try:
            async with asyncio.timeout(self.options.batch.deadline):
                await self._finished.wait()
            reason = self._stop or "completed"
        except TimeoutError:
            reason = "deadline"
        except asyncio.CancelledError:
            await asyncio.shield(self._shutdown(producer, workers))
            raise
        # stopping on its own: a cancel from now on would leave the shutdown writing unawaited
        self.ending = True
        await asyncio.shield(self._shutdown(producer, workers))
        if self._error is not None:
            raise self._error
        return reason

    def _watch(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._error is None:
            self._error = exc
            self._finished.set()

    async def _shutdown(
        self, producer: asyncio.Task[None], workers: list[asyncio.Task[None]]
    ) -> None:
        producer.cancel()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(producer, *workers, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                self._cancel(job, 0.0)
        try:
            await self._recorder.close()
        finally:
            await self._leases.stop()

    # -- producing ----------------------------------------------------------------------------

    async def _produce(self) -> None:
        # Up to _AHEAD chunks are written and claimed while earlier ones are queued and run:
        # each is a round trip to the store, and waiting for one chunk at a time would leave
        # the workers idle whenever the store is slower than they are.
        inflight: deque[_Feed] = deque()
        size = self.options.batch.chunk_size
        try:
            chunk: list[RawItem] = []
            if isinstance(self.items, AsyncIterable):
                # a source that waits for its items (a worker process asks its host for chunks)
                async for raw in self.items:
                    chunk.append(raw)
                    if len(chunk) >= size:
                        inflight.append(self._start_feed(chunk))
                        chunk = []
                        if len(inflight) >= _AHEAD:
                            await self._finish_feed(inflight)
            else:
                for raw in self.items:
                    chunk.append(raw)
                    if len(chunk) >= size:
                        inflight.append(self._start_feed(chunk))
                        chunk = []
                        if len(inflight) >= _AHEAD:
                            await self._finish_feed(inflight)
            if chunk:
                inflight.append(self._start_feed(chunk))
            while inflight:
                await self._finish_feed(inflight)
        except asyncio.CancelledError:
            await self._abandon_feeds(inflight)
            raise
        await self._await_held()
        for _ in range(self.options.batch.max_concurrency):
            await self._queue.put(None)

    def _check(self, raw: RawItem) -> tuple[dict[str, Any] | None, str]:
        if self._validated is not None:
            return self._validated[raw.index], ""
        valid, details = check_item(raw, self.program.signature)
        if valid is None:
            return None, "; ".join(f"{d.field}: {d.message}" for d in details)
        return valid, ""

    def _start_feed(self, chunk: list[RawItem]) -> _Feed:
        """Validate a chunk and start writing and claiming its items (a task of its own)."""
        rows: list[tuple[int, dict[str, Any]]] = []
        checked: dict[int, tuple[dict[str, Any] | None, str]] = {}
        for raw in chunk:
            valid, _ = checked[raw.index] = self._check(raw)
            rows.append((raw.index, storable_inputs(raw.value) if valid is None else valid))
        task = asyncio.ensure_future(self._write_chunk(rows))
        return _Feed(task, checked, [index for index, _ in rows])

    async def _write_chunk(
        self, rows: list[tuple[int, dict[str, Any]]]
    ) -> dict[int, tuple[str, str]]:
        if self.options.recorded:
            # one claim of existing rows, rather than an insert that conflicts on every row
            # before the same claim
            return await self.store.claim_batch_items(
                self.batch_id,
                [index for index, _ in rows],
                worker_id=self.options.worker_id,
                lease_seconds=self.options.lease_seconds,
            )
        return await self.store.add_and_claim_batch_items(
            self.batch_id,
            self.program_name,
            self.version,
            rows,
            worker_id=self.options.worker_id,
            lease_seconds=self.options.lease_seconds,
        )

    async def _finish_feed(self, inflight: deque[_Feed]) -> None:
        """Wait for the oldest chunk's claim and queue its items."""
        feed = inflight[0]
        claimed = await asyncio.shield(feed.task)  # cancelling the producer must not undo it
        inflight.popleft()
        if len(claimed) < len(feed.indexes):
            # completed items (skipped) or items another worker holds: looked at once the
            # whole input is fed (see _await_held)
            self._unclaimed.extend(index for index in feed.indexes if index not in claimed)
        await self._enqueue(claimed, feed.checked)

    async def _abandon_feeds(self, inflight: deque[_Feed]) -> None:
        """The producer was cancelled: record what the chunks in flight claimed as cancelled."""
        for feed in inflight:
            try:
                claimed = await asyncio.shield(feed.task)
            except Exception:  # the write failed: nothing was claimed
                continue
            self._cancel_claimed(claimed)

    async def _claim(self, indexes: list[int]) -> dict[int, tuple[str, str]]:
        claim = asyncio.ensure_future(
            self.store.claim_batch_items(
                self.batch_id,
                indexes,
                worker_id=self.options.worker_id,
                lease_seconds=self.options.lease_seconds,
            )
        )
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            # the claim may have been written: record what it took as cancelled
            claimed = await claim
            self._cancel_claimed(claimed)
            raise

    def _cancel_claimed(self, claimed: dict[int, tuple[str, str]]) -> None:
        """Record claimed items that will not run as cancelled (their lease held until written)."""
        for index, (eid, token) in claimed.items():
            self._leases.hold(token, 1)
            self._cancel(_Job(index, eid, token, {}), 0.0)

    async def _enqueue(
        self,
        claimed: dict[int, tuple[str, str]],
        checked: dict[int, tuple[dict[str, Any] | None, str]],
    ) -> None:
        jobs: list[_Job] = []
        for index in sorted(claimed):
            eid, token = claimed[index]
            self._leases.hold(token, 1)
            valid, message = checked[index]
            if valid is None:
                request = FinishRequest(
                    execution_id=eid,
                    lease_token=token,
                    status=ExecutionStatus.FAILED,
                    error_code="validation_error",
                    error_message=message,
                    duration_ms=0.0,
                )
                self._recorder.add(request, _Meta(index, token, 0))
            else:
                jobs.append(_Job(index, eid, token, valid))
        for position, job in enumerate(jobs):
            try:
                await self._queue.put(job)
            except asyncio.CancelledError:
                for left in jobs[position:]:
                    self._cancel(left, 0.0)
                raise

    async def _await_held(self) -> None:
        """Wait for the items this run could not claim because another lease holds them.

        A resume right after a crash finds the dead worker's items ``running`` under leases
        that have not expired yet; a live worker may hold some too. Until each such item is
        terminal (its holder finished it) or its lease expired (then it is claimed and run
        here), the batch is not done: poll every ``min(1 s, lease / 4)``. The batch deadline
        and cancellation stop the wait like any other part of the run.
        """
        watch = set(self._unclaimed)
        self._unclaimed = []
        interval = min(1.0, self.options.lease_seconds / 4.0)
        while watch:
            # shielded: a stop (cancel, deadline) must not cut the store read in half, which can
            # leave its connection waiting forever (see dspex._periodic); it ends on its own
            held = await asyncio.shield(self._held_elsewhere(watch))
            watch = set(held)
            if not watch:
                break
            claimed = await self._claim(sorted(watch))
            if claimed:
                checked = {
                    index: self._check(RawItem(index, None, held[index].inputs, None))
                    for index in claimed
                }
                await self._enqueue(claimed, checked)
                watch.difference_update(claimed)
                if not watch:
                    break
            now = self.store.clock()
            left = [
                max((at - now).total_seconds(), 0.0)
                for at in (held[i].lease_expires_at for i in watch)
                if at is not None
            ]
            expires_in = max(left, default=None)
            log.info(
                "batch %s: waiting for %d items held by another worker; their leases expire in %s",
                self.batch_id,
                len(watch),
                "?" if expires_in is None else f"{expires_in:.1f}s",
            )
            await self.tracker.waiting(len(watch), expires_in)
            await asyncio.sleep(interval)
        if self.tracker.held:
            await self.tracker.waiting(0, None)

    async def _held_elsewhere(self, watch: set[int]) -> dict[int, ExecutionRecord]:
        """The items of ``watch`` that are not terminal, by index (one paged query)."""
        found: dict[int, ExecutionRecord] = {}
        query = ExecutionFilter(
            batch_id=self.batch_id,
            statuses=(ExecutionStatus.PENDING, ExecutionStatus.RUNNING),
        )
        cursor: str | None = None
        while True:
            page = await self.store.list_executions(query, limit=500, cursor=cursor)
            for record in page.items:
                if record.batch_index in watch:
                    found[record.batch_index] = record
            cursor = page.next_cursor
            if cursor is None or not page.items:
                return found

    # -- working ------------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                job = await self._queue.get()
                if job is None:
                    # every item has been handed out: what is still running ends the batch
                    self._recorder.hurry()
                    return
                t0 = loop.time()
                try:
                    request, retries = await self._run_item(job)
                except asyncio.CancelledError:
                    self._cancel(job, (loop.time() - t0) * 1000.0)
                    raise
                self._recorder.add(request, _Meta(job.index, job.token, retries))
                if self._over_budget(request.cost_usd):
                    return
                if not self._recorder.has_room:
                    await self._recorder.room()
        finally:
            self._workers_left -= 1
            if self._workers_left == 0:
                self._finished.set()

    def _over_budget(self, cost_usd: float) -> bool:
        """Count an item's spending as soon as it finished (before it is written); once this
        run spent ``max_cost``, stop the batch. Whether the batch is stopping."""
        budget = self.options.batch.max_cost
        if budget is not None:
            self.spent_this_run += cost_usd
            if self.spent_this_run >= budget and self._stop is None:
                self._stop = "max_cost"
                self._finished.set()
        return self._stop is not None

    def _cancel(self, job: _Job, duration_ms: float) -> None:
        request = FinishRequest(
            execution_id=job.execution_id,
            lease_token=job.token,
            status=ExecutionStatus.CANCELLED,
            error_code="cancelled",
            error_message="the batch was stopped before this item finished",
            duration_ms=round(duration_ms, 3),
        )
        self._recorder.add(request, _Meta(job.index, job.token, 0))

    async def _run_item(self, job: _Job) -> tuple[FinishRequest, int]:
        loop = asyncio.get_running_loop()
        started_at = utc_now()
        t0 = loop.time()
        with measure_waits() as waits:
            outcome, runs = await self._runs(job)
        status, outputs, code, message, steps, _ = outcome
        retries = runs - 1
        duration = round((loop.time() - t0) * 1000.0, 3)
        request = finish_request(
            job.execution_id,
            job.token,
            status,
            outputs=outputs,
            error_code=code,
            error_message=message,
            duration_ms=duration,
            steps=steps,
            started_at=started_at,
            prices=self.engine.prices,
            rate_limited_ms=round(waits.seconds * 1000.0, 3),
        )
        return request, retries

    async def _runs(self, job: _Job) -> tuple[_Outcome, int]:
        """Run the item, again after a retryable failure; the last outcome and the runs made."""
        runs = 1
        outcome = await self._attempt(job)
        if self._rerun(outcome) and self._reruns.max_attempts > 1:
            # Most items pass on their first run, which is not wrapped; from a retryable
            # failure the policy's loop takes over (its first attempt is that run's outcome).
            first: _Outcome | None = outcome

            async def run() -> _Outcome:
                nonlocal first, runs
                if first is not None:
                    done, first = first, None
                    return done
                runs += 1
                return await self._attempt(job)

            retrying = self._reruns.retrying(retry=retry_if_result(self._rerun), rng=self._rng)
            outcome = await retrying(run)
        return outcome, runs

    def _rerun(self, outcome: _Outcome) -> bool:
        """Whether an item's run failed in a way that may pass when it runs again (and the
        batch is not stopping)."""
        return outcome[0] is ExecutionStatus.FAILED and outcome[5] and self._stop is None

    async def _attempt(self, job: _Job) -> _Outcome:
        """Run the item once: status, outputs, error code and message, steps, and whether a
        failure may pass when the item runs again (:func:`dspex.errors.is_retryable`)."""
        capture = _Capture()
        timeout = self.options.batch.item_timeout
        scope: asyncio.Timeout | None = None
        try:
            if timeout is None:
                # without a timeout the engine runs with its own hooks alone (no per-run
                # dispatcher to build) and outside a timeout scope
                result = await self.engine.run(
                    self.program,
                    job.inputs,
                    strategy=self._strategy,
                    run_id=job.execution_id,
                    inputs_valid=True,
                    cache=self.options.batch.cache,
                    cache_default=self.options.batch.cache_default,
                )
            else:
                # only a timed-out run needs its partial steps from the hook
                async with asyncio.timeout(timeout) as scope:
                    result = await self.engine.run(
                        self.program,
                        job.inputs,
                        strategy=self._strategy,
                        run_id=job.execution_id,
                        hooks=(capture,),
                        inputs_valid=True,
                        cache=self.options.batch.cache,
                        cache_default=self.options.batch.cache_default,
                    )
        except TimeoutError:
            if scope is None or not scope.expired():
                raise
            assert timeout is not None
            steps = capture.result.steps if capture.result is not None else ()
            message = f"the item exceeded its timeout of {timeout:g}s"
            return ExecutionStatus.FAILED, None, "timeout", message, steps, True
        except DspexError as exc:
            return ExecutionStatus.FAILED, None, exc.code, exc.message, (), is_retryable(exc)
        except Exception as exc:
            # a bug in a module must fail the item, not the batch
            log.exception("batch item %d raised", job.index)
            return (
                ExecutionStatus.FAILED,
                None,
                "internal_error",
                f"{type(exc).__name__}: {exc}",
                (),
                False,
            )
        if result.status is ExecutionStatus.COMPLETED:
            # the run's own fresh dict (the engine keeps no reference): no copy
            outputs = result.outputs
            if type(outputs) is not dict:
                outputs = dict(outputs)
            return ExecutionStatus.COMPLETED, outputs, None, None, result.steps, False
        error = result.error
        return (
            result.status,
            None,
            error.code if error else "failed",
            error.message if error else "the run failed",
            result.steps,
            error is not None and error.retryable,
        )

    # -- after a group is written -------------------------------------------------------------

    async def _written(self, group: Sequence[tuple[FinishRequest, _Meta, bool]]) -> None:
        limit = self.options.batch.error_limit
        kept = self.kept
        tracker = self.tracker
        for request, meta, ok in group:
            self._leases.release(meta.token)
            if not ok:
                self.lost += 1
                log.warning("batch item %d lost its lease; its result was refused", meta.item)
                continue
            if kept is not None:
                kept[meta.item] = Kept(
                    request.execution_id,
                    request.status.value,
                    request.outputs,
                    request.error_code,
                    request.error_message,
                    request.duration_ms,
                )
            self.stats.retries += meta.retries
            self.stats.add(
                status=request.status.value,
                duration_ms=request.duration_ms,
                usage=request.usage,
                error_code=request.error_code,
                cost_usd=request.cost_usd,
                rate_limited_ms=request.rate_limited_ms,
            )
            if request.status is ExecutionStatus.FAILED:
                self.failed_this_run += 1
                if limit is not None and self.failed_this_run > limit and self._stop is None:
                    self._stop = "max_errors"
                    self._finished.set()
            if tracker.callback is None:
                # nobody listens: count without building an event or a coroutine per item
                tracker.count(request.status.value)
            else:
                await tracker.finished(
                    meta.item,
                    request.status.value,
                    duration_ms=request.duration_ms,
                    spend=spend_rows(request.steps, self.engine.prices),
                )


def new_worker_id(prefix: str) -> str:
    """A worker identity unique to one batch run."""
    return f"{prefix}:{uuid.uuid4().hex[:8]}"
