"""The dashboard's view of a program's versions: each with its scores, lineage and promotions.

Everything comes from the runtime's public records: the versions (``current`` marks the one
``run``, ``batch`` and the service use), the recorded evaluations (metric, score, devset hash,
``n``), the optimization runs (a version an optimization made has its lineage: parent version,
optimizer, settings, seed, validation scores) and the promotions (forced ones marked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspex.errors import NotFoundError

if TYPE_CHECKING:
    from dspex import OptimizationInfo, Runtime

__all__ = ["versions_payload"]

_LIMIT = 500


def _lineage(run: OptimizationInfo) -> dict[str, Any]:
    return {
        "optimization_id": run.optimization_id,
        "parent_version": run.parent_version,
        "optimizer": run.optimizer,
        "settings": run.settings,
        "seed": run.seed,
        "metric": run.metric,
        "trainset_hash": run.trainset_hash,
        "valset_hash": run.valset_hash,
        "baseline_score": run.baseline_score,
        "score": run.score,
    }


async def versions_payload(runtime: Runtime, name: str) -> dict[str, Any]:
    """The JSON the page draws a program's versions from.

    Returns:
        ``program``, ``current`` (the current version), ``versions`` (newest first: ``version``,
        ``status``, ``current``, ``created_at``, ``execution_count``, ``success_rate``,
        ``evaluations``, ``lineage`` or ``None``, ``promotions``) and ``optimizations`` (the
        runs, newest first, with ``status``, ``attempts`` and ``resumable``).

    Raises:
        NotFoundError: no such program.
    """
    infos = [i for i in await runtime.list_programs(all_versions=True) if i.name == name]
    if not infos:
        raise NotFoundError(f"program {name!r} does not exist")
    evaluations = await runtime.list_evaluations(name, limit=_LIMIT)
    promotions = await runtime.list_promotions(name, limit=_LIMIT)
    runs = await runtime.list_optimizations(program=name, limit=_LIMIT)
    made_by = {run.version: run for run in runs if run.version is not None}
    versions = []
    for info in sorted(infos, key=lambda i: i.version, reverse=True):
        run = made_by.get(info.version)
        versions.append(
            {
                "version": info.version,
                "status": info.status.value,
                "current": info.current,
                "created_at": info.created_at.isoformat(),
                "execution_count": info.execution_count,
                "success_rate": info.success_rate,
                "evaluations": [
                    {
                        "evaluation_id": e.evaluation_id,
                        "metric": e.metric,
                        "score": e.score,
                        "n": e.n,
                        "failed": e.failed,
                        "devset_hash": e.devset_hash,
                        "status": e.status,
                    }
                    for e in evaluations
                    if e.version == info.version
                ],
                "lineage": None if run is None else _lineage(run),
                "promotions": [
                    {
                        "previous_version": p.previous_version,
                        "forced": p.forced,
                        "metric": p.metric,
                        "score": p.score,
                        "previous_score": p.previous_score,
                        "promoted_by": p.promoted_by,
                        "created_at": p.created_at.isoformat(),
                    }
                    for p in promotions
                    if p.version == info.version
                ],
            }
        )
    current = next((v["version"] for v in versions if v["current"]), None)
    return {
        "program": name,
        "current": current,
        "versions": versions,
        "optimizations": [
            {
                "optimization_id": run.optimization_id,
                "status": run.status.value,
                "optimizer": run.optimizer,
                "parent_version": run.parent_version,
                "version": run.version,
                "score": run.score,
                "baseline_score": run.baseline_score,
                "attempts": run.attempts,
                "resumable": run.resumable,
                "created_at": run.created_at.isoformat(),
            }
            for run in runs
        ],
    }
