"""The run_batch operation (DESIGN §3.3): a program over many inputs, recorded and resumable.

check the options → load the program (must be ``ready``; on resume, the batch's version) → open
the input (a list, a JSONL file or a stream spooled to a temporary file) → validate every item up
front (all bad indexes reported, nothing runs) unless ``validate="per_item"`` → create the batch
(or check the resumed one) → run it in this process, in worker processes or on Ray actors (the
executors of :mod:`dspex.batch.executors`) → set the batch status → statistics → results in
input order (kept in memory only for a list input; otherwise read them with
:meth:`dspex.Runtime.batch_results` or write them with ``out``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from dspex.actions.models import ErrorInfo
from dspex.actions.programs import default_version
from dspex.batch.driver import BatchDriver
from dspex.batch.executors import BatchRun
from dspex.batch.inputs import InputSource, open_source, validate_all
from dspex.batch.options import BatchOptions
from dspex.batch.progress import ProgressCallback, ProgressTracker
from dspex.batch.runner import Kept, RunnerOptions, StopReason, new_worker_id, storable_inputs
from dspex.batch.stats import BatchStats, StatsCollector
from dspex.engine.policy import call_budgets
from dspex.engine.spec import STRATEGIES
from dspex.errors import (
    ConfigError,
    ErrorDetail,
    MaxErrorsExceeded,
    ProgramStateError,
    ValidationError,
)
from dspex.records import BatchRecord, BatchStatus, ExecutionRecord, ProgramStatus

if TYPE_CHECKING:
    from dspex.actions.execute import ExecuteContext
    from dspex.store.base import Store

__all__ = [
    "BatchOptions",
    "BatchResult",
    "ItemResult",
    "batch_results",
    "run_batch",
    "stored_options",
    "take_over",
]

_RECORD_CHUNK = 500  # items recorded per transaction (``recoverable``)

BatchItems = Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]] | str | os.PathLike[str]


class ItemResult(BaseModel):
    """One item of a batch, in input order.

    Attributes:
        index: its 0-based position in the input.
        execution_id: the recorded execution.
        status: ``completed``, ``failed``, ``cancelled`` (or ``pending``/``running`` when the
            batch was interrupted before it ran).
        outputs: the outputs when completed.
        error: why it failed or was cancelled.
        duration_ms: how long it ran.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    execution_id: str
    status: str
    outputs: dict[str, Any] | None
    error: ErrorInfo | None
    duration_ms: float | None

    @classmethod
    def from_record(cls, record: ExecutionRecord) -> ItemResult:
        # Every value is a stored record's, of the declared types.
        return _item(
            record.batch_index if record.batch_index is not None else -1,
            record.id,
            record.status.value,
            record.outputs,
            record.error_code,
            record.error_message,
            record.duration_ms,
        )

    def to_line(self) -> dict[str, Any]:
        """The ``--out`` JSONL line: index, status, and outputs or the error code and message."""
        line: dict[str, Any] = {"index": self.index, "status": self.status}
        if self.outputs is not None:
            line["outputs"] = self.outputs
        if self.error is not None:
            line["error"] = {"code": self.error.code, "message": self.error.message}
        line["execution_id"] = self.execution_id
        return line


class BatchResult(BaseModel):
    """What :meth:`dspex.Runtime.run_batch` returns.

    Attributes:
        batch_id: the batch (pass it as ``resume=`` to re-run what did not complete).
        program: the program name.
        program_version: the version that ran.
        status: the batch status: ``completed`` (every item ran; some may have failed),
            ``failed`` (stopped by ``max_errors``) or ``cancelled`` (the deadline passed, or
            some item is still not terminal: resume it).
        stop_reason: ``completed``, ``max_errors``, ``max_cost`` (the run spent its
            ``max_cost``; the batch is left ``cancelled``, resumable), ``deadline``,
            ``cancelled`` or ``incomplete`` (the run ended with an item not terminal, e.g.
            held elsewhere).
        stats: counts, latencies, throughput, tokens and failures by code.
        results: every item in input order when the input was a list, else ``None`` (a stream
            may not fit in memory: use :meth:`dspex.Runtime.batch_results` or ``out``).
        out: the results file written, if one was asked for.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    program: str
    program_version: int
    status: Literal["completed", "failed", "cancelled"]
    stop_reason: str
    stats: BatchStats
    results: list[ItemResult] | None
    out: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every item completed."""
        return self.status == "completed" and self.stats.completed == self.stats.total


def check_options(options: BatchOptions | None = None, **values: Any) -> BatchOptions:
    """``options`` as given, or :meth:`BatchOptions.of` ``values``.

    Raises:
        ValidationError: every bad option, by name, or both ``options`` and ``values`` given.
    """
    if options is None:
        return BatchOptions.of(**values)
    if values:
        raise ValidationError(
            "invalid batch options:",
            [
                ErrorDetail(name, "conflict", "given both here and in options=")
                for name in sorted(values)
            ],
        )
    return options


