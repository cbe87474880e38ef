"""evaluate: a batch with a metric, recorded and resumable (DESIGN §11, "Versions and promotion").

resolve the metric → read the devset once (every line an object with the program's inputs; the
other fields are its labels, each one an output of the program) and hash it → run the inputs as a
batch (the same runner, retries, workers and resumability as ``run_batch``; the evaluation record
is created as soon as the batch is) → once every item is terminal, score each item with the
metric (an item that did not complete scores 0 and counts in ``failed``), store the item scores
and finish the evaluation with their mean.

A resumed evaluation (``resume=`` its batch id) runs the items the batch has not completed and
scores every item again; scoring is idempotent. :func:`compare` evaluates two versions on the
same devset and reports a paired bootstrap interval of the difference of their scores.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from dspex._percentile import percentile
from dspex.actions.programs import ProgramCache, default_version
from dspex.batch.inputs import read_jsonl
from dspex.batch.options import BatchOptions
from dspex.batch.progress import ProgressCallback
from dspex.batch.stats import BatchStats
from dspex.errors import ErrorDetail, MetricError, ValidationError
from dspex.metrics import (
    EXAMPLE_METADATA_KEY,
    Metric,
    make_example,
    make_prediction,
    resolve_metric,
    score_prediction,
)
from dspex.records import EvaluationRecord, EvaluationStatus, ExecutionRecord, ItemScore

if TYPE_CHECKING:
    from dspex.actions.batch import BatchResult
    from dspex.engine.program import Program
    from dspex.store.base import Store

__all__ = [
    "ComparisonResult",
    "EvaluationResult",
    "RunBatch",
    "compare",
    "devset_hash",
    "evaluate",
    "evaluation_result",
    "paired_bootstrap",
]

_SCORE_CHUNK = 500
_RESAMPLES = 1000


class RunBatch(Protocol):
    """How an evaluation runs its batch: :meth:`dspex.Runtime.run_batch`."""

    def __call__(
        self,
        program: str,
        items: Any,
        *,
        version: int | None = ...,
        options: BatchOptions | None = ...,
        resume: str | None = ...,
        on_progress: ProgressCallback | None = ...,
        on_start: Callable[[str], Awaitable[None] | None] | None = ...,
    ) -> Awaitable[BatchResult]: ...


class EvaluationResult(BaseModel):
    """A program version measured on a devset with a metric.

    Attributes:
        evaluation_id: the recorded evaluation.
        program: the program name.
        version: the version evaluated.
        metric: the metric's name (a built-in or ``pkg.mod:function``).
        score: the mean metric over all ``n`` items (``None`` while incomplete).
        n: items in the devset.
        failed: items whose execution did not complete (each scored 0).
        batch_id: the batch that ran the items (resume it with ``resume=``).
        devset_hash: sha256 of the devset file, so a later ``promote`` can reuse the score.
        status: ``completed``, or ``incomplete`` when the batch stopped before every item ran.
        stats: the batch run's statistics (``None`` for a recorded evaluation read back).
        out: the per-item file written, if one was asked for.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    evaluation_id: str
    program: str
    version: int
    metric: str
    score: float | None
    n: int
    failed: int | None
    batch_id: str | None
    devset_hash: str
    status: Literal["completed", "incomplete"]
    stats: BatchStats | None = None
    out: str | None = None


