"""Read-only queries: executions (list, show), a program's history and its graph.

Everything here reads the store and returns the public models of :mod:`dspex.actions.models`;
nothing writes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from dspex._critical_path import is_child_step
from dspex._percentile import percentile, report_ms
from dspex.actions.models import (
    AttemptInfo,
    BatchProfile,
    Bottleneck,
    ErrorInfo,
    ExecutionDetail,
    ExecutionPage,
    ExecutionSummary,
    GraphInfo,
    GraphModule,
    ModuleDurations,
    ModuleHistory,
    ProgramHistory,
    SlowItem,
    StepInfo,
)
from dspex.engine.history import median_durations, summarize
from dspex.errors import ErrorDetail, NotFoundError, ValidationError
from dspex.records import (
    AttemptRecord,
    BatchRecord,
    ExecutionFilter,
    ExecutionRecord,
    ExecutionStatus,
    StepRecord,
)

if TYPE_CHECKING:
    from dspex.actions.programs import ProgramCache
    from dspex.engine.program import Program
    from dspex.store.base import ExecutionStore, Store

__all__ = [
    "execution_detail",
    "graph_info",
    "list_executions",
    "program_deps",
    "program_history",
]

_BACKEND_KINDS = ("predict", "chain_of_thought")


async def execution_detail(store: ExecutionStore, execution_id: str) -> ExecutionDetail:
    """Everything recorded about one execution.

    Raises:
        NotFoundError: no such execution.
    """
    record = await store.get_execution(execution_id)
    steps = await store.list_steps(execution_id)
    attempts = await store.list_attempts(execution_id)
    return _detail(record, steps, attempts)


def _detail(
    record: ExecutionRecord, steps: list[StepRecord], attempts: list[AttemptRecord]
) -> ExecutionDetail:
    backend_of: dict[str, str] = {}
    for attempt in attempts:
        backend_of[attempt.module] = attempt.backend
    base = record.started_at or record.created_at
    step_infos = [
        StepInfo.from_record(s, base=base, backend=backend_of.get(s.module)) for s in steps
    ]
    # Predictor calls inside a dspy module are steps too (dotted names); the execution's
    # attempts and the module an error is charged to are the program's own modules.
    modules = [s for s in steps if not is_child_step(s.module)]
    error = None
    if record.error_code is not None:
        module = next((s.module for s in modules if s.error_code == record.error_code), None)
        error = ErrorInfo(code=record.error_code, message=record.error_message or "", module=module)
    return ExecutionDetail(
        execution_id=record.id,
        program=record.program,
        program_version=record.program_version,
        status=record.status,
        outputs=record.outputs,
        error=error,
        duration_ms=record.duration_ms,
        usage=record.usage,
        steps=step_infos,
        attempts=sum(s.attempts for s in modules),
        cost_usd=record.cost_usd,
        inputs=record.inputs,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        backend=record.backend,
        worker_id=record.worker_id,
        batch_id=record.batch_id,
        batch_index=record.batch_index,
        attempt_records=[AttemptInfo.from_record(a) for a in attempts],
    )


async def list_executions(
    store: Store,
    *,
    program: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> ExecutionPage:
    """Executions, newest first, optionally of one program and/or one status.

    Raises:
        ValidationError: unknown status, non-positive limit or a bad cursor.
    """
    statuses: tuple[ExecutionStatus, ...] = ()
    if status is not None:
        try:
            statuses = (ExecutionStatus(status),)
        except ValueError:
            known = ", ".join(s.value for s in ExecutionStatus)
            raise ValidationError(
                "unknown execution status:",
                [ErrorDetail("status", "invalid", f"{status!r} is not one of {known}")],
            ) from None
    page = await store.list_executions(
        ExecutionFilter(program=program, statuses=statuses), limit=limit, cursor=cursor
    )
    return ExecutionPage(
        items=[ExecutionSummary.from_record(r) for r in page.items], next_cursor=page.next_cursor
    )


def program_deps(program: Program) -> dict[str, tuple[str, ...]]:
    """Each module's dependencies by name (what history analysis walks back along)."""
    graph = program.graph
    return {
        name: tuple(graph.names[d] for d in graph.deps[i]) for i, name in enumerate(graph.names)
    }