async def start_workers() -> None:
    """Start the worker processes' server and wait until it is ready (see the runtime)."""
    from dspex.batch.workers import start_server

    await asyncio.to_thread(start_server, wait=True)


async def run_batch(
    ctx: ExecuteContext,
    program: str,
    items: BatchItems,
    *,
    version: int | None = None,
    backend: str | None = None,
    strategy: str | None = None,
    options: BatchOptions | None = None,
    resume: str | None = None,
    on_progress: ProgressCallback | None = None,
    out: str | os.PathLike[str] | None = None,
    worker_context: Mapping[str, Any] | None = None,
    recoverable: bool = False,
) -> BatchResult:
    """Run a ready program over every item and record each run as an execution of one batch.

    See :meth:`dspex.Runtime.run_batch` for the arguments. ``recoverable``: a new batch records
    every item ``pending`` (with its inputs) before any runs, so that another process can take
    it over from the store alone if this one dies (:func:`take_over`).

    Raises:
        ValidationError: bad options, or (``validate="upfront"``) bad items — every bad index
            is named and nothing ran.
        NotFoundError: no such program (version) or, on resume, no such batch.
        ProgramStateError: the version is not ready.
        ConfigError: unknown backend or strategy; an executor that cannot run the batch
            (``workers > 1`` on a store worker processes cannot share; Ray missing or
            unreachable, SQLite on a Ray cluster of several machines, an actor bigger than
            the cluster): refused before the batch is recorded.
        MaxErrorsExceeded: more items failed than allowed (``.batch_id`` names the batch,
            which is left ``failed`` and resumable).
        asyncio.CancelledError: cancelled from outside; the batch is left ``cancelled`` with no
            running item, resumable.
    """
    options = options or BatchOptions()
    store = ctx.store
    if backend is not None and backend not in ctx.engine.backends:
        known = ", ".join(sorted(ctx.engine.backends))
        raise ConfigError(f"unknown backend {backend!r} (configured: {known})")
    if strategy is not None and strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    previous: BatchRecord | None = None
    if resume is not None:
        previous = await store.get_batch(resume)
        if previous.program != program:
            raise ValidationError(
                f"batch {resume!r} runs program {previous.program!r}, not {program!r}:",
                [
                    ErrorDetail(
                        "resume", "program_mismatch", f"the batch's program is {previous.program!r}"
                    )
                ],
            )
        version = previous.program_version
    record = await store.get_program(program, await default_version(store, program, version))
    if record.status is not ProgramStatus.READY:
        raise ProgramStateError(
            f"program {program!r} v{record.version} is {record.status.value}, not ready:"
            f" run `dspex program init {program}`",
            status=record.status.value,
        )
    prog = ctx.programs.get(record, backend)
    ctx.engine.check(prog, strategy=strategy)
    executor = ctx.executors.for_options(options)
    # before anything is recorded: a batch its executor refuses leaves no batch behind
    await executor.prepare(store, options)
    out_path = None if out is None else _check_out(Path(out))
    with open_source(items) as source:
        validated = None
        if options.validate_mode == "upfront":
            validated = validate_all(source, prog.signature)
        if previous is None:
            config = {
                "max_concurrency": options.max_concurrency,
                "max_retries": options.max_retries,
                "max_errors": options.error_limit,
                "item_timeout": options.item_timeout,
                "deadline": options.deadline,
                "max_cost": options.max_cost,
                "validate": options.validate_mode,
                "workers": options.workers,
                "cluster": options.cluster,
                "backend": backend,
                "strategy": strategy,
                "input": source.describe(),
                "inputs": "stored" if recoverable else None,
                "out": out_path,
                # the most backend calls one predictor call of an item may make, per module
                "calls_bound": {
                    name: budget.calls_bound(options.max_retries)
                    for name, budget in call_budgets(
                        prog, ctx.engine.backends, ctx.engine.default_retry
                    ).items()
                },
            }
            batch = await store.create_batch(program, record.version, config, source.total)
            if recoverable:
                await _record_items(store, batch, source, validated)
        else:
            if source.total != previous.total:
                raise ValidationError(
                    f"batch {previous.id!r} has {previous.total} items, the input {source.total}:",
                    [ErrorDetail("items", "count_mismatch", "resume with the same input")],
                )
            batch = previous
        return await _run(
            ctx,
            batch,
            prog_record_version=record.version,
            source=source,
            options=options,
            backend=backend,
            strategy=strategy,
            on_progress=on_progress,
            out=out,
            worker_context=worker_context,
            validated=validated,
        )