class ComparisonResult(BaseModel):
    """Two versions evaluated on the same devset items, and how their scores differ.

    Attributes:
        program: the program name.
        metric: the metric.
        n: items compared (the devset's).
        a: the first version's evaluation.
        b: the second version's evaluation.
        difference: ``b.score - a.score``.
        interval: the paired bootstrap 95% interval of the difference (2.5th and 97.5th
            percentiles of the mean difference over resampled items).
        resamples: bootstrap resamples drawn.
        seed: the bootstrap's seed (the same seed gives the same interval).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    metric: str
    n: int
    a: EvaluationResult
    b: EvaluationResult
    difference: float
    interval: tuple[float, float]
    resamples: int
    seed: int


def evaluation_result(
    record: EvaluationRecord, *, stats: BatchStats | None = None, out: str | None = None
) -> EvaluationResult:
    """The result model of a recorded evaluation."""
    return EvaluationResult(
        evaluation_id=record.id,
        program=record.program,
        version=record.program_version,
        metric=record.metric,
        score=record.score,
        n=record.total,
        failed=record.failed,
        batch_id=record.batch_id,
        devset_hash=record.devset_hash,
        status="completed" if record.status is EvaluationStatus.COMPLETED else "incomplete",
        stats=stats,
        out=out,
    )


# ------------------------------------------------------------------------------- the devset


def devset_hash(path: Path) -> str:
    """sha256 of the devset file's bytes (what makes two evaluations comparable)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_devset(path: Path, program: Program) -> tuple[int, set[str]]:
    """Read the devset once: every line an object holding the program's inputs, with at least
    one label, every label an output of the program. Returns the item count and label names.

    Raises:
        ValidationError: naming every bad line (nothing ran).
    """
    inputs = {f.name for f in program.signature.input_fields}
    required = {f.name for f in program.signature.input_fields if not f.optional}
    outputs = {f.name for f in program.signature.output_fields}
    problems: list[ErrorDetail] = []
    labels: set[str] = set()
    count = 0
    try:
        for raw in read_jsonl(path):
            count += 1
            where = f"devset[{raw.index}]"
            if raw.problem is not None:
                problems.append(ErrorDetail(where, "invalid_item", raw.problem))
                continue
            fields = set(raw.value) - {EXAMPLE_METADATA_KEY}
            missing = sorted(required - fields)
            if missing:
                problems.append(
                    ErrorDetail(where, "missing_input", f"line {raw.line}: no input {missing}")
                )
            mine = fields - inputs
            if not mine:
                problems.append(
                    ErrorDetail(where, "no_label", f"line {raw.line}: no label (no output field)")
                )
            unknown = sorted(mine - outputs)
            if unknown:
                problems.append(
                    ErrorDetail(
                        where,
                        "unknown_label",
                        f"line {raw.line}: {unknown} are neither inputs nor outputs of the"
                        f" program (outputs: {sorted(outputs)})",
                    )
                )
            labels |= mine
    except OSError as exc:
        raise ValidationError(
            f"cannot read the devset {str(path)!r}:",
            [ErrorDetail("devset", "unreadable", str(exc))],
        ) from None
    if not count:
        problems.append(ErrorDetail("devset", "empty", "the devset has no items"))
    if problems:
        shown = problems[:20]
        head = f"the devset {str(path)!r} has {len(problems)} problems"
        raise ValidationError(head + (":" if len(problems) <= 20 else " (first 20):"), shown)
    return count, labels


def _unreadable(path: Path, exc: OSError) -> ValidationError:
    return ValidationError(
        f"cannot read the devset {str(path)!r}:", [ErrorDetail("devset", "unreadable", str(exc))]
    )


