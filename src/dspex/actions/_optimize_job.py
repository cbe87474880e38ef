"""An optimization run checked before anything is recorded: its data sets, optimizer plan and
settings; and, to resume one, what its record says it was started with. See
:mod:`dspex.actions.optimize`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.actions._optimizers import OPTIMIZERS, OptimizerPlan, backend_lm, find_backend
from dspex.actions._optimizers import plan as make_plan
from dspex.actions.programs import default_version
from dspex.batch.inputs import open_source
from dspex.config import OptimizeSettings
from dspex.engine.dspy_program import is_dspy_program
from dspex.errors import DspexError, ErrorDetail, OptimizationError, ValidationError
from dspex.metrics import Metric, make_example, metric_label_fields, resolve_metric
from dspex.records import OptimizationRecord, OptimizationStatus, ProgramRecord

if TYPE_CHECKING:
    from dspex.actions.optimize import OptimizeContext
    from dspex.config import Settings
    from dspex.engine.program import Program

__all__ = [
    "DataSet",
    "Job",
    "check_resumable",
    "dataset_hash",
    "lost",
    "no_settings_with_resume",
    "prepare",
    "read_rows",
    "resumed",
]

DataSet = str | Path | Sequence[Mapping[str, Any]]


def dataset_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of a data set's canonical JSON lines (keys sorted): the same examples in the same
    order hash the same wherever they came from."""
    digest = hashlib.sha256()
    for row in rows:
        line = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def read_rows(data: DataSet, what: str) -> list[dict[str, Any]]:
    """The examples of a JSONL file (or a list), every bad line named at once."""
    source = open_source(data if isinstance(data, str | Path) else list(data))
    rows: list[dict[str, Any]] = []
    problems: list[ErrorDetail] = []
    with source:
        for raw in source:
            where = f"{what}[{raw.index}]"
            if raw.problem is not None:
                line = f"line {raw.line}: " if raw.line is not None else ""
                problems.append(ErrorDetail(where, "invalid_example", line + raw.problem))
            else:
                rows.append(dict(raw.value))
    if problems:
        raise ValidationError(f"the {what} has invalid examples:", problems)
    if not rows:
        raise ValidationError(
            f"the {what} is empty:", [ErrorDetail(what, "empty", "give at least one example")]
        )
    return rows


def examples(rows: Sequence[Mapping[str, Any]], program: Program, what: str) -> list[Any]:
    """``dspy.Example`` objects whose inputs are the program's inputs and whose labels are the
    rest; an example without a required input or without any label is refused."""
    signature = program.signature
    names = [f.name for f in signature.input_fields]
    required = [f.name for f in signature.input_fields if not f.optional]
    problems: list[ErrorDetail] = []
    examples: list[Any] = []
    for index, row in enumerate(rows):
        where = f"{what}[{index}]"
        missing = [name for name in required if name not in row]
        if missing:
            problems.append(
                ErrorDetail(where, "missing_input", f"no value for the input(s) {missing}")
            )
            continue
        present = [name for name in names if name in row]
        example = make_example(row, present)
        try:
            metric_label_fields(example)
        except DspexError as exc:
            problems.append(ErrorDetail(where, "no_label", exc.message))
            continue
        examples.append(example)
    if problems:
        raise ValidationError(f"the {what} does not fit program {program.name!r}:", problems)
    return examples


@dataclass(slots=True)
class Job:
    """An optimization run, checked and ready to record and run."""

    record: ProgramRecord
    program: Program
    settings: Settings
    plan: OptimizerPlan
    metric: str
    metric_fn: Metric
    seed: int | None
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]] | None
    train: list[Any]
    val: list[Any] | None
    student_lm: Any
    request: dict[str, Any]


