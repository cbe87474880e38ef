"""The health operation (DESIGN §3.4): is this runtime able to do its work, and how well?

Levels:

- ``standard``: the database answers (with its round-trip latency), its schema is current, every
  table is readable, each backend's own ``health()`` with its circuit-breaker state, unfinished
  executions (running ones whose lease expired mean a worker died), and process facts (uptime,
  memory, event-loop lag).
- ``comprehensive`` adds statistics of recent executions: per-program p50/p95 latency and success
  rate, error patterns (top error codes, recent failures) and capacity (executions per minute
  against the observed maximum, resource utilization).
- ``deep`` looks at a seven-day window and adds ``trends``: per program, the last 24 hours against
  the days before (p95 latency and success rate), degraded when a program got slower or fails
  more. It also makes one small live call to each backend (``complete`` of a one-field
  question): a revoked key or a dead endpoint shows as ``unhealthy`` with the error's code. A
  backend's result is kept for 60 s (per runtime), so frequent probes cost one call a minute.

Every level also reports ``batches``: open batches whose driver died (nothing runs under a live
lease, items are still to run, nothing happened for ten minutes); ``dspex cleanup`` fails them
and prints how to resume each.

Every check runs concurrently under its own timeout and reports ``healthy``, ``degraded`` or
``unhealthy`` with a reason; a check that fails or hangs is ``unhealthy``, never an exception.
The overall status is the worst of the checks, and plain-word recommendations say what to do.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from dspex._percentile import percentile, report_ms
from dspex.backends.base import HealthStatus, PredictRequest
from dspex.errors import DspexError, ErrorDetail, ValidationError, error_code
from dspex.records import ExecutionStatus, utc_now

if TYPE_CHECKING:
    from dspex.backends.base import Backend
    from dspex.engine.resources import ResourceManager
    from dspex.store._maintenance import ExecutionSample
    from dspex.store.base import BreakerStore, MaintenanceStore, Store

__all__ = ["LEVELS", "HealthCheck", "HealthReport", "LiveCall", "LiveCalls", "health"]

HealthLevel = Literal["standard", "comprehensive", "deep"]
LEVELS: tuple[HealthLevel, ...] = ("standard", "comprehensive", "deep")

_RANK: dict[HealthStatus, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}
_DEFAULT_TIMEOUT: dict[HealthLevel, float] = {"standard": 2.0, "comprehensive": 5.0, "deep": 10.0}
_WINDOW: dict[HealthLevel, timedelta] = {
    "comprehensive": timedelta(hours=24),
    "deep": timedelta(days=7),
}
_SLOW_DATABASE_MS = 250.0
_LAGGING_LOOP_MS = 100.0
_LOW_SUCCESS_RATE = 0.9
_HIGH_ERROR_RATE = 0.1
_MIN_VOLUME = 10
_BUSY_UTILIZATION = 0.9
_SUMMARY_LIMIT = 50_000
_RECENT_FAILURES = 5
_RECENT = timedelta(hours=24)
_SLOWER = 1.5  # recent p95 this many times the window's is a slowdown
_WORSE_SUCCESS = 0.1  # a success rate this much below the window's is a regression
LIVE_CALL_TTL = 60.0
"""Seconds a backend's live-call result is reused by ``deep`` health checks."""
LIVE_CALL_TIMEOUT = 5.0
"""Seconds a ``deep`` health live call may take."""
STALLED_AFTER = timedelta(minutes=10)
"""How long an open batch may go with nothing running before its driver is taken for dead."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HealthCheck(_Model):
    """One check of a health report.

    Attributes:
        name: what was checked (``database``, ``migrations``, ``tables``, ``backend:NAME``,
            ``breakers``, ``executions``, ``process``, ``performance``, ``errors``, ``capacity``).
        status: ``healthy``, ``degraded`` or ``unhealthy``.
        duration_ms: how long the check took.
        details: what it measured (JSON-friendly).
        reason: why it is not healthy (empty when healthy).
    """

    name: str
    status: HealthStatus
    duration_ms: float
    details: dict[str, Any]
    reason: str


class HealthReport(_Model):
    """The result of :func:`health`: the worst status of the checks, and each check.

    Attributes:
        status: the worst check status.
        level: the level that was checked.
        checks: every check, in a stable order.
        duration_ms: how long the whole report took.
        recommendations: what to do about what was found, in plain words.
        checked_at: when the report was made (UTC).
    """

    status: HealthStatus
    level: HealthLevel
    checks: list[HealthCheck]
    duration_ms: float
    recommendations: list[str]
    checked_at: datetime

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 degraded, 2 unhealthy (the ``dspex health`` exit code)."""
        return _RANK[self.status]

    def check(self, name: str) -> HealthCheck:
        """The check called ``name``. :class:`KeyError` if there is none."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: HealthStatus
    reason: str = ""
    details: Mapping[str, Any] | None = None
    advice: tuple[str, ...] = ()


_Check = Callable[[], Awaitable[_Outcome]]


@dataclass(frozen=True, slots=True)
class LiveCall:
    """The outcome of one live call to a backend (``deep`` health).

    Attributes:
        ok: it answered.
        latency_ms: how long it took.
        code: the error's code when it failed.
        message: the error's message when it failed.
        at: ``time.monotonic()`` when it ended.
    """

    ok: bool
    latency_ms: float
    code: str | None = None
    message: str | None = None
    at: float = 0.0


class LiveCalls:
    """Live-call results by backend name, reused for :data:`LIVE_CALL_TTL` seconds (one per
    runtime; concurrent probes of one backend share one call).

    Args:
        ttl: seconds a result is reused.
        timeout: seconds a live call may take; a backend slower than that is unhealthy
            (``timeout``), so a dead endpoint is reported before the check's own limit.
        clock: monotonic seconds (tests inject a fake).
    """

    def __init__(
        self,
        ttl: float = LIVE_CALL_TTL,
        *,
        timeout: float = LIVE_CALL_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._results: dict[str, LiveCall] = {}
        self._running: dict[str, asyncio.Future[LiveCall]] = {}

    async def get(self, name: str, backend: Backend) -> tuple[LiveCall, bool]:
        """The backend's recent result, or a new call's: ``(result, whether it was reused)``."""
        known = self._results.get(name)
        if known is not None and self._clock() - known.at < self.ttl:
            return known, True
        running = self._running.get(name)
        if running is None:
            running = self._running[name] = asyncio.ensure_future(self._call(backend))
            running.add_done_callback(lambda _: self._running.pop(name, None))
        result = await asyncio.shield(running)
        self._results[name] = result
        return result, False

    async def _call(self, backend: Backend) -> LiveCall:
        t0 = self._clock()
        try:
            async with asyncio.timeout(self.timeout):
                await backend.complete(_live_request())
        except TimeoutError:
            end = self._clock()
            message = f"no answer within {self.timeout:g}s"
            return LiveCall(False, round((end - t0) * 1000.0, 3), "timeout", message, end)
        except Exception as exc:
            end = self._clock()
            message = exc.message if isinstance(exc, DspexError) else f"{type(exc).__name__}: {exc}"
            return LiveCall(False, round((end - t0) * 1000.0, 3), error_code(exc), message, end)
        end = self._clock()
        return LiveCall(True, round((end - t0) * 1000.0, 3), at=end)


def _live_request() -> PredictRequest:
    from dspex.signatures.signature import Signature

    return PredictRequest(
        signature=Signature.parse("question: str -> answer: str"),
        inputs={"question": "Reply with the word ok."},
        module="health",
        config={"max_tokens": 16, "temperature": 0.0},
    )


@dataclass(frozen=True, slots=True)
class HealthContext:
    """What the checks look at (the runtime builds it).

    Attributes:
        store: the store.
        backends: the configured backends by name.
        resources: the engine's resource manager, for utilization.
        started_at: ``time.monotonic()`` when the runtime was created (for uptime).
        worker_id: the runtime's lease identity.
        clock: the current UTC time.
        live_calls: where ``deep`` live-call results are kept (default: not kept).
    """

    store: Store
    backends: Mapping[str, Backend]
    resources: ResourceManager | None = None
    started_at: float | None = None
    worker_id: str | None = None
    clock: Callable[[], datetime] = utc_now
    live_calls: LiveCalls | None = None


async def health(
    ctx: HealthContext,
    level: str = "standard",
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - per check, not for the whole call
) -> HealthReport:
    """Check the runtime's health at ``level``.

    Args:
        ctx: the store, backends and process facts to look at.
        level: ``standard``, ``comprehensive`` or ``deep``.
        timeout: seconds each check may take (default: 2 s standard, 5 s comprehensive, 10 s
            deep). A check that takes longer is ``unhealthy``; the others are unaffected.

    Returns:
        The report; it never raises for an unhealthy database or backend.

    Raises:
        ValidationError: an unknown level or a non-positive timeout.
    """
    chosen = _level(level)
    if timeout is not None and not timeout > 0:
        raise ValidationError(
            "timeout must be positive:", [ErrorDetail("timeout", "not_positive", f"{timeout}")]
        )
    limit = timeout if timeout is not None else _DEFAULT_TIMEOUT[chosen]
    t0 = time.perf_counter()
    lag_ms = await _loop_lag_ms()
    now = ctx.clock()
    breakers = asyncio.ensure_future(_breaker_states(ctx.store))
    checks: list[tuple[str, _Check]] = [
        ("database", lambda: _database(ctx.store)),
        ("migrations", lambda: _migrations(ctx.store)),
        ("tables", lambda: _tables(ctx.store)),
    ]
    live = (ctx.live_calls or LiveCalls()) if chosen == "deep" else None
    for name, backend in sorted(ctx.backends.items()):
        checks.append((f"backend:{name}", _backend_check(name, backend, breakers, live)))
    checks.append(("breakers", lambda: _breakers(breakers)))
    checks.append(("executions", lambda: _executions(ctx.store, now)))
    checks.append(("batches", lambda: _batches(ctx.store, now)))
    checks.append(("process", lambda: _process(ctx, lag_ms)))
    shared: list[asyncio.Future[Any]] = [breakers]
    if chosen != "standard":
        window = _WINDOW[chosen]
        stats = asyncio.ensure_future(
            ctx.store.execution_summaries(now - window, limit=_SUMMARY_LIMIT)
        )
        shared.append(stats)
        checks.append(("performance", lambda: _performance(stats, window)))
        checks.append(("errors", lambda: _errors(stats, now)))
        checks.append(("capacity", lambda: _capacity(stats, now, window, ctx.resources)))
    if chosen == "deep":
        checks.append(("trends", lambda: _trends(stats, now)))
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_run(name, check, limit)) for name, check in checks]
    finally:
        # A shared query outlives the checks that timed out waiting for it: stop it here.
        for future in shared:
            future.cancel()
        await asyncio.gather(*shared, return_exceptions=True)
    results = [task.result() for task in tasks]
    status = max((r[0].status for r in results), key=_RANK.__getitem__, default="healthy")
    advice: list[str] = []
    for _, outcome in results:
        advice.extend(a for a in outcome.advice if a not in advice)
    return HealthReport(
        status=status,
        level=chosen,
        checks=[r[0] for r in results],
        duration_ms=round((time.perf_counter() - t0) * 1000.0, 3),
        recommendations=advice,
        checked_at=now,
    )


def _level(level: str) -> HealthLevel:
    for known in LEVELS:
        if level == known:
            return known
    raise ValidationError(
        "unknown health level:",
        [ErrorDetail("level", "unknown", f"{level!r}; use one of {', '.join(LEVELS)}")],
    )


async def _run(name: str, check: _Check, limit: float) -> tuple[HealthCheck, _Outcome]:
    """One check under its own timeout; every failure becomes an ``unhealthy`` result."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            outcome = await check()
    except TimeoutError:
        outcome = _Outcome("unhealthy", f"the check did not finish within {limit:g}s")
    except DspexError as exc:
        outcome = _Outcome("unhealthy", exc.message)
    except Exception as exc:  # a health check reports failures; it never raises them
        outcome = _Outcome("unhealthy", f"{type(exc).__name__}: {exc}")
    duration = round((time.perf_counter() - t0) * 1000.0, 3)
    result = HealthCheck(
        name=name,
        status=outcome.status,
        duration_ms=duration,
        details=dict(outcome.details or {}),
        reason=outcome.reason,
    )
    return result, outcome