async def _record_items(
    store: Store, batch: BatchRecord, source: InputSource, validated: list[dict[str, Any]] | None
) -> None:
    """Record every item ``pending`` with its inputs (as validated, when they were), a chunk
    per transaction."""
    rows: list[tuple[int, Mapping[str, Any]]] = []
    for raw in source:
        inputs = validated[raw.index] if validated is not None else storable_inputs(raw.value)
        rows.append((raw.index, inputs))
        if len(rows) >= _RECORD_CHUNK:
            await store.add_batch_items(batch.id, batch.program, batch.program_version, rows)
            rows = []
    if rows:
        await store.add_batch_items(batch.id, batch.program, batch.program_version, rows)


async def _run(
    ctx: ExecuteContext,
    batch: BatchRecord,
    *,
    prog_record_version: int,
    source: InputSource,
    options: BatchOptions,
    backend: str | None,
    strategy: str | None,
    on_progress: ProgressCallback | None,
    out: str | os.PathLike[str] | None,
    worker_context: Mapping[str, Any] | None,
    validated: list[dict[str, Any]] | None = None,
) -> BatchResult:
    store = ctx.store
    skipped = batch.completed
    runner_options = RunnerOptions(
        batch=options,
        strategy=strategy,
        lease_seconds=ctx.lease_seconds,
        worker_id=new_worker_id(ctx.worker_id),
        recorded=await _all_recorded(store, batch),
    )
    driver = BatchDriver(store, batch.id, runner_options.worker_id, ctx.lease_seconds)
    await driver.start()
    try:
        await store.set_batch_status(batch.id, BatchStatus.RUNNING)
    except BaseException:
        await asyncio.shield(driver.stop())
        raise
    tracker = ProgressTracker(batch.id, batch.total, completed=skipped, callback=on_progress)
    collector = StatsCollector()
    started = time.perf_counter()
    reason: StopReason
    kept: dict[int, Kept] | None = {} if source.items is not None else None

    async def execute() -> StopReason:
        run = BatchRun(
            store=store,
            batch=batch,
            source=source,
            options=runner_options,
            backend=backend,
            tracker=tracker,
            stats=collector,
            context=worker_context or {},
            engine=ctx.engine,
            program=ctx.programs.get(
                await store.get_program(batch.program, prog_record_version), backend
            ),
            keep=kept,
            validated=validated,
        )
        return await ctx.executors.for_options(options).run(run)

    try:
        # A task of its own, so that a cancel requested from another process (seen by the
        # driver) cancels the run without cancelling this coroutine's caller.
        work = asyncio.ensure_future(execute())
        driver.watch(work)
        try:
            reason = await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not driver.cancel_requested or (current is not None and current.cancelling()):
                raise
            reason = "cancelled"
    except asyncio.CancelledError:
        await asyncio.shield(_end(store, driver, BatchStatus.CANCELLED))
        raise
    except BaseException:
        await asyncio.shield(_end(store, driver, BatchStatus.FAILED))
        raise
    await asyncio.shield(driver.stop())
    wall = time.perf_counter() - started
    if reason == "completed":
        # Never call a batch completed while an item is not terminal: an item whose result
        # was refused (its lease was lost to another worker) may still be running elsewhere.
        now = await store.get_batch(batch.id)
        if now.completed + now.failed + now.cancelled < now.total:
            reason = "incomplete"
    status = {
        "completed": BatchStatus.COMPLETED,
        "max_errors": BatchStatus.FAILED,
    }.get(reason, BatchStatus.CANCELLED)
    final = await store.set_batch_status(batch.id, status)
    stats = collector.build(
        total=final.total,
        completed=final.completed,
        failed=final.failed,
        cancelled=final.cancelled,
        skipped=skipped,
        wall_s=wall,
    )
    results: list[ItemResult] | None = [] if source.items is not None else None
    written = None
    if kept is not None and len(kept) == final.total and out is None:
        # every item was written by this run: its results are already here, in memory
        results = [_from_kept(index, kept[index]) for index in range(final.total)]
    elif results is not None or out is not None:
        written = await _collect(store, batch.id, results, out)
    result = BatchResult(
        batch_id=batch.id,
        program=batch.program,
        program_version=batch.program_version,
        status=status.value,
        stop_reason=reason,
        stats=stats,
        results=results,
        out=written,
    )
    if reason == "max_errors":
        raise MaxErrorsExceeded(
            f"batch {batch.id} stopped: {sum(stats.errors.values())} items failed, more than"
            f" max_errors={options.error_limit} (resume it with --resume {batch.id})",
            batch_id=batch.id,
        )
    return result


async def _all_recorded(store: Store, batch: BatchRecord) -> bool:
    """Whether every item of a recoverable batch is recorded (its recording may have been cut
    short by a crash: then the items are written as they are claimed, like any batch's)."""
    if not isinstance(batch.config, Mapping) or batch.config.get("inputs") != "stored":
        return False
    return sum((await store.batch_item_states(batch.id)).values()) == batch.total


