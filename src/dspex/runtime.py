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

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

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
from dspex.errors import ConfigError

if TYPE_CHECKING:
    from dspex.backends.base import Backend
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program
    from dspex.store.base import Store
    from dspex.telemetry import Telemetry

# The result models are re-exported: callers import them from here alongside Runtime.
__all__ = [
    "ExecutionDetail",
    "ExecutionPage",
    "ExecutionResult",
    "GraphInfo",
    "ProgramHistory",
    "ProgramInfo",
    "Runtime",
    "build_backends",
]

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


def build_backends(settings: Settings) -> dict[str, Backend]:
    """The backends named in the settings (``default`` aliases ``settings.default_backend``).

    Raises:
        ConfigError: a backend's options are wrong.
    """
    built: dict[str, Backend] = {}
    for name, config in settings.backends.items():
        built[name] = _backend(name, config)
    if "default" not in built and settings.default_backend in built:
        built["default"] = built[settings.default_backend]
    return built


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
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        backends: Mapping[str, Backend] | None = None,
        worker_id: str | None = None,
        hooks: Sequence[object] = (),
        telemetry: Telemetry | None = None,
    ) -> None:
        from dspex.engine.engine import Engine
        from dspex.telemetry import Telemetry

        self.settings = settings
        self.store = store
        self._owns_backends = backends is None
        self._backends: dict[str, Backend] = (
            build_backends(settings) if backends is None else dict(backends)
        )
        self.worker_id = worker_id or settings.worker_id or _default_worker_id()
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.hooks = tuple(hooks)
        self.engine: Engine = Engine(
            self._backends,
            resources=settings.resources,
            allowed_imports=settings.allowed_imports,
            hooks=(*self.hooks, self.telemetry),
        )
        self._ctx = _execute.ExecuteContext(
            store=store,
            engine=self.engine,
            worker_id=self.worker_id,
            lease_seconds=settings.lease_seconds,
            telemetry=self.telemetry,
            hooks=self.hooks,
        )
        self._started = False
        self._closed = False

    @classmethod
    def open(
        cls,
        database_url: str | None = None,
        *,
        config: str | Path | None = None,
        backends: Mapping[str, Backend] | None = None,
        worker_id: str | None = None,
        hooks: Sequence[object] = (),
        cwd: Path | None = None,
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

        Raises:
            ConfigError: the configuration is invalid.
        """
        from dspex.store import open_store

        settings = load_settings(config, cwd=cwd)
        store = open_store(database_url or settings.resolved_database_url(cwd))
        return cls(settings, store, backends=backends, worker_id=worker_id, hooks=hooks)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Open the store (SQLite migrates itself). Safe to call twice."""
        if not self._started:
            await self.store.initialize()
            self._started = True
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
        """Close the engine, the backends this runtime built and the store."""
        if self._closed:
            return
        self._closed = True
        await self.engine.aclose()
        if self._owns_backends:
            for backend in {id(b): b for b in self._backends.values()}.values():
                await backend.aclose()
        await self.store.close()

    async def _ready(self) -> Store:
        if not self._started:
            await self.start()
        return self.store

    # -- programs -----------------------------------------------------------------------------

    async def register(self, program: Program | Mapping[str, Any] | str | Path) -> ProgramInfo:
        """Store a program spec as ``draft``; an unchanged spec returns the existing version.

        Raises:
            SpecError: the spec is malformed.
            GraphError: the modules do not form a valid graph.
        """
        return await _programs.register(await self._ready(), program)

    async def initialize(self, name: str, version: int | None = None) -> ProgramInfo:
        """Check a version and move it to ``ready`` (or ``error`` with the reason)."""
        store = await self._ready()
        return await _programs.initialize(store, self.engine, self._ctx.programs, name, version)

    async def archive(self, name: str, version: int | None = None) -> ProgramInfo:
        """Archive a version (final)."""
        return await _programs.archive(await self._ready(), name, version)

    async def get_program(self, name: str, version: int | None = None) -> ProgramInfo:
        """One version (the newest by default). :class:`NotFoundError` if missing."""
        store = await self._ready()
        return _programs.program_info(await store.get_program(name, version))

    async def list_programs(self, *, all_versions: bool = False) -> list[ProgramInfo]:
        """The newest version of every program (or every version)."""
        store = await self._ready()
        records = await store.list_programs(all_versions=all_versions)
        return [_programs.program_info(r) for r in records]

    async def load_program(self, name: str, version: int | None = None) -> Program:
        """The stored spec of a version as a :class:`Program`."""
        store = await self._ready()
        return self._ctx.programs.get(await store.get_program(name, version))

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
    ) -> ExecutionResult:
        """Run a ready program once and record it (see :func:`dspex.actions.execute.execute`).

        Module/backend failures, output validation failures and timeouts are recorded and
        returned as ``failed`` results; they are not raised.

        Raises:
            NotFoundError: unknown program (version).
            ProgramStateError: the version is not ready (the message names its status).
            ValidationError: bad inputs (nothing recorded).
            ConfigError: unknown backend or strategy.
        """
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
        )

    async def get_execution(self, execution_id: str) -> ExecutionDetail:
        """Everything recorded about one execution. :class:`NotFoundError` if missing."""
        return await _queries.execution_detail(await self._ready(), execution_id)

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

    async def graph(self, program: str, version: int | None = None) -> GraphInfo:
        """The plan (weighted by history) and the last run, for ``dspex graph``."""
        store = await self._ready()
        return await _queries.graph_info(store, self._ctx.programs, program, version)
