"""``create_app``: the FastAPI application serving a runtime over HTTP.

The app opens its :class:`~dspex.Runtime` when it starts (ASGI lifespan) and closes it when it
stops, after cancelling the batches and executions still running in the background (each is
recorded ``cancelled``). The batches it was running are then handed over: another replica on the
same database, or this service once restarted, takes them over and completes them. While it
runs, it takes over the batches whose driver died (:mod:`dspex.service.batches`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, FastAPI
from starlette.types import Receive, Scope, Send

import dspex
from dspex.config import ApiKeyConfig, load_settings
from dspex.service.auth import KeyRing
from dspex.service.batches import BatchManager
from dspex.service.errors import install_error_handlers
from dspex.service.metrics import ServiceMetrics
from dspex.service.middleware import (
    BodyLimitMiddleware,
    CrashGuardMiddleware,
    LoopbackGuardMiddleware,
)
from dspex.service.optimizations import OptimizationManager
from dspex.service.routes import (
    batches,
    cache,
    evaluations,
    executions,
    operations,
    optimizations,
    programs,
    signatures,
)
from dspex.service.state import ServiceState

if TYPE_CHECKING:
    from dspex import Backend

__all__ = ["create_app"]

log = logging.getLogger("dspex.service")


class ServiceApp(FastAPI):
    """The service's FastAPI app, with the execute route's own door in front of everything
    (:class:`~dspex.service.routes.executions.ExecuteFastPath`): the requests it takes skip
    the middleware stack, the router and FastAPI's request handling; the rest pass through."""

    execute_door: executions.ExecuteFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door = self.execute_door
        if door is None:
            await super().__call__(scope, receive, send)
        else:
            await door(scope, receive, send, super().__call__)


def create_app(
    database_url: str | None = None,
    *,
    config: str | Path | None = None,
    backends: Mapping[str, Backend] | None = None,
    api_keys: Sequence[ApiKeyConfig | Mapping[str, Any]] | None = None,
    max_body_bytes: int | None = None,
    max_batch_items: int | None = None,
    metrics: Literal["public", "read"] | None = None,
    max_running_batches: int = 8,
    worker_id: str | None = None,
    cwd: Path | None = None,
    tune_process: bool = False,
) -> FastAPI:
    """The HTTP service over a runtime opened with these options.

    Args:
        database_url: as for :meth:`dspex.Runtime.open`.
        config: a ``dspex.toml`` (default: ``DSPEX_CONFIG`` or ``./dspex.toml``).
        backends: backends by name (default: built from the configuration).
        api_keys: the accepted keys as hashes with scopes (default: ``[server] api_keys`` or
            ``DSPEX_API_KEYS``). With none, every request is allowed from this machine only:
            a ``Host`` other than a loopback name gets ``400``, and a ``POST`` from a page of
            another origin ``403``.
        max_body_bytes: larger request bodies get ``413`` (default: ``[server]``).
        max_batch_items: larger batches get ``413`` (default: ``[server]``).
        metrics: ``/metrics`` open to anyone (``"public"``) or to any API key (``"read"``)
            (default: ``[server] metrics``, public).
        max_running_batches: batches running at once; more get ``429``.
        worker_id: the runtime's lease identity.
        cwd: where configuration and the embedded database are found.
        tune_process: process-wide, for a process that serves this app alone (``dspex serve``
            sets it): once started, tune the interpreter with :func:`dspex.tune_process`.
            Off by default: an app mounted in another server leaves that process as it was.

    Raises:
        ConfigError: the configuration is invalid.
    """
    settings = load_settings(config, cwd=cwd)
    server = settings.server
    keys = KeyRing(server.api_keys if api_keys is None else api_keys)
    collector = ServiceMetrics()
    state = ServiceState(
        keys=keys,
        metrics=collector,
        batches=BatchManager(collector, max_running=max_running_batches),
        optimizations=OptimizationManager(),
        max_body_bytes=max_body_bytes or server.max_body_bytes,
        max_batch_items=max_batch_items or server.max_batch_items,
        metrics_access=metrics or server.metrics,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = dspex.Runtime.open(
            database_url,
            config=config,
            backends=backends,
            worker_id=worker_id,
            hooks=(collector,),
            cwd=cwd,
        )
        await runtime.start()
        state.runtime_ = runtime
        # batches whose driver died (a replica, or this service before a restart) resume here
        takeover = asyncio.get_running_loop().create_task(
            state.batches.take_over_loop(runtime, runtime.settings.lease_seconds / 2.0),
            name="dspex-batch-takeover",
        )
        if tune_process:
            # Everything alive now (modules, DSPy/LiteLLM, the app) lives as long as the
            # service: frozen, a full collection under load scans only what requests allocate;
            # without this, gen-2 pauses of 50-100 ms made most of the p99
            # (benchmarks/bench_service.py). No collection first: it would cost ~40 ms per start.
            dspex.tune_process()
        if not keys.enabled:
            log.warning("no API key is configured: every request is allowed")
        try:
            yield
        finally:
            takeover.cancel()
            await asyncio.gather(takeover, return_exceptions=True)
            # the batches running here are handed over: another replica (or this service,
            # restarted) resumes them
            await state.batches.shutdown(hand_over=runtime.hand_over_batch)
            await state.optimizations.shutdown()
            for task in list(state.background):
                task.cancel()
            for task in list(state.background):
                try:
                    await task
                except BaseException as exc:
                    log.debug("background execution ended at shutdown: %r", exc)
            state.runtime_ = None
            await runtime.aclose()

    app = ServiceApp(
        title="dspex",
        version=dspex.__version__,
        summary="The dspex runtime over HTTP: programs, executions, batches, health, metrics.",
        lifespan=lifespan,
    )
    app.state.dspex = state
    # the hot route first: a request is matched against the routes in order
    routers = [
        executions.router,
        operations.router,
        programs.router,
        batches.router,
        evaluations.router,
        optimizations.router,
        signatures.router,
        cache.router,
    ]
    for router in routers:
        app.include_router(router)
    dashboard = _mount_dashboard(app)
    if dashboard is not None:
        routers.append(dashboard)
    # the app's own routes (/openapi.json, /docs) and, inside the included routers, ours
    routes = [*app.router.routes, *(route for router in routers for route in router.routes)]
    install_error_handlers(app, routes=routes)
    app.execute_door = executions.ExecuteFastPath(state, app.exception_handlers)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=state.max_body_bytes)
    if not keys.enabled:
        app.add_middleware(LoopbackGuardMiddleware)  # before anything reads the request
    app.add_middleware(CrashGuardMiddleware)
    return app


def _mount_dashboard(app: FastAPI) -> APIRouter | None:
    """The dashboard page and its assets, when that package is present; its router."""
    try:
        dashboard = importlib.import_module("dspex.service.dashboard")
    except ImportError:  # pragma: no cover - the dashboard ships with the service
        return None
    router = getattr(dashboard, "router", None)
    install = getattr(dashboard, "install", None)
    if callable(install):
        install(app)
    elif router is not None:  # pragma: no cover - older dashboard module
        app.include_router(router)
    return router if isinstance(router, APIRouter) else None
