"""``Runtime``: the persistent face of dspex — programs, recorded executions, history.

One runtime owns a store, the backends built from configuration, one :class:`~dspex.Engine`
and the caches that keep an execution cheap (parsed programs, history durations).

Example:
    >>> async with dspex.Runtime.open("memory://") as rt:  # doctest: +SKIP
    ...     await rt.register("qa.yaml")
    ...     await rt.initialize("qa")
    ...     result = await rt.execute("qa", {"question": "What is DSPy?"})
    ...     result.status, result.outputs
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict

from dspex.actions import batch as _batch
from dspex.actions import execute as _execute
from dspex.actions import programs as _programs
from dspex.actions import queries as _queries
from dspex.actions.models import (
    ExecutionDetail,
    ExecutionPage,
    ExecutionResult,
    GraphInfo,
    ProgramHistory,
    ProgramInfo,
)
from dspex.config import BackendConfig, Settings, load_settings
from dspex.errors import (
    AmbiguousIdError,
    BatchError,
    ConfigError,
    DspexError,
    ErrorDetail,
    ExecutionFinishedError,
    NotFoundError,
    ValidationError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import timedelta

    from dspex.actions.batch import BatchItems, BatchResult, ItemResult
    from dspex.actions.cache import CacheCleared, CacheStats
    from dspex.actions.cleanup import CleanupReport
    from dspex.actions.dataset import DatasetExport
    from dspex.actions.estimate import BatchEstimate
    from dspex.actions.evaluate import ComparisonResult, EvaluationResult
    from dspex.actions.health import HealthReport
    from dspex.actions.optimize import OptimizationCallback, OptimizationInfo
    from dspex.actions.promote import PromotionResult
    from dspex.actions.streaming import ExecutionEvent
    from dspex.actions.tune import TuneProposal
    from dspex.backends.base import Backend
    from dspex.backends.pricing import PriceTable
    from dspex.batch.options import BatchOptions
    from dspex.batch.progress import ProgressCallback
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program
    from dspex.records import BatchRecord
    from dspex.resilience.breaker import BreakerRegistry
    from dspex.store.base import Store
    from dspex.telemetry import Telemetry

# The result models are re-exported: callers import them from here alongside Runtime.
__all__ = [
    "BatchHandle",
    "BatchInfo",
    "EvaluationHandle",
    "ExecutionDetail",
    "ExecutionPage",
    "ExecutionResult",
    "GraphInfo",
    "ProgramHistory",
    "ProgramInfo",
    "Readiness",
    "Runtime",
    "build_backends",
]

log = logging.getLogger("dspex.runtime")

# A uuid (or the start of one) typed in capitals: ids are lower-case, so it is looked up so too.
_HEX_ID = re.compile(r"[0-9A-Fa-f-]+")

# The candidates an ambiguous id prefix error lists.
_CANDIDATES = 10

# Versions are 32-bit integers in the database: a larger number is refused before any query
# (SQLite cannot bind it; PostgreSQL answers with an error quoting the statement).
_MAX_VERSION = 2**31 - 1

_MOCK_OPTIONS = frozenset(
    {
        "latency_ms",
        "latency_jitter_ms",
        "failure_rate",
        "permanent_failure_rate",
        "hang_rate",
        "seed",
    }
)


def build_breakers(settings: Settings, *, store: Store | None = None) -> BreakerRegistry:
    """The one breaker registry of a runtime, configured by ``[breaker]``: a backend has one
    breaker whether it is called alone or in groups. With ``store`` the breakers' states are
    kept in its ``breakers`` table, so every process on the database sees the same circuits
    (and ``health`` lists them).

    Raises:
        ConfigError: the ``[breaker]`` table is malformed.
    """
    from dspex.resilience import StoreBreakerStore
    from dspex.resilience import build_breakers as registry

    return registry(settings, store=StoreBreakerStore(store) if store is not None else None)


def build_backends(
    settings: Settings,
    *,
    store: Store | None = None,
    breakers: BreakerRegistry | None = None,
) -> dict[str, Backend]:
    """The backends named in the settings, and the coordinator groups over them.

    A backend with ``rpm`` or ``tpm`` is wrapped in a
    :class:`~dspex.resilience.ratelimit.RateLimitedBackend`. ``default`` aliases
    ``settings.default_backend`` (a backend or a group). The groups share ``breakers``
    (default: :func:`build_breakers` of ``settings`` and ``store``).

    Raises:
        ConfigError: a backend's options are wrong, or a group is malformed or names an
            unknown backend.
    """
    from dspex.resilience.ratelimit import rate_limited

    built: dict[str, Backend] = {}
    for name, config in settings.backends.items():
        # rpm/tpm sit right on the transport: every call that reaches the provider takes a turn
        built[name] = rate_limited(_backend(name, config), config.rpm, config.tpm)
    if settings.coordinators:
        from dspex.resilience import build_coordinators

        groups = build_coordinators(
            settings,
            dict(built),
            breakers=breakers or build_breakers(settings, store=store),
        )
        built.update(groups)
    if "default" not in built and settings.default_backend in built:
        built["default"] = built[settings.default_backend]
    return built


def price_table(settings: Settings) -> PriceTable:
    """The prices of ``[prices."MODEL"]`` over LiteLLM's cost map."""
    from dspex.backends.pricing import Price, PriceTable

    return PriceTable(
        {
            model: Price(p.input_cost_per_token, p.output_cost_per_token)
            for model, p in settings.prices.items()
        }
    )


def _backend(name: str, config: BackendConfig) -> Backend:
    extra = dict(config.model_extra or {})
    if config.kind == "mock":
        from dspex.backends.mock import MockBackend

        unknown = sorted(set(extra) - _MOCK_OPTIONS)
        if unknown:
            raise ConfigError(f"backend {name!r}: unknown mock options {unknown}")
        try:
            return MockBackend(name, **extra)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"backend {name!r}: {exc}") from None
    if config.kind == "openai":
        from dspex.backends.openai_backend import OpenAIBackend

        return OpenAIBackend.from_config(
            name, config.model_dump(exclude={"kind", "rpm", "tpm", "cache"})
        )
    from dspex.backends.dspy_backend import DspyBackend

    if config.model is None:
        raise ConfigError(f"backend {name!r}: a dspy backend needs model = '…'")
    return DspyBackend(
        name,
        model=config.model,
        api_base=config.api_base,
        api_key_env=config.api_key_env,
        lm_kwargs=extra or None,
    )


class BatchInfo(BaseModel):
    """A recorded batch: its status and running counts (what :meth:`Runtime.get_batch` returns).

    Attributes:
        batch_id: the batch.
        program: the program name.
        program_version: the version it runs.
        status: ``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``.
        total: items in the batch.
        completed: items completed.
        failed: items failed.
        cancelled: items cancelled.
        remaining: items not finished yet.
        created_at: when the batch was created.
        finished_at: when it ended, if it did.
        config: what it was started with: ``max_concurrency``, ``max_retries``,
            ``max_errors``, ``item_timeout``, ``deadline``, ``validate``, ``workers``,
            ``backend``, ``strategy``, ``input`` (``{"kind": "jsonl", "path": …}`` for a file),
            ``out``, ``inputs`` (``"stored"``: every item was recorded before any ran, so
            another process can take the batch over; see ``recoverable``) and ``calls_bound``
            (per module, the most backend calls one predictor call of an item may make), as
            far as they were recorded.
        cost_usd: what every run of its items spent, in US dollars.
        rate_limited_s: seconds its items waited for backends' ``rpm``/``tpm`` limits.
        driver: the process running it (``None`` when none is), under a lease it renews.
        cancel_requested: a cancel was asked for (:meth:`Runtime.cancel_batch`); its driver
            cancels it when it next renews its lease.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    program: str
    program_version: int
    status: str
    total: int
    completed: int
    failed: int
    cancelled: int
    remaining: int
    created_at: datetime
    finished_at: datetime | None
    config: dict[str, Any] = {}
    cost_usd: float = 0.0
    rate_limited_s: float = 0.0
    driver: str | None = None
    cancel_requested: bool = False


class Readiness(BaseModel):
    """Whether the database can serve requests: reachable, with the schema this version needs.

    Attributes:
        ready: reachable and the schema is current.
        revision: the database's schema revision (``None`` when unknown or absent).
        current: the schema is the one this version of dspex needs.
        latency_ms: the round trip of a trivial query, when it answered.
        reason: why it is not ready (empty when ready).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ready: bool
    revision: str | None
    current: bool
    latency_ms: float | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class BatchHandle:
    """A batch running in the background (see :meth:`Runtime.start_batch`).

    Attributes:
        batch_id: the recorded batch.
        task: the task running it; its result is the :class:`BatchResult` (cancel it to stop
            the batch: it is left ``cancelled`` and resumable).
        program: the program it runs.
    """

    batch_id: str
    task: asyncio.Task[BatchResult]
    program: str = ""