async def _loop_lag_ms() -> float:
    """How late a callback scheduled now runs: a busy event loop delays heartbeats too."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    t0 = time.perf_counter()

    def arrived() -> None:
        done.set_result(time.perf_counter())

    loop.call_soon(arrived)
    return round((await done - t0) * 1000.0, 3)


# -- standard checks ----------------------------------------------------------------------------


async def _database(store: Store) -> _Outcome:
    latency = await store.ping()
    details = {"url": store.url, "latency_ms": round(latency, 3)}
    if latency > _SLOW_DATABASE_MS:
        return _Outcome(
            "degraded",
            f"the database answered in {latency:.0f} ms (slower than {_SLOW_DATABASE_MS:g} ms)",
            details,
            ("The database is slow to answer: check its load and the network to it.",),
        )
    return _Outcome("healthy", "", details)


async def _migrations(store: MaintenanceStore) -> _Outcome:
    revision = await store.schema_revision()
    current = await store.is_current()
    details = {"revision": revision, "current": current}
    if current:
        return _Outcome("healthy", "", details)
    found = "has no schema" if revision is None else f"is at schema revision {revision!r}"
    return _Outcome(
        "unhealthy",
        f"the database {found}, not the one this version of dspex needs",
        details,
        ("Run `dspex db upgrade` to bring the database schema up to date.",),
    )


async def _tables(store: MaintenanceStore) -> _Outcome:
    probed = await store.probe_tables()
    broken = {name: error for name, error in probed.items() if error is not None}
    details = {"tables": sorted(probed), "unreadable": broken}
    if broken:
        return _Outcome(
            "unhealthy",
            f"{len(broken)} table(s) cannot be read: {', '.join(sorted(broken))}",
            details,
            ("Some tables cannot be read: run `dspex db upgrade`, then check the database.",),
        )
    return _Outcome("healthy", "", details)


async def _breaker_states(store: BreakerStore) -> dict[str, str]:
    return {record.backend: record.state for record in await store.list_breakers()}


def _backend_check(
    name: str,
    backend: Backend,
    breakers: asyncio.Future[dict[str, str]],
    live: LiveCalls | None = None,
) -> _Check:
    async def check() -> _Outcome:
        own = await backend.health()
        details: dict[str, Any] = {"backend": backend.name, **own.details}
        status: HealthStatus = own.status
        reason = own.reason
        advice: tuple[str, ...] = ()
        if live is not None and status != "unhealthy":
            call, reused = await live.get(backend.name, backend)
            details["live_call"] = {
                "ok": call.ok,
                "latency_ms": call.latency_ms,
                "code": call.code,
                "message": call.message,
                "cached": reused,
            }
            if not call.ok:
                status = "unhealthy"
                reason = f"a live call failed: {call.code}: {call.message}"
        try:
            breaker = (await asyncio.shield(breakers)).get(backend.name, "closed")
        except DspexError:
            breaker = "unknown"  # the breakers check reports why
        details["breaker"] = breaker
        if breaker in ("open", "half_open") and status == "healthy":
            status = "degraded"
            reason = f"its circuit breaker is {breaker.replace('_', '-')}"
        if status != "healthy":
            advice = (f"Backend {name!r} is {status}: {reason or 'see its details'}.",)
        return _Outcome(status, reason if status != "healthy" else "", details, advice)

    return check


async def _breakers(breakers: asyncio.Future[dict[str, str]]) -> _Outcome:
    states = await asyncio.shield(breakers)
    tripped = sorted(name for name, state in states.items() if state != "closed")
    details = {"states": states}
    if tripped:
        return _Outcome(
            "degraded",
            f"circuit open or probing for: {', '.join(tripped)}",
            details,
            (
                "Calls to backends with an open circuit fail fast until it closes; check"
                " those providers.",
            ),
        )
    return _Outcome("healthy", "", details)


async def _executions(store: MaintenanceStore, now: datetime) -> _Outcome:
    counts = await store.open_executions(now)
    details = {"pending": counts.pending, "running": counts.running, "expired": counts.expired}
    if counts.expired:
        return _Outcome(
            "degraded",
            f"{counts.expired} running execution(s) have an expired lease (their worker stopped)",
            details,
            ("Run `dspex cleanup` to re-queue or fail executions whose worker died.",),
        )
    return _Outcome("healthy", "", details)


async def _batches(store: MaintenanceStore, now: datetime) -> _Outcome:
    stalled = await store.stalled_batches(now - STALLED_AFTER, now=now)
    details = {
        "stalled": [
            {
                "batch_id": s.batch_id,
                "program": s.program,
                "pending": s.pending,
                "missing": s.missing,
                "last_activity": s.last_activity.isoformat(),
            }
            for s in stalled[:20]
        ],
        "stalled_count": len(stalled),
    }
    if stalled:
        return _Outcome(
            "degraded",
            f"{len(stalled)} open batch(es) lost their driver (nothing has run for"
            f" {STALLED_AFTER.total_seconds() / 60:g} minutes, items still to run)",
            details,
            (
                "Run `dspex cleanup` to fail batches whose driver died; it prints the"
                " `dspex batch … --resume` command that runs the rest of each.",
            ),
        )
    return _Outcome("healthy", "", details)


def _rss_mb() -> tuple[float | None, float | None]:
    """Current and peak resident memory in MiB (current only where /proc exists)."""
    current = None
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            current = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        current = None
    try:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak_kb / 2**20 if sys.platform == "darwin" else peak_kb / 1024
    except (ImportError, OSError):  # pragma: no cover - Windows has no `resource`
        peak = None
    return (
        round(current, 1) if current is not None else None,
        round(peak, 1) if peak is not None else None,
    )


async def _process(ctx: HealthContext, lag_ms: float) -> _Outcome:
    rss, peak = _rss_mb()
    started = ctx.started_at
    details = {
        "pid": os.getpid(),
        "worker_id": ctx.worker_id,
        "python": sys.version.split()[0],
        "uptime_s": round(time.monotonic() - started, 3) if started is not None else None,
        "rss_mb": rss,
        "peak_rss_mb": peak,
        "event_loop_lag_ms": lag_ms,
    }
    if lag_ms > _LAGGING_LOOP_MS:
        return _Outcome(
            "degraded",
            f"the event loop is {lag_ms:.0f} ms behind (blocking work on the loop?)",
            details,
            (
                "The event loop is blocked: move synchronous work to threads, or heartbeats"
                " may miss their lease.",
            ),
        )
    return _Outcome("healthy", "", details)


# -- comprehensive checks -----------------------------------------------------------------------


def _finished(rows: list[ExecutionSample]) -> list[ExecutionSample]:
    done = (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED)
    return [r for r in rows if r.status in done]


async def _performance(stats: asyncio.Future[list[ExecutionSample]], window: timedelta) -> _Outcome:
    rows = await asyncio.shield(stats)
    programs: list[dict[str, Any]] = []
    weak: list[str] = []
    for name, runs in _by_program(rows).items():
        figures = _RunFigures.of(runs)
        programs.append(
            {
                "program": name,
                "executions": len(runs),
                "completed": figures.completed,
                "failed": len(runs) - figures.completed,
                "success_rate": round(figures.success_rate, 4),
                "p50_ms": figures.p50_ms,
                "p95_ms": figures.p95_ms,
            }
        )
        if len(runs) >= _MIN_VOLUME and figures.success_rate < _LOW_SUCCESS_RATE:
            weak.append(f"{name} ({figures.success_rate:.0%})")
    details = {
        "window_hours": window.total_seconds() / 3600,
        "sampled": len(rows),
        "programs": programs,
    }
    if weak:
        return _Outcome(
            "degraded",
            f"success rate below {_LOW_SUCCESS_RATE:.0%} for: {', '.join(weak)}",
            details,
            (
                "Some programs fail often: look at `dspex executions list --status failed`"
                " for their error codes.",
            ),
        )
    return _Outcome("healthy", "", details)


def _by_program(rows: list[ExecutionSample]) -> dict[str, list[ExecutionSample]]:
    """Finished runs by program, programs in name order."""
    per_program: dict[str, list[ExecutionSample]] = {}
    for row in _finished(rows):
        per_program.setdefault(row.program, []).append(row)
    return {name: per_program[name] for name in sorted(per_program)}


@dataclass(frozen=True, slots=True)
class _RunFigures:
    """What the statistics checks say of a program's finished runs (at least one)."""

    completed: int
    success_rate: float
    p50_ms: float | None
    p95_ms: float | None

    @classmethod
    def of(cls, runs: list[ExecutionSample]) -> _RunFigures:
        completed = sum(1 for r in runs if r.status is ExecutionStatus.COMPLETED)
        durations = sorted(r.duration_ms for r in runs if r.duration_ms is not None)
        return cls(
            completed,
            completed / len(runs),
            report_ms(percentile(durations, 50, presorted=True)),
            report_ms(percentile(durations, 95, presorted=True)),
        )


