"""Operations: liveness, readiness, health, metrics, maintenance."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from dspex import CleanupReport, DspexError, HealthReport
from dspex.service.metrics import render
from dspex.service.routes._common import ERRORS, JSON_TYPES, accepts
from dspex.service.schemas import CleanupRequest, LiveResponse, ReadyResponse
from dspex.service.state import Admin, MetricsReader, Reader, State

__all__ = ["router"]

router = APIRouter(tags=["operations"])


class PrometheusText(PlainTextResponse):
    media_type = "text/plain; version=0.0.4"


@router.get("/healthz", response_model=LiveResponse)
async def healthz() -> LiveResponse:
    """Liveness: the process answers (no I/O)."""
    return LiveResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "not ready"}},
)
async def readyz(state: State) -> Any:
    """Readiness: the database answers and its schema is current."""
    readiness = await state.runtime.readiness()
    body = ReadyResponse(
        status="ready" if readiness.ready else "not_ready",
        revision=readiness.revision,
        latency_ms=readiness.latency_ms,
        reason=readiness.reason,
    )
    if readiness.ready:
        return body
    return JSONResponse(body.model_dump(), status_code=503)


@router.get(
    "/health",
    response_model=HealthReport,
    dependencies=[Reader],
    responses={**ERRORS, 503: {"model": HealthReport, "description": "unhealthy"}},
)
async def health(
    state: State,
    level: Literal["standard", "comprehensive", "deep"] = "standard",
) -> Any:
    """Every check at ``level``: ``200`` healthy or degraded, ``503`` unhealthy."""
    report = await state.runtime.health(level)
    if report.status == "unhealthy":
        return JSONResponse(report.model_dump(mode="json"), status_code=503)
    return report


@router.get(
    "/metrics",
    response_class=PrometheusText,
    dependencies=[MetricsReader],
    responses={
        200: {"content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}},
        401: ERRORS[401],
    },
)
async def metrics(state: State) -> PrometheusText:
    """Prometheus metrics: executions, latencies, breaker states, batch queue depth.

    Open to anyone unless ``[server] metrics = "read"``, when any API key may read them.
    """
    try:
        breakers = await state.runtime.breaker_states()
    except DspexError:
        breakers = {}  # an unreachable database must not take the metrics down with it
    text = render(
        state.metrics,
        breakers=breakers,
        queue_depth=state.batches.queue_depth(),
        running_batches=len(state.batches.running),
    )
    return PrometheusText(text)


@router.post(
    "/maintenance/cleanup",
    response_model=CleanupReport,
    dependencies=[Admin, accepts(JSON_TYPES)],
    responses=ERRORS,
)
async def cleanup(state: State, body: CleanupRequest | None = None) -> CleanupReport:
    """Repair and prune (a dry run unless ``dry_run`` is false)."""
    from dspex import parse_age

    request = body or CleanupRequest()
    retention = parse_age(request.older_than) if request.older_than is not None else None
    return await state.runtime.cleanup(
        dry_run=request.dry_run, older_than=retention, attempt_cap=request.attempt_cap
    )