async def program_history(
    store: Store, cache: ProgramCache, name: str, *, limit: int = 200
) -> ProgramHistory:
    """Per-module timings, critical path and bottlenecks of a program's recent executions.

    Args:
        store: the store.
        cache: parsed programs.
        name: the program.
        limit: how many of the most recent executions to analyse.

    Raises:
        NotFoundError: no such program.
    """
    record = await store.get_program(name)
    program = cache.get(record)
    versions = [p for p in await store.list_programs(all_versions=True) if p.name == name]
    executions = sum(p.execution_count for p in versions)
    successes = sum(p.success_count for p in versions)
    raw = await store.list_steps_for_program(
        name, limit=max(1, limit) * max(1, len(program.modules))
    )
    by_run: dict[str | None, list[StepRecord]] = defaultdict(list)
    for step in raw:  # newest first
        if step.execution_id in by_run or len(by_run) < limit:
            by_run[step.execution_id].append(step)
    steps = [s for run in by_run.values() for s in run]
    summary = summarize(steps, program_deps(program))
    return ProgramHistory(
        program=name,
        executions=executions,
        success_rate=successes / executions if executions else None,
        modules=[
            ModuleHistory(
                module=m.module,
                runs=m.runs,
                p50_ms=report_ms(m.p50_ms),
                p95_ms=report_ms(m.p95_ms),
                success_rate=m.success_rate,
                critical_share=m.critical_share,
            )
            for m in summary.modules
        ],
        critical_path=list(summary.critical_path),
        bottlenecks=[
            Bottleneck(module=b.module, reason=b.reason, share=b.share) for b in summary.bottlenecks
        ],
    )


BATCH_SAMPLE = 500
"""The most executions of a batch whose steps :func:`batch_profile` reads (the slowest first)."""
_SLOWEST = 5


async def batch_profile(
    store: Store, batch: BatchRecord, sample: int = BATCH_SAMPLE
) -> BatchProfile:
    """Where a batch's time went: each module's duration distribution over the batch's items
    (read from the ``sample`` slowest executions' steps) and the slowest items."""
    executions: list[ExecutionRecord] = []
    cursor: str | None = None
    while True:
        page = await store.list_executions(
            ExecutionFilter(batch_id=batch.id), limit=1000, cursor=cursor
        )
        executions.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    by_duration = sorted(executions, key=lambda e: -(e.duration_ms or 0.0))
    durations: dict[str, list[float]] = defaultdict(list)
    for execution in by_duration[:sample]:
        for step in await store.list_steps(execution.id):
            if step.duration_ms is not None and not is_child_step(step.module):
                durations[step.module].append(step.duration_ms)
    modules = []
    for module in durations:  # in the order the runs recorded them
        values = sorted(durations[module])
        modules.append(
            ModuleDurations(
                module=module,
                runs=len(values),
                p50_ms=report_ms(percentile(values, 50, presorted=True)),
                p95_ms=report_ms(percentile(values, 95, presorted=True)),
                max_ms=report_ms(values[-1]),
            )
        )
    slowest = [
        SlowItem(
            batch_index=e.batch_index,
            execution_id=e.id,
            status=e.status,
            duration_ms=e.duration_ms,
        )
        for e in by_duration[:_SLOWEST]
    ]
    return BatchProfile(
        batch_id=batch.id,
        items=len(executions),
        sampled=min(len(executions), sample),
        modules=modules,
        slowest=slowest,
    )


async def graph_info(
    store: Store,
    cache: ProgramCache,
    name: str,
    version: int | None = None,
    batch_id: str | None = None,
) -> GraphInfo:
    """A program's plan (weighted by recorded median durations), its last execution and, with
    ``batch_id``, that batch's profile (:func:`batch_profile`; its program version is the one
    planned).

    Raises:
        NotFoundError: no such program (version) or batch.
    """
    profile = None
    if batch_id is not None:
        batch = await store.get_batch(batch_id)
        if batch.program != name:
            raise NotFoundError(f"batch {batch_id!r} is a batch of {batch.program!r}, not {name!r}")
        profile = await batch_profile(store, batch)
        version = batch.program_version if version is None else version
    record = await store.get_program(name, version)
    program = cache.get(record)
    steps = await store.list_steps_for_program(name, version=record.version, limit=1000)
    plan = program.plan(median_durations(steps) or None)
    deps = program_deps(program)
    modules = [
        GraphModule(
            name=module,
            kind=spec.kind,
            depends_on=list(deps[module]),
            backend=spec.backend_name if spec.kind in _BACKEND_KINDS else spec.backend,
        )
        for module, spec in program.modules.items()
    ]
    last = await store.list_executions(
        ExecutionFilter(program=name, program_version=record.version), limit=1
    )
    last_run = None
    if last.items:
        try:
            last_run = await execution_detail(store, last.items[0].id)
        except NotFoundError:  # deleted between the two reads (retention cleanup)
            last_run = None
    return GraphInfo(
        program=name,
        version=record.version,
        plan=plan.to_dict(),
        modules=modules,
        last_run=last_run,
        batch=profile,
    )