async def _trends(stats: asyncio.Future[list[ExecutionSample]], now: datetime) -> _Outcome:
    """Per program: the last 24 hours against the earlier part of the window (deep only)."""
    rows = await asyncio.shield(stats)
    programs: list[dict[str, Any]] = []
    findings: list[str] = []
    for name, runs in _by_program(rows).items():
        recent = [r for r in runs if r.created_at >= now - _RECENT]
        earlier = [r for r in runs if r.created_at < now - _RECENT]
        entry: dict[str, Any] = {"program": name}
        for label, part in (("recent", recent), ("earlier", earlier)):
            figures = _RunFigures.of(part) if part else None
            entry[f"{label}_executions"] = len(part)
            entry[f"{label}_success_rate"] = (
                None if figures is None else round(figures.success_rate, 4)
            )
            entry[f"{label}_p95_ms"] = None if figures is None else figures.p95_ms
        before, now_p95 = entry["earlier_p95_ms"], entry["recent_p95_ms"]
        ratio = now_p95 / before if now_p95 is not None and before else None
        entry["p95_ratio"] = None if ratio is None else round(ratio, 3)
        programs.append(entry)
        if len(recent) < _MIN_VOLUME or len(earlier) < _MIN_VOLUME:
            continue
        if ratio is not None and ratio >= _SLOWER:
            findings.append(f"{name} is slower (p95 {ratio:.1f}x the days before)")
        if entry["recent_success_rate"] <= entry["earlier_success_rate"] - _WORSE_SUCCESS:
            findings.append(
                f"{name} fails more ({entry['recent_success_rate']:.0%} succeed,"
                f" {entry['earlier_success_rate']:.0%} before)"
            )
    details = {"recent_hours": _RECENT.total_seconds() / 3600, "programs": programs}
    if findings:
        return _Outcome(
            "degraded",
            "; ".join(findings),
            details,
            (
                "A program changed for the worse in the last 24 hours: compare its recent"
                " executions with older ones (`dspex executions list --program NAME`) and check"
                " the backend's health and recent program versions.",
            ),
        )
    return _Outcome("healthy", "", details)