def _inputs(path: Path, names: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The program inputs of every devset item (labels left out), streamed."""
    for raw in read_jsonl(path):
        yield {name: raw.value[name] for name in names if name in raw.value}


# ------------------------------------------------------------------------------- evaluate


async def evaluate(
    store: Store,
    cache: ProgramCache,
    run_batch: RunBatch,
    program: str,
    devset: str | os.PathLike[str],
    *,
    metric: str,
    allowed_imports: Sequence[str],
    version: int | None = None,
    options: BatchOptions | None = None,
    resume: str | None = None,
    on_progress: ProgressCallback | None = None,
    out: str | os.PathLike[str] | None = None,
    on_start: Callable[[str], Awaitable[None] | None] | None = None,
) -> EvaluationResult:
    """Run a program version over ``devset`` as a batch and score every item with ``metric``.

    See :meth:`dspex.Runtime.evaluate` for the arguments.

    Raises:
        MetricError: an unknown metric, one that cannot be imported, or one that raised or
            returned something that is not a score (the evaluation stays resumable).
        SecurityError: a ``pkg.mod:function`` metric outside ``allowed_imports``.
        ValidationError: a bad devset line (every one named), or a resumed batch that is not an
            evaluation of this devset and metric.
        NotFoundError: no such program (version) or batch.
        MaxErrorsExceeded: the batch stopped after too many failures (resumable).
    """
    scorer = resolve_metric(metric, allowed_imports=allowed_imports)
    path = Path(devset)
    try:
        digest = await asyncio.to_thread(devset_hash, path)
    except OSError as exc:
        raise ValidationError(
            f"cannot read the devset {str(path)!r}:",
            [ErrorDetail("devset", "unreadable", str(exc))],
        ) from None
    where = await asyncio.to_thread(os.path.abspath, path)
    evaluation: EvaluationRecord | None = None
    if resume is not None:
        evaluation = await _resumable(store, resume, program, metric, digest)
        if evaluation.status is EvaluationStatus.COMPLETED:
            return evaluation_result(evaluation)
        version = evaluation.program_version
    record = await store.get_program(program, await default_version(store, program, version))
    parsed = cache.get(record)
    total, labels = await asyncio.to_thread(_check_devset, path, parsed)
    if metric == "answer_exact_match" and "answer" not in labels:
        raise MetricError(
            f"answer_exact_match compares the 'answer' field, and the devset's labels are"
            f" {sorted(labels)} (exact_match compares every label field)"
        )

    async def started(batch_id: str) -> None:
        nonlocal evaluation
        if on_start is not None:
            outcome = on_start(batch_id)
            if inspect.isawaitable(outcome):
                await outcome
        if evaluation is None:
            evaluation = await store.create_evaluation(
                program=program,
                version=record.version,
                metric=metric,
                devset_hash=digest,
                devset=where,
                batch_id=batch_id,
                total=total,
            )

    input_names = [f.name for f in parsed.signature.input_fields]
    # an evaluation reads and writes the response cache unless told otherwise (a module's or
    # backend's own mode, or the run's --cache, still wins)
    options = options or BatchOptions()
    if options.cache_default is None:
        options = options.model_copy(update={"cache_default": "read_write"})
    batch = await run_batch(
        program,
        _inputs(path, input_names),
        version=record.version,
        options=options,
        resume=resume,
        on_progress=on_progress,
        on_start=started,
    )
    if evaluation is None:  # pragma: no cover - run_batch calls on_start before any item
        await started(batch.batch_id)
    assert evaluation is not None
    if batch.status != "completed":
        return evaluation_result(evaluation, stats=batch.stats)
    done = await _score(store, evaluation, scorer, path, input_names, out)
    return evaluation_result(done, stats=batch.stats, out=None if out is None else str(out))


async def _resumable(
    store: Store, batch_id: str, program: str, metric: str, digest: str
) -> EvaluationRecord:
    evaluation = await store.evaluation_for_batch(batch_id)
    if evaluation is None:
        await store.get_batch(batch_id)  # NotFoundError when there is no such batch at all
        raise ValidationError(
            f"batch {batch_id!r} is not an evaluation:",
            [ErrorDetail("resume", "not_an_evaluation", "resume it with `dspex batch`")],
        )
    problems = []
    if evaluation.program != program:
        problems.append(
            ErrorDetail("program", "mismatch", f"the evaluation's is {evaluation.program!r}")
        )
    if evaluation.metric != metric:
        problems.append(
            ErrorDetail("metric", "mismatch", f"the evaluation's is {evaluation.metric!r}")
        )
    if evaluation.devset_hash != digest:
        problems.append(
            ErrorDetail("devset", "changed", "the devset differs from the one evaluated")
        )
    if problems:
        raise ValidationError(f"cannot resume evaluation of batch {batch_id!r}:", problems)
    return evaluation


async def _score(
    store: Store,
    evaluation: EvaluationRecord,
    metric: Metric,
    path: Path,
    input_names: Sequence[str],
    out: str | os.PathLike[str] | None,
) -> EvaluationRecord:
    """Score every item, store the scores in chunks, write ``out``, finish the evaluation."""
    assert evaluation.batch_id is not None
    total = 0.0
    failed = 0
    with contextlib.ExitStack() as stack:
        handle = None
        if out is not None:
            handle = stack.enter_context(Path(out).open("w", encoding="utf-8"))  # noqa: ASYNC230
        chunk: list[tuple[dict[str, Any], ExecutionRecord | None]] = []
        results = _by_index(store.iter_batch_results(evaluation.batch_id))
        for raw in read_jsonl(path):
            chunk.append((raw.value, await results.at(raw.index)))
            if len(chunk) >= _SCORE_CHUNK:
                scored = await asyncio.to_thread(_score_chunk, metric, chunk, input_names)
                total, failed = await _keep(store, evaluation.id, scored, handle, total, failed)
                chunk = []
        if chunk:
            scored = await asyncio.to_thread(_score_chunk, metric, chunk, input_names)
            total, failed = await _keep(store, evaluation.id, scored, handle, total, failed)
    return await store.finish_evaluation(
        evaluation.id, score=total / evaluation.total, failed=failed
    )


class _by_index:
    """Walk a batch's results (in index order) alongside the devset lines."""

    def __init__(self, records: AsyncIterator[ExecutionRecord]) -> None:
        self._records = records
        self._next: ExecutionRecord | None = None
        self._done = False

    async def at(self, index: int) -> ExecutionRecord | None:
        while not self._done:
            if self._next is None:
                try:
                    self._next = await anext(self._records)
                except StopAsyncIteration:
                    self._done = True
                    break
            position = self._next.batch_index if self._next.batch_index is not None else -1
            if position > index:
                return None
            found, self._next = self._next, None
            if position == index:
                return found
        return None


def _score_chunk(
    metric: Metric,
    chunk: Sequence[tuple[dict[str, Any], ExecutionRecord | None]],
    input_names: Sequence[str],
) -> list[tuple[ItemScore, ExecutionRecord | None]]:
    out = []
    for value, record in chunk:
        index = record.batch_index if record is not None and record.batch_index is not None else -1
        if record is None or record.status.value != "completed":
            status = "missing" if record is None else record.status.value
            eid = None if record is None else record.id
            out.append((ItemScore(index, eid, status, 0.0), record))
            continue
        example = make_example(value, [n for n in input_names if n in value])
        try:
            score = score_prediction(metric, example, make_prediction(record.outputs))
        except MetricError as exc:
            raise MetricError(f"item {index}: {exc.message}") from exc
        out.append((ItemScore(index, record.id, "completed", score), record))
    return out


async def _keep(
    store: Store,
    evaluation_id: str,
    scored: Sequence[tuple[ItemScore, ExecutionRecord | None]],
    handle: Any,
    total: float,
    failed: int,
) -> tuple[float, int]:
    await store.put_item_scores(evaluation_id, [item for item, _ in scored])
    for item, record in scored:
        total += item.score
        failed += item.status != "completed"
        if handle is not None:
            line: dict[str, Any] = {"index": item.index, "status": item.status}
            line["score"] = item.score
            if record is not None and record.outputs is not None:
                line["outputs"] = record.outputs
            if record is not None and record.error_code is not None:
                line["error"] = {"code": record.error_code, "message": record.error_message}
            line["execution_id"] = item.execution_id
            handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
    return total, failed


# ------------------------------------------------------------------------------- compare


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, resamples: int = _RESAMPLES
) -> tuple[float, float]:
    """The 95% interval of ``mean(b) - mean(a)`` over paired items, by bootstrap.

    Each resample draws ``n`` item indexes with replacement (``random.Random(seed)``) and takes
    the mean of the paired differences; the interval is the 2.5th and 97.5th percentiles of
    those means (:func:`dspex._percentile.percentile`).
    """
    if len(a) != len(b) or not a:
        raise ValidationError(
            "a paired bootstrap needs the same, non-zero number of items on both sides:",
            [ErrorDetail("items", "mismatch", f"{len(a)} and {len(b)}")],
        )
    rng = random.Random(seed)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    low = percentile(means, 2.5, presorted=True)
    high = percentile(means, 97.5, presorted=True)
    assert low is not None
    assert high is not None
    return low, high


