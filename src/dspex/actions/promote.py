"""promote: move a program's current-version pointer past a score gate (DESIGN §11).

A program's *current* version is what ``run``, ``batch`` and the service use when no version is
named; until a version is first promoted it is the newest, as it always was. Promoting a version
(which must be ``ready``) measures it and the version in use on a devset with a metric, reusing a
recorded evaluation of the same version, devset (by hash) and metric when there is one, and moves
the pointer only when ``score >= previous_score + min_improvement``; otherwise
:class:`~dspex.errors.PromotionRefusedError` names both scores. ``force`` skips the gate (scores
are still measured and recorded when a devset and metric are given). Every move is recorded:
who, when, forced or not, and the scores compared. Rollback is promoting an older version.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from dspex.actions.evaluate import EvaluationResult, devset_hash, evaluation_result
from dspex.errors import (
    ErrorDetail,
    ProgramStateError,
    PromotionRefusedError,
    ValidationError,
)
from dspex.records import ProgramStatus, PromotionRecord

if TYPE_CHECKING:
    from dspex.store.base import Store

__all__ = ["Evaluator", "PromotionResult", "promote", "promotion_result"]

Evaluator = Callable[[int], Awaitable[EvaluationResult]]
"""Evaluates one version of the program on the promotion's devset with its metric."""


class PromotionResult(BaseModel):
    """A move of a program's current version (what :meth:`dspex.Runtime.promote` returns).

    Attributes:
        program: the program name.
        version: the version now current.
        previous_version: the version in use before (the one last promoted, else the newest
            ready version; ``None`` when there was none).
        forced: the score gate was skipped.
        metric: the metric compared, if any.
        devset_hash: the devset compared on, if any.
        score: the promoted version's score.
        previous_score: the previous version's score.
        min_improvement: the margin the gate required.
        promoted_by: who promoted it.
        created_at: when.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    version: int
    previous_version: int | None
    forced: bool
    metric: str | None
    devset_hash: str | None
    score: float | None
    previous_score: float | None
    min_improvement: float | None
    promoted_by: str
    created_at: datetime


def promotion_result(record: PromotionRecord, *, previous: int | None) -> PromotionResult:
    """The result model of a recorded promotion (``previous``: the version in use before)."""
    return PromotionResult(
        program=record.program,
        version=record.version,
        previous_version=previous,
        forced=record.forced,
        metric=record.metric,
        devset_hash=record.devset_hash,
        score=record.score,
        previous_score=record.previous_score,
        min_improvement=record.min_improvement,
        promoted_by=record.promoted_by,
        created_at=record.created_at,
    )


async def in_use(store: Store, name: str, *, besides: int | None = None) -> int | None:
    """The version in use: the current one, else the newest ready version other than
    ``besides`` (the candidate), else ``None``."""
    current = await store.current_version(name)
    if current is not None:
        return current
    versions = await store.list_programs(all_versions=True)
    ready = [
        p.version
        for p in versions
        if p.name == name and p.status is ProgramStatus.READY and p.version != besides
    ]
    return max(ready, default=None)


async def promote(
    store: Store,
    name: str,
    version: int,
    *,
    evaluate: Evaluator | None,
    devset: str | os.PathLike[str] | None,
    metric: str | None,
    min_improvement: float = 0.0,
    force: bool = False,
    promoted_by: str,
) -> PromotionResult:
    """Make ``version`` current if it scores at least the version in use plus
    ``min_improvement`` on ``devset`` with ``metric`` (see the module docstring).

    Raises:
        ValidationError: no devset and metric without ``force``, or only one of them, or a
            negative or non-finite ``min_improvement``.
        NotFoundError: no such program version.
        ProgramStateError: the version is not ready, or another promotion moved the pointer
            meanwhile.
        PromotionRefusedError: the gate refused it (both scores named).
    """
    problems = []
    if (devset is None) != (metric is None):
        problems.append(
            ErrorDetail("devset", "incomplete", "give both a devset and a metric, or neither")
        )
    elif devset is None and not force:
        problems.append(
            ErrorDetail(
                "devset", "required", "the score gate needs a devset and a metric (or force)"
            )
        )
    if not min_improvement >= 0.0 or min_improvement == float("inf"):
        problems.append(
            ErrorDetail(
                "min_improvement", "invalid", f"must be finite and >= 0, got {min_improvement}"
            )
        )
    if problems:
        raise ValidationError(f"cannot promote {name!r} v{version}:", problems)
    record = await store.get_program(name, version)
    if record.status is not ProgramStatus.READY:
        raise ProgramStateError(
            f"program {name!r} v{version} is {record.status.value}, not ready: only a ready"
            f" version can become current (run `dspex program init {name} --version {version}`)",
            status=record.status.value,
        )
    current = await store.current_version(name)
    previous = await in_use(store, name, besides=version)
    score = previous_score = digest = None
    if devset is not None and metric is not None and evaluate is not None:
        digest = devset_hash(Path(devset))
        score = (await _score_of(store, evaluate, name, version, metric, digest)).score
        if previous is not None and previous != version:
            measured = await _score_of(store, evaluate, name, previous, metric, digest)
            previous_score = measured.score
        if (
            not force
            and score is not None
            and previous_score is not None
            and score < previous_score + min_improvement
        ):
            margin = f" + {min_improvement:g}" if min_improvement else ""
            raise PromotionRefusedError(
                f"program {name!r} v{version} scores {score:.4f} on {metric}, below"
                f" v{previous}'s {previous_score:.4f}{margin}: not promoted (--force skips"
                " the gate)",
                score=score,
                previous_score=previous_score,
            )
    moved = await store.promote(
        name,
        version,
        forced=force,
        promoted_by=promoted_by,
        metric=metric,
        devset_hash=digest,
        score=score,
        previous_score=previous_score,
        min_improvement=min_improvement if devset is not None else None,
        expected_current=current,
    )
    return promotion_result(moved, previous=previous)


async def _score_of(
    store: Store, evaluate: Evaluator, name: str, version: int, metric: str, digest: str
) -> EvaluationResult:
    """A recorded evaluation of this version, devset and metric, else a new one."""
    found = await store.find_evaluation(name, version, metric, digest)
    if found is not None:
        return evaluation_result(found)
    result = await evaluate(version)
    if result.status != "completed":
        raise ValidationError(
            f"the evaluation of {name!r} v{version} did not complete:",
            [
                ErrorDetail(
                    "evaluation",
                    "incomplete",
                    f"resume it: dspex evaluate {name} DEVSET --metric {metric}"
                    f" --resume {result.batch_id}",
                )
            ],
        )
    return result