class _BatchStartWatch:
    """A store view that calls ``on_running`` (once) when a batch is marked ``running``.

    ``run_batch`` validates its options and items and creates (or checks) the batch record before
    it marks the batch running, so that moment is when a batch has "started". Everything else
    is delegated to the real store.
    """

    def __init__(self, store: Store, on_running: Callable[[str], Awaitable[None] | None]) -> None:
        self._store = store
        self._on_running: Callable[[str], Awaitable[None] | None] | None = on_running

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def set_batch_status(self, batch_id: str, status: Any) -> Any:
        from dspex.records import BatchStatus

        record = await self._store.set_batch_status(batch_id, status)
        if status is BatchStatus.RUNNING and self._on_running is not None:
            callback, self._on_running = self._on_running, None
            try:
                outcome = callback(batch_id)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("the batch start callback raised; the batch runs on")
        return record


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutionHandle:
    """An execution running in the background (see :meth:`Runtime.start_execution`).

    Attributes:
        execution_id: the recorded execution (``running``).
        task: the task running it; its result is the :class:`~dspex.ExecutionResult` (cancel
            it to stop the run: it is recorded ``cancelled``).
        program: the program it runs.
    """

    execution_id: str
    task: asyncio.Task[ExecutionResult]
    program: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class EvaluationHandle:
    """An evaluation running in the background (see :meth:`Runtime.start_evaluation`).

    Attributes:
        batch_id: the evaluation's batch (its progress is the batch's).
        task: the task running it; its result is the :class:`~dspex.EvaluationResult`.
    """

    batch_id: str
    task: asyncio.Task[EvaluationResult]


@dataclasses.dataclass(frozen=True, slots=True)
class OptimizationHandle:
    """An optimization running in the background (see :meth:`Runtime.start_optimization`).

    Attributes:
        optimization_id: the recorded run.
        task: the task running it; its result is the :class:`~dspex.OptimizationInfo`
            (cancel it to stop the run: it is left ``interrupted`` and resumable).
    """

    optimization_id: str
    task: asyncio.Task[OptimizationInfo]


def _batch_info(record: BatchRecord) -> BatchInfo:
    return BatchInfo(
        batch_id=record.id,
        program=record.program,
        program_version=record.program_version,
        status=record.status.value,
        total=record.total,
        completed=record.completed,
        failed=record.failed,
        cancelled=record.cancelled,
        remaining=record.remaining,
        created_at=record.created_at,
        finished_at=record.finished_at,
        config=record.config,
        cost_usd=record.cost_usd,
        rate_limited_s=record.rate_limited_s,
        driver=record.driver,
        cancel_requested=record.cancel_requested,
    )