async def item_scores(store: Store, evaluation_id: str) -> list[float]:
    """Every item's score of an evaluation, in item order."""
    return [s.score async for s in store.iter_item_scores(evaluation_id)]


async def compare(
    store: Store,
    a: EvaluationResult,
    b: EvaluationResult,
    *,
    seed: int = 0,
    resamples: int = _RESAMPLES,
) -> ComparisonResult:
    """Compare two completed evaluations of the same devset and metric.

    Raises:
        ValidationError: they are not both completed, or differ in devset or metric.
    """
    problems = []
    if a.status != "completed" or b.status != "completed":
        problems.append(ErrorDetail("status", "incomplete", "both evaluations must complete"))
    if a.devset_hash != b.devset_hash:
        problems.append(ErrorDetail("devset", "mismatch", "the devsets differ"))
    if a.metric != b.metric:
        problems.append(ErrorDetail("metric", "mismatch", f"{a.metric} and {b.metric}"))
    if problems:
        raise ValidationError("cannot compare the two evaluations:", problems)
    first = await item_scores(store, a.evaluation_id)
    second = await item_scores(store, b.evaluation_id)
    interval = await asyncio.to_thread(
        paired_bootstrap, first, second, seed=seed, resamples=resamples
    )
    assert a.score is not None
    assert b.score is not None
    return ComparisonResult(
        program=a.program,
        metric=a.metric,
        n=a.n,
        a=a,
        b=b,
        difference=b.score - a.score,
        interval=interval,
        resamples=resamples,
        seed=seed,
    )