async def _end(store: Store, driver: BatchDriver, status: BatchStatus) -> None:
    """A run that raised: the batch ``status``, then the driver's lease released."""
    try:
        await store.set_batch_status(driver.batch_id, status)
    finally:
        await driver.stop()


def _from_kept(index: int, item: Kept) -> ItemResult:
    # Every value came from a validated run and its finish request.
    return _item(index, *item)


_validate_item = ItemResult.model_validate


def _item(
    index: int,
    execution_id: str,
    status: str,
    outputs: dict[str, Any] | None,
    error_code: str | None,
    error_message: str | None,
    duration_ms: float | None,
) -> ItemResult:
    """An :class:`ItemResult` of trusted values (a batch builds one per item).

    ``model_validate`` rather than ``model_construct``: pydantic's compiled validator builds
    the model in about half the time of ``model_construct``'s Python loop over fields and
    aliases, and its fields set is every field given, as ``model_construct`` would record."""
    error = None if error_code is None else {"code": error_code, "message": error_message or ""}
    return _validate_item(
        {
            "index": index,
            "execution_id": execution_id,
            "status": status,
            "outputs": outputs,
            "error": error,
            "duration_ms": duration_ms,
        }
    )


def _check_out(path: Path) -> str:
    """Refuse an ``out`` file that cannot be written before anything runs (it is written last);
    its absolute path, for the batch's config."""
    existed = path.exists()
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ValidationError(
            f"cannot write {str(path)!r}:", [ErrorDetail("out", "unwritable", str(exc))]
        ) from None
    if not existed:
        path.unlink(missing_ok=True)
    return str(path.absolute())


async def _collect(
    store: Store,
    batch_id: str,
    results: list[ItemResult] | None,
    out: str | os.PathLike[str] | None,
) -> str | None:
    handle = None
    path = None
    if out is not None:
        path = Path(out)
        try:
            handle = path.open("w", encoding="utf-8")  # noqa: ASYNC230 - one small line per item
        except OSError as exc:
            raise ValidationError(
                f"cannot write {str(path)!r}:", [ErrorDetail("out", "unwritable", str(exc))]
            ) from None
    try:
        async for record in store.iter_batch_results(batch_id):
            item = ItemResult.from_record(record)
            if results is not None:
                results.append(item)
            if handle is not None:
                handle.write(json.dumps(item.to_line(), ensure_ascii=False, default=str) + "\n")
    finally:
        if handle is not None:
            handle.close()
    return None if path is None else str(path)


async def take_over(ctx: ExecuteContext) -> tuple[BatchRecord, list[dict[str, Any]]] | None:
    """Claim one batch whose driver died (its lease lapsed) for this process: the batch as
    claimed and every item's inputs, in input order; ``None`` when there is none to take.

    Only a batch run ``recoverable`` (every item recorded with its inputs) can be taken: the
    others need their input again (``dspex batch … --resume``). The claim is one conditional
    write, so of processes looking at once exactly one takes a batch; it holds the lease as
    long as a run would, so the caller resumes the batch (:func:`run_batch` with ``resume``)
    before it lapses again.
    """
    store = ctx.store
    for record in await store.lapsed_batches():
        if not isinstance(record.config, Mapping) or record.config.get("inputs") != "stored":
            continue
        driver = new_worker_id(ctx.worker_id)
        taken = await store.take_batch_driver(
            record.id, driver, ctx.lease_seconds, lapsed_only=True
        )
        if taken is None:
            continue  # another process took it first
        items = [dict(execution.inputs) async for execution in store.iter_batch_results(taken.id)]
        if len(items) != taken.total:  # pragma: no cover - recorded before the driver starts
            await store.release_batch_driver(taken.id, driver)
            continue
        return taken, items
    return None


def stored_options(config: Mapping[str, Any]) -> BatchOptions:
    """The options a batch was started with, from its recorded config (to resume it as it ran;
    in this process, as a taken-over batch runs)."""
    values = {
        name: config[name]
        for name in ("max_concurrency", "max_retries", "max_errors", "item_timeout", "deadline")
        if config.get(name) is not None
    }
    if config.get("max_cost") is not None:
        values["max_cost"] = config["max_cost"]
    if config.get("validate") is not None:
        values["validate"] = config["validate"]
    return BatchOptions.of(**values)


async def batch_results(store: Store, batch_id: str) -> AsyncIterator[ItemResult]:
    """Every item of a batch in input order, read from the store a chunk at a time."""
    await store.get_batch(batch_id)
    async for record in store.iter_batch_results(batch_id):
        yield ItemResult.from_record(record)