async def _errors(stats: asyncio.Future[list[ExecutionSample]], now: datetime) -> _Outcome:
    rows = await asyncio.shield(stats)
    failed = [r for r in rows if r.status is ExecutionStatus.FAILED]
    codes = Counter(r.error_code or "unknown" for r in failed)
    recent = [
        {
            "execution_id": r.id,
            "program": r.program,
            "error_code": r.error_code,
            "message": (r.error_message or "")[:200],
            "finished_at": (r.finished_at or r.created_at).isoformat(),
        }
        for r in failed[:_RECENT_FAILURES]
    ]
    hour = [r for r in _finished(rows) if r.created_at >= now - timedelta(hours=1)]
    hour_failed = sum(1 for r in hour if r.status is ExecutionStatus.FAILED)
    rate = hour_failed / len(hour) if hour else 0.0
    details = {
        "failed": len(failed),
        "top_error_codes": [{"code": c, "count": n} for c, n in codes.most_common(5)],
        "recent_failures": recent,
        "error_rate_last_hour": round(rate, 4),
    }
    if len(hour) >= _MIN_VOLUME and rate > _HIGH_ERROR_RATE:
        top = codes.most_common(1)[0][0]
        return _Outcome(
            "degraded",
            f"{rate:.0%} of the executions of the last hour failed (mostly {top})",
            details,
            (f"Many recent executions failed, most often with {top!r}: look into that first.",),
        )
    return _Outcome("healthy", "", details)