def _checked_version(version: int | None) -> int | None:
    """``version`` when it is ``None`` or a possible version number.

    Raises:
        ValidationError: it is below 1 or above :attr:`Runtime.MAX_VERSION`.
    """
    if version is None or 1 <= version <= _MAX_VERSION:
        return version
    message = f"a version is a number from 1 to {_MAX_VERSION}, got {version}"
    raise ValidationError(message, [ErrorDetail("version", "version_out_of_range", message)])


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Runtime:
    """Programs, recorded executions and history on top of a store.

    Build it with :meth:`open` and use it as an async context manager (or call :meth:`start`
    and :meth:`aclose` yourself).

    Attributes:
        settings: the resolved configuration.
        store: the store (open after :meth:`start`).
        engine: the engine every execution runs on.
        worker_id: the identity leases are taken under.
        MAX_VERSION: the largest version number; every method taking a ``version`` refuses
            one outside ``1..MAX_VERSION`` with :class:`ValidationError` before any query.
    """

    MAX_VERSION: ClassVar[int] = _MAX_VERSION

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        backends: Mapping[str, Backend] | None = None,
        worker_id: str | None = None,
        hooks: Sequence[object] = (),
        telemetry: Telemetry | None = None,
        reap_on_start: bool = False,
    ) -> None:
        from dspex.capture import Capture
        from dspex.engine.engine import Engine
        from dspex.telemetry import Telemetry

        self.settings = settings
        self.store = store
        self._owns_backends = backends is None
        self.breakers = build_breakers(settings, store=store)
        self._backends: dict[str, Backend] = (
            build_backends(settings, store=store, breakers=self.breakers)
            if backends is None
            else dict(backends)
        )
        defaults = settings.defaults
        prices = price_table(settings)
        from dspex.resilience.cache import ResponseCache

        self.cache = ResponseCache(
            store,
            ttl=settings.cache.ttl_seconds,
            mode=settings.cache.mode,
            backend_modes={
                name: config.cache
                for name, config in settings.backends.items()
                if config.cache is not None
            },
            prices=prices,
        )
        self.worker_id = worker_id or settings.worker_id or _default_worker_id()
        self._owns_telemetry = telemetry is None
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.hooks = tuple(hooks)
        self.engine: Engine = Engine(
            self._backends,
            resources=settings.resources,
            allowed_imports=settings.allowed_imports,
            corpus_dirs=settings.corpus_dirs,
            hooks=(*self.hooks, self.telemetry),
            allow_pickle=settings.allow_pickle,
            retry=defaults.retry,
            timeout=defaults.attempt_timeout,
            breakers=self.breakers if defaults.breakers else None,
            prices=prices,
            cache=self.cache,
            capture=Capture(**settings.capture.model_dump()),
        )
        self._ctx = _execute.ExecuteContext(
            store=store,
            engine=self.engine,
            worker_id=self.worker_id,
            lease_seconds=settings.lease_seconds,
            live_steps_seconds=settings.live_steps_seconds,
            telemetry=self.telemetry,
            hooks=self.hooks,
        )
        self._started = False
        self._closed = False
        # streamed executions run in tasks of their own: they outlive a consumer that left
        self._streaming: set[asyncio.Task[ExecutionResult]] = set()
        # health and cleanup: uptime is measured from here; workers reap when they start
        self._created_monotonic = time.monotonic()
        self.reap_on_start = reap_on_start
        from dspex.actions.health import LiveCalls

        self._live_calls = LiveCalls()  # deep health's live calls, reused for a minute

    @classmethod
    def open(
        cls,
        database_url: str | None = None,
        *,
        config: str | Path | None = None,
        backends: Mapping[str, Backend] | None = None,
        worker_id: str | None = None,
        hooks: Sequence[object] = (),
        reap_on_start: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
    ) -> Runtime:
        """A runtime (not yet started: ``async with`` it, or call :meth:`start`).

        Args:
            database_url: ``None`` → the settings' ``database_url`` → the embedded SQLite
                database ``./.dspex/dspex.db``; ``"memory://"`` → an in-memory store.
            config: a ``dspex.toml`` to read (default: ``DSPEX_CONFIG`` or ``./dspex.toml``).
            backends: backends by name (default: built from the settings' ``[backends.*]``).
            worker_id: the identity for leases (default: settings, else ``host:pid``).
            hooks: lifecycle hooks for every run (:mod:`dspex.hooks`); a hook may also define
                ``after_execution(*, result)``, called once the execution is recorded.
            cwd: the directory configuration and the embedded database are found in.
            reap_on_start: run :meth:`cleanup` (no retention) when the runtime starts, so a
                worker first repairs executions a dead worker left running.
            settings: already resolved settings (``config`` is then not read), for callers
                that adjust what :func:`~dspex.config.load_settings` returned.

        Raises:
            ConfigError: the configuration is invalid.
        """
        from dspex.store import open_store

        cwd = Path(cwd) if cwd is not None else None
        if settings is None:
            settings = load_settings(config, cwd=cwd)
        store = open_store(database_url or settings.resolved_database_url(cwd))
        return cls(
            settings,
            store,
            backends=backends,
            worker_id=worker_id,
            hooks=hooks,
            reap_on_start=reap_on_start,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the store (SQLite migrates itself). Safe to call twice."""
        if not self._started:
            await self.store.initialize()
            self._started = True
            if self.reap_on_start:
                # A worker starting up first repairs what a dead predecessor left running.
                await self.cleanup()
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the engine, the backends this runtime built, the Ray actors it kept between
        batches (and a Ray it started for them) and the store."""
        if self._closed:
            return
        self._closed = True
        if self._streaming:
            # a streamed execution whose consumer left still ends and is recorded
            await asyncio.gather(*self._streaming, return_exceptions=True)
        # Ray actors kept between batches end (and a Ray started for them stops) before the
        # store they record into closes
        await self._ctx.executors.aclose()
        if self._owns_telemetry:
            self.telemetry.close()  # flushes spans it exports itself (OTEL_* environment)
        await self.engine.aclose()
        if self._owns_backends:
            for backend in {id(b): b for b in self._backends.values()}.values():
                await backend.aclose()
        await self.store.close()

    async def _ready(self) -> Store:
        if not self._started:
            await self.start()
        return self.store

    # -- health and cleanup -------------------------------------------------------------------

    async def health(
        self,
        level: str = "standard",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per check, see actions.health
    ) -> HealthReport:
        """Check the database, schema, tables, backends, breakers and process (see
        :func:`dspex.actions.health.health`). Never raises for an unhealthy dependency, and does
        not need :meth:`start`: an unreachable database is reported, not raised.

        Raises:
            ValidationError: an unknown level or a non-positive timeout.
        """
        from dspex.actions import health as _health

        context = _health.HealthContext(
            store=self.store,
            backends=self._backends,
            resources=self.engine.resources,
            started_at=self._created_monotonic,
            worker_id=self.worker_id,
            clock=self.store.clock,
            live_calls=self._live_calls,
        )
        return await _health.health(context, level, timeout=timeout)

    async def cleanup(
        self,
        *,
        dry_run: bool = False,
        older_than: timedelta | float | None = None,
        attempt_cap: int = 3,
        stuck_initializing_after: timedelta | float = 600.0,
        stalled_after: timedelta | float = 600.0,
        vacuum: bool = False,
    ) -> CleanupReport:
        """Re-queue or fail executions whose worker died, finish complete batches, fail
        batches whose driver died (resumable), fail programs stuck ``initializing`` and (with
        ``older_than``) delete old executions and batches and the breaker rows of backends
        this runtime does not have; SQLite then gives the space back (``vacuum``: the one-time
        ``VACUUM`` an older file needs). See :func:`dspex.actions.cleanup.cleanup`.

        Raises:
            ValidationError: a non-positive ``attempt_cap`` or age (nothing touched).
        """
        from dspex.actions import cleanup as _cleanup

        return await _cleanup.cleanup(
            await self._ready(),
            dry_run=dry_run,
            older_than=older_than,
            attempt_cap=attempt_cap,
            stuck_initializing_after=stuck_initializing_after,
            stalled_after=stalled_after,
            backends=self.backend_names(),
            vacuum=vacuum,
        )

    async def cache_stats(self, *, program: str | None = None) -> CacheStats:
        """What the response cache holds (entries, size, expired, by model) and the hits recorded
        on steps with the cost they saved; of ``program`` only, when given."""
        from dspex.actions import cache as _cache

        return await _cache.cache_stats(await self._ready(), program=program)

    async def clear_cache(
        self,
        *,
        program: str | None = None,
        older_than: timedelta | float | None = None,
        expired: bool = False,
        dry_run: bool = False,
    ) -> CacheCleared:
        """Delete response cache entries: all, or ``program``'s, or those stored longer ago than
        ``older_than`` (a ``timedelta`` or seconds), or the ``expired`` ones (``cleanup`` purges
        those too).

        Raises:
            ValidationError: a negative ``older_than`` (nothing deleted).
        """
        from dspex.actions import cache as _cache

        return await _cache.clear_cache(
            await self._ready(),
            program=program,
            older_than=older_than,
            expired=expired,
            dry_run=dry_run,
        )

    def backend_names(self) -> set[str]:
        """The name of every backend this runtime can call (members of groups included): the
        names its circuit breakers are kept under."""
        from dspex.resilience import Coordinator

        names: set[str] = set()
        for backend in self._backends.values():
            names.add(backend.name)
            if isinstance(backend, Coordinator):
                names.update(b.name for b in (*backend.backends, *backend.context_window_fallback))
        return names

    # -- programs -----------------------------------------------------------------------------

    async def register(self, program: Program | Mapping[str, Any] | str | Path) -> ProgramInfo:
        """Store a program spec as ``draft``; an unchanged spec returns the existing version.

        A ``retrieve`` corpus must be inside the configured ``corpus_dirs`` or, for a program
        loaded from a file (a path, or :meth:`Program.from_file`), that file's directory. A
        mapping (what the HTTP service passes) gets ``corpus_dirs`` only.

        Raises:
            SpecError: the spec is malformed.
            GraphError: the modules do not form a valid graph.
            PathNotAllowedError: a corpus is outside the allowed directories (nothing stored).
        """
        return await _programs.register(await self._ready(), program, engine=self.engine)

    async def initialize(self, name: str, version: int | None = None) -> ProgramInfo:
        """Check a version and move it to ``ready`` (or ``error`` with the reason)."""
        version = _checked_version(version)
        store = await self._ready()
        return await _programs.initialize(store, self.engine, self._ctx.programs, name, version)

    async def archive(self, name: str, version: int | None = None) -> ProgramInfo:
        """Archive a version (final)."""
        version = _checked_version(version)
        return await _programs.archive(await self._ready(), name, version)

    async def get_program(self, name: str, version: int | None = None) -> ProgramInfo:
        """One version (the newest by default; ``.current`` says whether it is the current
        one). :class:`NotFoundError` if missing."""
        version = _checked_version(version)
        store = await self._ready()
        (info,) = await _programs.program_infos(store, [await store.get_program(name, version)])
        return info

    async def list_programs(self, *, all_versions: bool = False) -> list[ProgramInfo]:
        """The newest version of every program (or every version), each marked ``.current``
        when it is its program's current version."""
        store = await self._ready()
        records = await store.list_programs(all_versions=all_versions)
        return await _programs.program_infos(store, records)

    async def current_version(self, name: str) -> int:
        """The version ``run``, ``batch`` and the service use when none is named: the one last
        promoted, else the newest.

        Raises:
            NotFoundError: no such program.
        """
        store = await self._ready()
        version = await _programs.default_version(store, name, None)
        return (await store.get_program(name, version)).version

    # -- evaluation and promotion -------------------------------------------------------------

    async def evaluate(
        self,
        program: str,
        devset: str | os.PathLike[str],
        *,
        metric: str,
        version: int | None = None,
        options: BatchOptions | None = None,
        resume: str | None = None,
        on_progress: ProgressCallback | None = None,
        out: str | os.PathLike[str] | None = None,
        on_start: Callable[[str], Awaitable[None] | None] | None = None,
        **option_values: Any,
    ) -> EvaluationResult:
        """Measure a program version on a devset: a recorded, resumable batch with a metric.

        Each devset line holds the program's input fields and its labels (expected values of
        output fields). The inputs run as one batch (:meth:`run_batch`: the same runner,
        retries and worker processes); then every item's metric value is recorded with its
        execution and the evaluation's score is their mean (an item whose execution did not
        complete scores 0 and counts in ``failed``).

        Args:
            program: the program name.
            devset: a JSONL file.
            metric: ``exact_match``, ``f1``, ``contains``, ``answer_exact_match`` or an
                allow-listed ``pkg.mod:function`` with DSPy's metric signature.
            version: the version (default: the current version, else the newest).
            options: how the batch runs (:class:`~dspex.BatchOptions`), or its fields by name.
            resume: the batch id of an interrupted evaluation: run what it has not completed
                and score it (same devset and metric).
            on_progress: called after each finished item (see :meth:`run_batch`).
            out: also write one JSON line per item (status, score, outputs or error).
            on_start: called with the batch id once the batch is recorded (see
                :meth:`run_batch`), so an interrupted evaluation can be resumed by it.

        Returns:
            The :class:`~dspex.EvaluationResult` (``status`` ``incomplete`` when the batch
            stopped before every item ran: resume it).

        Raises:
            MetricError: unknown metric, or it raised or returned something not a score.
            SecurityError: a metric reference outside ``allowed_imports``.
            ValidationError: bad options or devset lines (every one named); nothing ran.
            NotFoundError: unknown program (version) or batch.
            ProgramStateError: the version is not ready.
            MaxErrorsExceeded: too many failures; ``.batch_id`` names the batch to resume.
        """
        from dspex.actions import evaluate as _evaluate

        version = _checked_version(version)
        batch_options = _batch.check_options(options, **option_values)
        store = await self._ready()
        return await _evaluate.evaluate(
            store,
            self._ctx.programs,
            self.run_batch,
            program,
            devset,
            metric=metric,
            allowed_imports=self.settings.allowed_imports,
            version=version,
            options=batch_options,
            resume=resume,
            on_progress=on_progress,
            out=out,
            on_start=on_start,
        )

    async def start_evaluation(
        self,
        program: str,
        devset: str | os.PathLike[str],
        *,
        metric: str,
        version: int | None = None,
        options: BatchOptions | None = None,
        resume: str | None = None,
        on_progress: ProgressCallback | None = None,
        **option_values: Any,
    ) -> EvaluationHandle:
        """Start :meth:`evaluate` in a background task; return once its batch is recorded.

        Everything :meth:`evaluate` checks before the first item runs (the metric, the devset,
        the program's state, the options) is checked before this returns, and raised here.

        Returns:
            The batch id and the task running the evaluation (its result is the
            :class:`~dspex.EvaluationResult`; cancelling it leaves the evaluation resumable).
        """
        batch_options = _batch.check_options(options, **option_values)
        if batch_options.workers > 1:
            raise ValidationError(
                "invalid batch options:",
                [
                    ErrorDetail(
                        "workers", "unsupported", "a started evaluation runs in this process"
                    )
                ],
            )
        loop = asyncio.get_running_loop()
        started: asyncio.Future[str] = loop.create_future()

        def on_start(batch_id: str) -> None:
            if not started.done():
                started.set_result(batch_id)

        task = loop.create_task(
            self.evaluate(
                program,
                devset,
                metric=metric,
                version=version,
                options=batch_options,
                resume=resume,
                on_progress=on_progress,
                on_start=on_start,
            ),
            name=f"dspex-evaluation-{program}",
        )
        if not await _started(task, started):
            # Failed before the batch ran (or a finished evaluation was read back).
            done = task.result()
            if done.batch_id is None:  # pragma: no cover - a recorded evaluation has its batch
                raise DspexError("the evaluation ended before it started")
            return EvaluationHandle(batch_id=done.batch_id, task=task)
        return EvaluationHandle(batch_id=started.result(), task=task)

    async def compare(
        self,
        program: str,
        devset: str | os.PathLike[str],
        *,
        metric: str,
        versions: tuple[int, int],
        seed: int = 0,
        resamples: int = 1000,
        options: BatchOptions | None = None,
        on_progress: ProgressCallback | None = None,
        **option_values: Any,
    ) -> ComparisonResult:
        """Evaluate two versions on the same devset items and compare their scores.

        Returns:
            Both evaluations, ``difference`` (second minus first) and a paired bootstrap 95%
            ``interval`` of it (``seed`` makes it reproducible).

        Raises:
            What :meth:`evaluate` raises; ValidationError when an evaluation did not complete.
        """
        from dspex.actions import evaluate as _evaluate

        a, b = (_checked_version(v) for v in versions)
        batch_options = _batch.check_options(options, **option_values)
        results = []
        for version in (a, b):
            results.append(
                await self.evaluate(
                    program,
                    devset,
                    metric=metric,
                    version=version,
                    options=batch_options,
                    on_progress=on_progress,
                )
            )
        return await _evaluate.compare(
            self.store, results[0], results[1], seed=seed, resamples=resamples
        )

    async def list_evaluations(
        self, program: str, *, version: int | None = None, limit: int = 50
    ) -> list[EvaluationResult]:
        """A program's recorded evaluations (of one version, if given), newest first."""
        from dspex.actions import evaluate as _evaluate

        version = _checked_version(version)
        store = await self._ready()
        records = await store.list_evaluations(program, version=version, limit=limit)
        return [_evaluate.evaluation_result(r) for r in records]

    async def promote(
        self,
        program: str,
        version: int,
        *,
        devset: str | os.PathLike[str] | None = None,
        metric: str | None = None,
        min_improvement: float = 0.0,
        force: bool = False,
        promoted_by: str | None = None,
        options: BatchOptions | None = None,
        **option_values: Any,
    ) -> PromotionResult:
        """Make ``version`` the program's current version, past a score gate.

        The version (which must be ready) and the version in use are measured on ``devset``
        with ``metric`` (a recorded evaluation of the same version, devset and metric is
        reused; otherwise :meth:`evaluate` runs, with ``options``); the pointer moves only if
        the candidate scores at least the other's score plus ``min_improvement``. ``force``
        skips the gate and is recorded as such. Rollback is promoting an older version.

        Raises:
            PromotionRefusedError: the gate refused it (``.score``, ``.previous_score``).
            ValidationError: no devset and metric without ``force``, or a bad margin.
            ProgramStateError: the version is not ready, or another promotion came first.
            NotFoundError: no such program version.
        """
        from dspex.actions import promote as _promote

        checked = _checked_version(version)
        assert checked is not None
        batch_options = _batch.check_options(options, **option_values)
        store = await self._ready()

        async def measure(v: int) -> EvaluationResult:
            assert devset is not None
            assert metric is not None
            return await self.evaluate(
                program, devset, metric=metric, version=v, options=batch_options
            )

        result = await _promote.promote(
            store,
            program,
            checked,
            evaluate=measure,
            devset=devset,
            metric=metric,
            min_improvement=min_improvement,
            force=force,
            promoted_by=promoted_by or self.worker_id,
        )
        self._ctx.ready.pop((program, None), None)
        return result

    async def list_promotions(self, program: str, *, limit: int = 50) -> list[PromotionResult]:
        """A program's promotions (moves of its current version), newest first."""
        from dspex.actions import promote as _promote

        store = await self._ready()
        records = await store.list_promotions(program, limit=limit)
        return [_promote.promotion_result(r, previous=r.previous_version) for r in records]

    async def export_dataset(
        self,
        program: str,
        out: str | os.PathLike[str] | IO[str],
        *,
        version: int | None = None,
        status: str | None = None,
        since: timedelta | float | str | None = None,
        limit: int | None = None,
    ) -> DatasetExport:
        """Write recorded executions as JSONL examples (inputs and outputs), newest first.

        Args:
            program: the program.
            out: a file path, or an open text stream.
            version: only this version (default: every version).
            status: ``completed`` (the default: examples with outputs), ``failed`` (inputs and
                the error, to label by hand) or ``all``.
            since: only executions this recent (a timedelta, seconds, or ``"7d"``).
            limit: at most this many lines.

        Raises:
            ValidationError: an unknown status, a bad ``since`` or ``limit``, an unwritable file.
            NotFoundError: no such program (version).
        """
        from datetime import timedelta as _timedelta

        from dspex.actions import dataset as _dataset
        from dspex.actions.cleanup import parse_age

        version = _checked_version(version)
        age: _timedelta | None
        if since is None or isinstance(since, _timedelta):
            age = since
        elif isinstance(since, str):
            age = parse_age(since)
        else:
            age = _timedelta(seconds=float(since))
        if age is not None and age.total_seconds() < 0:
            raise ValidationError(
                "invalid dataset export:", [ErrorDetail("since", "negative", f"got {since}")]
            )
        store = await self._ready()
        return await _dataset.export_dataset(
            store, program, version=version, status=status, since=age, limit=limit, out=out
        )

    async def load_program(self, name: str, version: int | None = None) -> Program:
        """The stored spec of a version as a :class:`Program`."""
        version = _checked_version(version)
        store = await self._ready()
        return self._ctx.programs.get(await store.get_program(name, version))

    async def calls_dspy_lm(
        self, name: str, version: int | None = None, *, backend: str | None = None
    ) -> bool:
        """Whether running a version calls a ``dspy.LM``: one of its ``predict``,
        ``chain_of_thought`` or ``dspy`` modules runs on a ``dspy`` backend (behind a cache or a
        rate limit, or in a group), or a ``dspy`` module runs on the LM its own code configures.

        DSPy hands parts of every such call to worker threads; a process that runs such a
        program and nothing else may tune itself for that (``dspex.tune_process(dspy_lm=True)``,
        as ``dspex batch`` does).

        Args:
            name: the program.
            version: the version (default: the current one, as ``run`` and ``batch`` use).
            backend: the backend every module would run on instead of its own, as
                ``run_batch``'s ``backend=``.

        Raises:
            NotFoundError: no such program or version.
        """
        version = _checked_version(version)
        store = await self._ready()
        record = await store.get_program(
            name, await _programs.default_version(store, name, version)
        )
        return self.engine.calls_dspy_lm(self._ctx.programs.get(record, backend))

    # -- executions ---------------------------------------------------------------------------

    async def execute(
        self,
        program: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None = None,
        backend: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the public contract
        strategy: str | None = None,
        cache: str | None = None,
    ) -> ExecutionResult:
        """Run a ready program once and record it (see :func:`dspex.actions.execute.execute`).

        Module/backend failures, output validation failures and timeouts are recorded and
        returned as ``failed`` results; they are not raised. ``cache`` (``off``, ``read_only``,
        ``read_write``) is this run's response cache mode, over the modules' and backends' own
        (default: theirs, else ``[cache] mode``; see :mod:`dspex.resilience.cache`).

        Raises:
            NotFoundError: unknown program (version).
            ProgramStateError: the version is not ready (the message names its status).
            ValidationError: bad inputs (nothing recorded).
            ConfigError: unknown backend or strategy.
        """
        version = _checked_version(version)
        if not self._started:
            await self.start()
        return await _execute.execute(
            self._ctx,
            program,
            inputs,
            version=version,
            backend=backend,
            timeout=timeout,
            strategy=strategy,
            cache=cache,
        )

    async def start_execution(
        self,
        program: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None = None,
        backend: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the public contract
        strategy: str | None = None,
        cache: str | None = None,
    ) -> ExecutionHandle:
        """Start :meth:`execute` in a background task; return once the execution is recorded.

        The arguments are :meth:`execute`'s. Whatever it refuses before anything is recorded
        is raised here. The returned id can be looked up (:meth:`get_execution`) and cancelled
        (:meth:`cancel_execution`) at once, from any process sharing the store.

        Raises:
            NotFoundError: unknown program (version).
            ProgramStateError: the version is not ready.
            ValidationError: bad inputs (nothing recorded).
            ConfigError: unknown backend or strategy.
        """
        version = _checked_version(version)
        if not self._started:
            await self.start()
        loop = asyncio.get_running_loop()
        recorded: asyncio.Future[str] = loop.create_future()

        def on_recorded(execution_id: str) -> None:
            if not recorded.done():
                recorded.set_result(execution_id)

        task = loop.create_task(
            _execute.execute(
                self._ctx,
                program,
                inputs,
                version=version,
                backend=backend,
                timeout=timeout,
                strategy=strategy,
                cache=cache,
                on_recorded=on_recorded,
            ),
            name=f"dspex-execution-{program}",
        )
        if not await _started(task, recorded):
            # Refused before it was recorded (not found, not ready, bad inputs…): raise that.
            task.result()
            raise DspexError("the execution ended before it was recorded")  # pragma: no cover
        return ExecutionHandle(execution_id=recorded.result(), task=task, program=program)

    def stream(
        self,
        program: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None = None,
        backend: str | None = None,
        timeout: float | None = None,
        strategy: str | None = None,
        cache: str | None = None,
    ) -> AsyncIterator[ExecutionEvent]:
        """Run a ready program once, as :meth:`execute` does, and watch it as it runs.

        Iterate the result: ``started`` (the execution's id), ``step_started`` and
        ``step_finished`` for each module, ``token`` for each piece of the final modules'
        answer as the backend streams it (``openai`` backends, DSPy's stream listeners for
        ``dspy`` modules and backends), ``retry`` when a final module's new attempt voids the
        tokens sent, then ``done`` with the recorded :class:`ExecutionResult` (see
        :mod:`dspex.actions.streaming`). The execution runs in a task of its own: leaving the
        loop early stops the events, not the execution, which is recorded as any other (and
        :meth:`aclose` waits for it).

        Example:
            >>> async for event in rt.stream("qa", {"question": "Why?"}):  # doctest: +SKIP
            ...     if event.event == "token":
            ...         print(event.text, end="", flush=True)

        Raises:
            NotFoundError, ProgramStateError, ValidationError, ConfigError: as :meth:`execute`,
                from the first iteration (nothing was recorded).
        """
        return self._stream(
            program,
            inputs,
            version=version,
            backend=backend,
            timeout=timeout,
            strategy=strategy,
            cache=cache,
        )

    async def _stream(
        self,
        program: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None,
        backend: str | None,
        timeout: float | None,  # noqa: ASYNC109 - the public contract
        strategy: str | None,
        cache: str | None,
    ) -> AsyncIterator[ExecutionEvent]:
        from dspex.actions.streaming import ExecutionStream

        version = _checked_version(version)
        if not self._started:
            await self.start()
        channel = ExecutionStream()
        run = asyncio.get_running_loop().create_task(
            _execute.execute(
                self._ctx,
                program,
                inputs,
                version=version,
                backend=backend,
                timeout=timeout,
                strategy=strategy,
                cache=cache,
                stream=channel,
            )
        )
        self._streaming.add(run)
        run.add_done_callback(self._streaming.discard)
        async for event in channel.events(run):
            yield event

    async def resolve_id(
        self, id_or_prefix: str, *, kind: Literal["execution", "batch"] = "execution"
    ) -> str:
        """The full id of the execution (or batch) ``id_or_prefix`` names, as ``git`` takes a
        short hash: the id itself, else the one id that starts with it.

        Example:
            >>> await rt.get_batch(await rt.resolve_id("0197a3f2", kind="batch"))  # doctest: +SKIP

        Raises:
            NotFoundError: no id is or starts with it.
            AmbiguousIdError: several ids start with it (``.candidates`` lists the first ten).
            ValidationError: an empty id or an unknown ``kind``.
        """
        if kind not in ("execution", "batch"):
            raise ValidationError(
                "invalid id lookup:",
                [ErrorDetail("kind", "unknown_kind", f"{kind!r} is not execution or batch")],
            )
        text = id_or_prefix.strip()
        if not text:
            raise ValidationError(
                "invalid id lookup:", [ErrorDetail("id", "empty", f"give a {kind} id")]
            )
        store = await self._ready()
        lookups = [text]
        if _HEX_ID.fullmatch(text) and text.lower() != text:
            lookups.append(text.lower())
        for candidate in lookups:
            try:
                # a whole id is one primary-key read, on every store
                if kind == "execution":
                    await store.get_execution(candidate)
                else:
                    await store.get_batch(candidate)
                return candidate
            except NotFoundError:
                pass
            matches = await store.match_ids(kind, candidate, limit=_CANDIDATES + 1)
            if len(matches) == 1:
                return matches[0]
            if matches:
                many = f"more than {_CANDIDATES}" if len(matches) > _CANDIDATES else len(matches)
                plural = "batches" if kind == "batch" else "executions"
                raise AmbiguousIdError(
                    f"the id prefix {text!r} matches {many} {plural}; give more of the id:",
                    matches[:_CANDIDATES],
                )
        raise NotFoundError(f"no {kind} id is or starts with {text!r}")

    async def get_execution(self, execution_id: str) -> ExecutionDetail:
        """Everything recorded about one execution. :class:`NotFoundError` if missing."""
        return await _queries.execution_detail(await self._ready(), execution_id)

    async def cancel_execution(self, execution_id: str) -> ExecutionDetail:
        """Cancel an execution wherever it runs (this process or another sharing the database).

        The request is recorded on the execution; the process running it sees it when it next
        renews its lease (within a third of ``lease_seconds``), cancels the run and records it
        ``cancelled`` (error code ``cancelled``). One that nobody holds (``pending``, or its
        holder's lease expired) is ``cancelled`` at once.

        Returns:
            The execution as it now is: ``running`` (its holder will cancel it) or
            ``cancelled``.

        Raises:
            NotFoundError: no such execution.
            ExecutionFinishedError: it had already finished (``status`` names how).
        """
        store = await self._ready()
        record = await store.request_execution_cancel(execution_id)
        # finished before (or without) any request; a run cancelled on request is answered again
        asked = record.cancel_requested_at is not None
        if record.status.is_terminal and not (asked and record.status == "cancelled"):
            raise ExecutionFinishedError(
                f"execution {execution_id} has already finished ({record.status.value})",
                status=record.status.value,
            )
        return await _queries.execution_detail(store, execution_id)

    async def list_executions(
        self,
        *,
        program: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionPage:
        """Executions, newest first; pass ``next_cursor`` back as ``cursor`` for more."""
        return await _queries.list_executions(
            await self._ready(), program=program, status=status, limit=limit, cursor=cursor
        )

    async def history(self, program: str, *, limit: int = 200) -> ProgramHistory:
        """Per-module p50/p95/success rate, critical path and bottlenecks of recent runs."""
        store = await self._ready()
        return await _queries.program_history(store, self._ctx.programs, program, limit=limit)

    async def graph(
        self, program: str, version: int | None = None, *, batch_id: str | None = None
    ) -> GraphInfo:
        """The plan (weighted by history) and the last run, for ``dspex graph``; with
        ``batch_id``, also where that batch's time went (``GraphInfo.batch``)."""
        version = _checked_version(version)
        store = await self._ready()
        return await _queries.graph_info(store, self._ctx.programs, program, version, batch_id)

    # -- optimization -------------------------------------------------------------------------

    async def optimize(
        self,
        program: str | None = None,
        trainset: str | Path | Sequence[Mapping[str, Any]] | None = None,
        *,
        metric: str | None = None,
        optimizer: str | None = None,
        version: int | None = None,
        valset: str | Path | Sequence[Mapping[str, Any]] | None = None,
        seed: int | None = None,
        max_demos: int | None = None,
        resume: str | None = None,
        on_progress: OptimizationCallback | None = None,
        on_start: Callable[[str], None] | None = None,
        cache: str | None = None,
    ) -> OptimizationInfo:
        """Run a DSPy optimizer over a program version; the result is a new ``draft`` version.

        ``trainset`` and ``valset`` are JSONL files (or lists) of examples: the program's input
        fields plus the expected outputs (the labels). The run is recorded (see
        :meth:`get_optimization`) and every LM call it makes through the program goes through
        the runtime's backends. While it runs, its lease is renewed: a run whose process died
        is shown ``interrupted`` and can be resumed. See :mod:`dspex.actions.optimize`.

        Args:
            program: the program name (with ``resume``: may be left out).
            trainset: the training examples.
            metric: a built-in metric or an allow-listed ``pkg.mod:function``.
            optimizer: ``bootstrap_few_shot`` (default), ``bootstrap_random_search``,
                ``mipro_v2`` or ``gepa``.
            version: the version to optimize (default: the current one, else the newest).
            valset: the examples both scores are measured on (default: the trainset).
            seed: the optimizer's seed.
            max_demos: demos per predictor, at most (default 4).
            resume: the id of a ``failed`` or ``interrupted`` run (or a ``running`` one whose
                process died): it goes on with the data sets, settings and seed it was started
                with (give none of them); the baseline and each scored
                ``bootstrap_random_search`` candidate are reused, not run again; the other
                optimizers compile again with the same seed.
            on_progress: called on the event loop with each
                :class:`~dspex.OptimizationEvent`.
            on_start: called with the run's id once it is recorded (or claimed to resume).
            cache: the response cache mode of the program's LM calls, over the modules' and
                backends' own (by default theirs, else ``read_write``).

        Example:
            >>> run = await rt.optimize(  # doctest: +SKIP
            ...     "qa", "train.jsonl", metric="exact_match", optimizer="bootstrap_few_shot"
            ... )
            >>> run.version, run.baseline_score, run.score  # doctest: +SKIP

        Raises:
            ValidationError: unknown optimizer, data sets that do not fit the program, or
                settings given with ``resume``.
            MetricError, SecurityError, ConfigError: see :func:`dspex.actions.optimize.optimize`.
            NotFoundError: no such program (version) or run.
            OptimizationError: the optimizer failed (the run is recorded as failed), or the
                run to resume completed or still runs.
        """
        from dspex.actions import optimize as _optimize
        from dspex.resilience.cache import check_mode

        version = _checked_version(version)
        store = await self._ready()
        ctx = _optimize.OptimizeContext(
            store,
            self.settings,
            self._backends,
            self._ctx.programs,
            worker_id=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            cache=self.cache,
            cache_mode=check_mode(cache),
        )
        return await _optimize.optimize(
            ctx,
            program,
            trainset,
            metric=metric,
            optimizer=optimizer,
            version=version,
            valset=valset,
            seed=seed,
            max_demos=max_demos,
            resume=resume,
            on_progress=on_progress,
            on_start=on_start,
        )

    async def start_optimization(
        self,
        program: str | None = None,
        trainset: str | Path | Sequence[Mapping[str, Any]] | None = None,
        *,
        on_progress: OptimizationCallback | None = None,
        **options: Any,
    ) -> OptimizationHandle:
        """Start :meth:`optimize` in a background task; return once the run is recorded.

        Takes :meth:`optimize`'s arguments. Everything it checks before recording the run (the
        optimizer, metric, data sets, backends, budget; with ``resume``, that the run can be
        resumed) is checked before this returns, and raised here.

        Returns:
            The run's id and the task running it (its result is the
            :class:`~dspex.OptimizationInfo`; cancelling it leaves the run ``interrupted``,
            resumable).
        """
        loop = asyncio.get_running_loop()
        started: asyncio.Future[str] = loop.create_future()

        def on_start(optimization_id: str) -> None:
            if not started.done():
                started.set_result(optimization_id)

        task = loop.create_task(
            self.optimize(program, trainset, on_progress=on_progress, on_start=on_start, **options),
            name=f"dspex-optimization-{program or options.get('resume')}",
        )
        if not await _started(task, started):
            task.result()  # failed before the run was recorded: raise that error here
            raise DspexError("the optimization ended before it started")  # pragma: no cover
        return OptimizationHandle(optimization_id=started.result(), task=task)

    async def get_optimization(self, optimization_id: str) -> OptimizationInfo:
        """A recorded optimization run with its trials. :class:`NotFoundError` if missing."""
        from dspex.actions import optimize as _optimize

        return await _optimize.get_optimization(await self._ready(), optimization_id)

    async def list_optimizations(
        self, *, program: str | None = None, limit: int = 50
    ) -> list[OptimizationInfo]:
        """Recorded optimization runs, newest first (without their trials)."""
        from dspex.actions import optimize as _optimize

        return await _optimize.list_optimizations(await self._ready(), program=program, limit=limit)

    async def tune(
        self, program: str, *, version: int | None = None, limit: int = 500, apply: bool = False
    ) -> TuneProposal:
        """Propose per-module timeouts, retry budgets and the strategy from recorded runs.

        With ``apply`` the proposal becomes a new ``draft`` version (``applied_version``). See
        :mod:`dspex.actions.tune` for the rules.

        Raises:
            NotFoundError: no such program (version).
        """
        from dspex.actions import tune as _tune

        version = _checked_version(version)
        store = await self._ready()
        return await _tune.tune(
            store, self._ctx.programs, program, version=version, limit=limit, apply=apply
        )

    # -- batches ------------------------------------------------------------------------------

    async def run_batch(
        self,
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
        on_start: Callable[[str], Awaitable[None] | None] | None = None,
        recoverable: bool = False,
        **option_values: Any,
    ) -> BatchResult:
        """Run a ready program over many inputs as one recorded, resumable batch.

        A fixed pool of ``max_concurrency`` async workers drains a queue (never more items
        running at once, no chunk barriers). Every item is an execution linked to the batch;
        finished items are written in small groups.

        Args:
            program: the program name.
            items: a list of input mappings, a JSONL file path, or any iterable of mappings
                (streamed through a temporary file, so memory stays flat).
            version: the version (default: the current version, else the newest; it must be
                ready; on resume, the batch's version).
            backend: run every predict/chain_of_thought module on this configured backend.
            strategy: overrides the program's strategy.
            options: how the batch runs (:class:`~dspex.BatchOptions`: concurrency, item
                retries, error limit, timeouts, validation, worker processes); or give its
                fields by name as keyword arguments (``max_concurrency=8, validate="per_item",
                workers="auto"``), not both.
            resume: a batch id: skip its completed items and re-run the rest (same input).
            on_progress: called with a :class:`~dspex.ProgressEvent` after each finished item
                (may be a coroutine function).
            out: also write one JSON line per item, in input order, to this file.
            on_start: called with the batch id once the batch is recorded (created, or found
                on resume) and its items are about to run (may be a coroutine function), so the
                id is known even if the process dies mid-batch.
            recoverable: record every item (with its inputs) before any runs, so that if this
                process dies another one sharing the database takes the batch over
                (:meth:`take_over_batch`) and runs the rest from the store alone.

        Returns:
            The :class:`BatchResult`; ``results`` holds every item only when ``items`` was a
            list — otherwise read them with :meth:`batch_results`.

        Raises:
            ValidationError: bad or unknown options, ``options`` given with option names, or
                (up front) bad items; nothing ran.
            NotFoundError: unknown program (version) or batch.
            ProgramStateError: the version is not ready.
            ConfigError: unknown backend or strategy, ``workers > 1`` on a memory store, or
                a cluster that cannot run the batch (Ray missing or unreachable, SQLite on a
                Ray cluster of several machines, an actor bigger than the cluster); refused
                before the batch is recorded.
            MaxErrorsExceeded: too many failures; ``.batch_id`` names the (resumable) batch.

        On a cluster, the runtime keeps its Ray connection and its actors (warmed runtimes)
        from one batch to the next until it closes: the next batch with the same store,
        settings, backends and actor CPUs runs on them without starting them again (see
        ``docs/ray.md``).
        """
        version = _checked_version(version)
        batch_options = _batch.check_options(options, **option_values).on_cluster(
            self.settings.cluster
        )
        if not self._started:
            await self.start()
        context = self._worker_context()
        ctx = self._ctx
        if on_start is not None:
            watch: Any = _BatchStartWatch(self.store, on_start)
            ctx = dataclasses.replace(ctx, store=watch)
        return await _batch.run_batch(
            ctx,
            program,
            items,
            version=version,
            backend=backend,
            strategy=strategy,
            options=batch_options,
            resume=resume,
            on_progress=on_progress,
            out=out,
            worker_context=context,
            recoverable=recoverable,
        )

    def _worker_context(self) -> dict[str, Any]:
        """What a batch's workers in other processes (or on Ray) build their runtime from:
        the settings, and the backends unless this runtime built them from the settings."""
        return {
            "settings": self.settings.model_dump(mode="json"),
            "backends": None if self._owns_backends else self._backends,
        }

    async def estimate_batch(
        self,
        program: str,
        items: BatchItems,
        *,
        version: int | None = None,
        backend: str | None = None,
    ) -> BatchEstimate:
        """The expected tokens and cost of :meth:`run_batch` over ``items``, without running.

        Per item: the mean usage of the version's recent completed executions when it has
        some, else each LM module's prompt-token estimate; priced like recorded runs
        (``[prices]`` over LiteLLM's cost map). See :class:`~dspex.BatchEstimate`.

        Raises:
            NotFoundError: unknown program (version).
            ConfigError: unknown backend.
            ValidationError: the items cannot be read.
        """
        from dspex.actions.estimate import estimate_batch

        version = _checked_version(version)
        await self._ready()
        return await estimate_batch(self._ctx, program, items, version=version, backend=backend)

    async def start_workers(self) -> None:
        """Get worker processes ready before the first ``run_batch(workers=N)``.

        Worker processes are forked from a server process that imports dspex (and DSPy when
        this process uses it) once; the first batch with workers otherwise waits a second or
        two for it. Returns once it is ready; later batches (and calls) reuse it.
        """
        await _batch.start_workers()

    async def batch_results(self, batch_id: str) -> AsyncIterator[ItemResult]:
        """Every item of a batch in input order, streamed from the store.

        Raises:
            NotFoundError: no such batch.
        """
        async for item in _batch.batch_results(await self._ready(), batch_id):
            yield item

    async def start_batch(
        self,
        program: str,
        items: BatchItems,
        *,
        version: int | None = None,
        backend: str | None = None,
        strategy: str | None = None,
        options: BatchOptions | None = None,
        resume: str | None = None,
        on_progress: ProgressCallback | None = None,
        recoverable: bool = False,
        **option_values: Any,
    ) -> BatchHandle:
        """Start :meth:`run_batch` in a background task; return once the batch is running.

        The options are those of :meth:`run_batch` (this process or a Ray cluster, not worker
        processes). Everything
        :meth:`run_batch` checks before the first item runs (options, program state, every
        item up front) is checked before this returns, and raised here.

        Returns:
            The batch id and the task running it (cancel the task to cancel the batch).

        Raises:
            ValidationError: bad options (``workers`` above 1 included) or (up front) bad
                items; nothing ran.
            NotFoundError: unknown program (version) or batch.
            ProgramStateError: the version is not ready.
            ConfigError: unknown backend or strategy.
        """
        version = _checked_version(version)
        batch_options = _batch.check_options(options, **option_values).on_cluster(
            self.settings.cluster
        )
        if batch_options.workers > 1:
            raise ValidationError(
                "invalid batch options:",
                [ErrorDetail("workers", "unsupported", "a started batch runs in this process")],
            )
        if not self._started:
            await self.start()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[str] = loop.create_future()
        watch: Any = _BatchStartWatch(self.store, started.set_result)
        ctx = dataclasses.replace(self._ctx, store=watch)
        task = loop.create_task(
            _batch.run_batch(
                ctx,
                program,
                items,
                version=version,
                backend=backend,
                strategy=strategy,
                options=batch_options,
                resume=resume,
                on_progress=on_progress,
                recoverable=recoverable,
                worker_context=self._worker_context(),
            ),
            name=f"dspex-batch-{program}",
        )
        if not await _started(task, started):
            # Failed before the batch ran (bad items, not ready…): raise that error here.
            task.result()
            raise DspexError("the batch ended before it started")  # pragma: no cover
        return BatchHandle(batch_id=started.result(), task=task, program=program)

    async def take_over_batch(
        self, *, on_progress: ProgressCallback | None = None
    ) -> BatchHandle | None:
        """Resume in the background one batch whose driver died, if there is one.

        A batch's driver (the process running it) holds a lease it renews every third of
        ``lease_seconds``; when the process dies the lease lapses. This claims one such batch
        with one conditional write (so of processes sharing the database exactly one takes
        it), then resumes it like :meth:`start_batch` with ``resume=``, with the options it
        was started with and its items read from the store: its completed items are kept, the
        others run here (each item ends completed exactly once). Only batches started
        ``recoverable`` can be taken over. Service replicas call this periodically.

        Returns:
            The handle of the resumed batch, or ``None`` when no batch needed a driver.

        Raises:
            DspexError: the batch could not be resumed (e.g. its program version is no
                longer ready); it is left ``failed``, resumable once that is fixed.
        """
        store = await self._ready()
        found = await _batch.take_over(self._ctx)
        if found is None:
            return None
        record, items = found
        config = record.config if isinstance(record.config, dict) else {}
        log.info("taking over batch %s (its driver %s stopped)", record.id, record.driver)
        try:
            return await self.start_batch(
                record.program,
                items,
                backend=config.get("backend"),
                strategy=config.get("strategy"),
                options=_batch.stored_options(config),
                resume=record.id,
                on_progress=on_progress,
            )
        except DspexError:
            from dspex.records import BatchStatus

            await store.set_batch_status(record.id, BatchStatus.FAILED)
            raise

    async def hand_over_batch(self, batch_id: str) -> BatchInfo | None:
        """Leave a recoverable batch whose run this process stopped (cancelled its task) to
        another process sharing the database: it is ``running`` again with its driver's lease
        already lapsed, so the next :meth:`take_over_batch` anywhere resumes it. A service
        replica that shuts down hands over the batches it was running.

        Returns:
            The batch as handed over, or ``None`` when it cannot be (not started
            ``recoverable``, not stopped, or cancelled at someone's request).

        Raises:
            NotFoundError: no such batch.
        """
        store = await self._ready()
        record = await store.get_batch(batch_id)
        if not isinstance(record.config, dict) or record.config.get("inputs") != "stored":
            return None
        handed = await store.hand_over_batch(batch_id)
        return None if handed is None else _batch_info(handed)

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Cancel a batch wherever it runs (this process or another sharing the database).

        The request is recorded on the batch; its driver sees it when it next renews its lease
        (within a third of ``lease_seconds``) and cancels the run: running items are recorded
        ``cancelled`` and the batch is left ``cancelled``, resumable. A batch no process is
        running is ``cancelled`` at once. To cancel a batch started in this process at once,
        cancel its task (:meth:`start_batch`).

        Returns:
            The batch as it now is (``cancel_requested`` set).

        Raises:
            NotFoundError: no such batch.
            BatchError: the batch has already finished.
        """
        record = await (await self._ready()).request_batch_cancel(batch_id)
        if not record.cancel_requested:
            raise BatchError(
                f"batch {batch_id} has already finished ({record.status.value})",
                batch_id=batch_id,
            )
        return _batch_info(record)

    async def get_batch(self, batch_id: str) -> BatchInfo:
        """A recorded batch's status and counts. :class:`NotFoundError` if missing."""
        return _batch_info(await (await self._ready()).get_batch(batch_id))

    async def list_batches(
        self, *, limit: int = 20, status: str | None = None, program: str | None = None
    ) -> list[BatchInfo]:
        """Recorded batches, newest first.

        Args:
            limit: at most this many (1 or more).
            status: only batches in this status (``pending``, ``running``, ``completed``,
                ``failed`` or ``cancelled``).
            program: only batches of this program.

        Raises:
            ValidationError: ``limit`` below 1 or an unknown ``status``.
        """
        from dspex.records import BatchStatus

        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError(
                "invalid batch listing:", [ErrorDetail("limit", "too_small", "must be >= 1")]
            )
        statuses: tuple[BatchStatus, ...] = ()
        if status is not None:
            try:
                statuses = (BatchStatus(status),)
            except ValueError:
                known = ", ".join(s.value for s in BatchStatus)
                raise ValidationError(
                    "invalid batch listing:",
                    [ErrorDetail("status", "unknown_status", f"{status!r} is not one of {known}")],
                ) from None
        store = await self._ready()
        records = await store.list_batches(statuses=statuses, limit=limit, program=program)
        return [_batch_info(record) for record in records]

    async def breaker_states(self) -> dict[str, str]:
        """The recorded circuit-breaker state of each backend that has one.

        Raises:
            StorageError: the database cannot be read.
        """
        store = await self._ready()
        return {record.backend: record.state for record in await store.list_breakers()}

    async def readiness(self) -> Readiness:
        """Whether the database answers and its schema is current; never raises for either."""
        try:
            latency = await self.store.ping()
            revision = await self.store.schema_revision()
            current = await self.store.is_current()
        except DspexError as exc:
            return Readiness(
                ready=False, revision=None, current=False, latency_ms=None, reason=exc.message
            )
        except Exception as exc:  # readiness reports an unreachable database, never raises
            return Readiness(
                ready=False,
                revision=None,
                current=False,
                latency_ms=None,
                reason=f"{type(exc).__name__}: {exc}",
            )
        reason = "" if current else "the database schema is not current: run `dspex db upgrade`"
        return Readiness(
            ready=current,
            revision=revision,
            current=current,
            latency_ms=round(latency, 3),
            reason=reason,
        )


async def _started(task: asyncio.Task[Any], started: asyncio.Future[str]) -> bool:
    """Wait until ``task`` (a batch, an execution) reported its start on ``started`` or ended
    first (``False``: it ended before it started, and ``started`` is cancelled). Cancelling the
    wait cancels it."""
    waiters: set[asyncio.Future[Any]] = {task, started}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if started.done():
        return True
    started.cancel()
    return False