async def prepare(
    ctx: OptimizeContext,
    name: str,
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]] | None,
    *,
    metric: str,
    optimizer: str,
    version: int | None,
    seed: int | None,
    max_demos: int,
    settings: Settings,
) -> Job:
    """Everything checked before anything is recorded."""
    if optimizer not in OPTIMIZERS:
        message = f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}"
        raise ValidationError(message, [ErrorDetail("optimizer", "unknown_optimizer", message)])
    if max_demos < 0:
        message = f"max_demos must be 0 or more, got {max_demos}"
        raise ValidationError(message, [ErrorDetail("max_demos", "out_of_range", message)])
    metric_fn = resolve_metric(metric, allowed_imports=settings.allowed_imports)
    version = await default_version(ctx.store, name, version)
    record = await ctx.store.get_program(name, version)
    program = ctx.programs.get(record)
    train = examples(train_rows, program, "trainset")
    val = examples(val_rows, program, "valset") if val_rows is not None else None
    plan = make_plan(
        optimizer,
        metric_fn,
        max_demos=max_demos,
        seed=seed,
        settings=settings,
        backends=ctx.backends,
    )
    student_lm = None
    if is_dspy_program(program):
        (spec,) = program.modules.values()
        if spec.backend is not None:
            backend = find_backend(ctx.backends, spec.backend_name, f"module {spec.module}")
            student_lm = backend_lm(backend, f"module {spec.module}")
    request = {
        "trainset": train_rows,
        "valset": val_rows,
        "max_demos": max_demos,
        "optimize": settings.optimize.model_dump(mode="json"),
    }
    return Job(
        record,
        program,
        settings,
        plan,
        metric,
        metric_fn,
        seed,
        train_rows,
        val_rows,
        train,
        val,
        student_lm,
        request,
    )


async def resumed(ctx: OptimizeContext, optimization_id: str, name: str | None) -> Job:
    """The job of a recorded run, with the settings, data sets and seed it was started with.

    Raises:
        NotFoundError: no such run.
        OptimizationError: the run completed, still runs under a live lease, or was recorded
            without its request.
    """
    run = await ctx.store.get_optimization(optimization_id)
    if name is not None and name != run.program:
        message = f"optimization {optimization_id} optimizes {run.program!r}, not {name!r}"
        raise ValidationError(message, [ErrorDetail("program", "mismatch", message)])
    check_resumable(run, ctx.store_now())
    request = await ctx.store.get_optimization_request(optimization_id)
    if request is None:
        raise OptimizationError(
            f"optimization {optimization_id} was recorded without its data sets: it cannot be"
            " resumed (run dspex optimize again)"
        )
    settings = ctx.settings.model_copy(
        update={"optimize": OptimizeSettings.model_validate(request["optimize"])}
    )
    return await prepare(
        ctx,
        run.program,
        list(request["trainset"]),
        None if request.get("valset") is None else list(request["valset"]),
        metric=run.metric,
        optimizer=run.optimizer,
        version=run.program_version,
        seed=run.seed,
        max_demos=int(request["max_demos"]),
        settings=settings,
    )


def check_resumable(run: OptimizationRecord, now: datetime) -> None:
    if run.status is OptimizationStatus.COMPLETED:
        raise OptimizationError(
            f"optimization {run.id} already completed (version {run.result_version}):"
            " there is nothing to resume"
        )
    if run.status is OptimizationStatus.RUNNING and not lost(run, now):
        held = f" by {run.worker_id}" if run.worker_id else ""
        raise OptimizationError(
            f"optimization {run.id} is still running{held}: it can be resumed once it stops"
            " (or its process stops renewing its lease)"
        )


def lost(run: OptimizationRecord, now: datetime) -> bool:
    """Whether a ``running`` run's process stopped renewing its lease (died or hung)."""
    return (
        run.status is OptimizationStatus.RUNNING
        and run.lease_expires_at is not None
        and run.lease_expires_at < now
    )


def no_settings_with_resume(**given: Any) -> None:
    named = [key for key, value in given.items() if value is not None]
    if named:
        message = (
            f"a resumed run keeps the settings it was started with: leave out {', '.join(named)}"
        )
        raise ValidationError(message, [ErrorDetail(key, "with_resume", message) for key in named])