async def _capacity(
    stats: asyncio.Future[list[ExecutionSample]],
    now: datetime,
    window: timedelta,
    resources: ResourceManager | None,
) -> _Outcome:
    rows = await asyncio.shield(stats)
    per_minute = Counter(int((now - r.created_at).total_seconds() // 60) for r in rows)
    last_hour = sum(n for minute, n in per_minute.items() if minute < 60)
    observed_max = max(per_minute.values(), default=0)
    rate = last_hour / 60.0
    details: dict[str, Any] = {
        "executions_last_hour": last_hour,
        "per_minute_last_hour": round(rate, 3),
        "per_minute_last_5": round(sum(per_minute.get(m, 0) for m in range(5)) / 5.0, 3),
        "observed_max_per_minute": observed_max,
        "window_hours": window.total_seconds() / 3600,
        "load_vs_max": round(rate / observed_max, 4) if observed_max else 0.0,
    }
    busy: list[str] = []
    if resources is not None:
        utilization = resources.utilization()
        details["resources"] = {
            "capacity": resources.capacities,
            "in_use": resources.in_use(),
            "utilization": {k: round(v, 4) for k, v in utilization.items()},
            "waiting": resources.waiting,
        }
        busy = sorted(k for k, v in utilization.items() if v >= _BUSY_UTILIZATION)
    if busy or (resources is not None and resources.waiting):
        what = ", ".join(busy) or "resources"
        return _Outcome(
            "degraded",
            f"the engine is short of {what}: work waits for capacity",
            details,
            (f"Raise the capacity of {what} in dspex.toml, or run more workers.",),
        )
    return _Outcome("healthy", "", details)
