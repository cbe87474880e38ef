"""What every request handler shares: the runtime, keys, limits, metrics and background work."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dspex.service.auth import ApiKey, KeyRing, Scope
from dspex.service.errors import ApiError

if TYPE_CHECKING:
    from dspex import Runtime
    from dspex.service.batches import BatchManager
    from dspex.service.metrics import ServiceMetrics
    from dspex.service.optimizations import OptimizationManager

__all__ = [
    "Admin",
    "Credentials",
    "MetricsReader",
    "ReadState",
    "Reader",
    "ServiceState",
    "State",
    "allowed_state",
    "get_state",
]


@dataclass(slots=True)
class ServiceState:
    """The app's shared state (``app.state.dspex``)."""

    keys: KeyRing
    metrics: ServiceMetrics
    batches: BatchManager
    optimizations: OptimizationManager
    max_body_bytes: int
    max_batch_items: int
    metrics_access: Literal["public", "read"] = "public"
    runtime_: Runtime | None = None
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def runtime(self) -> Runtime:
        if self.runtime_ is None:
            raise ApiError(503, "storage_error", "the service is starting or stopping")
        return self.runtime_

    def spawn(self, task: asyncio.Task[Any]) -> None:
        """Keep a background execution alive until it ends (and cancel it at shutdown)."""
        self.background.add(task)
        task.add_done_callback(self.background.discard)


# The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in the threadpool, a thread hop (and GIL hand-off) per dependency per request
# that dominated the latency tail under load.


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.dspex
    return state


State = Annotated[ServiceState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="an API key (`Authorization: Bearer <key>`)")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
"""The API key a request sent, if any (documented in the API as the bearer scheme)."""


def _authorize(
    state: ServiceState, credentials: HTTPAuthorizationCredentials | None, needed: Scope
) -> ApiKey | None:
    if not state.keys.enabled:
        return None
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "unauthorized", "an API key is required", headers=challenge)
    key = state.keys.authenticate(credentials.credentials)
    if key is None:
        raise ApiError(401, "unauthorized", "the API key is not valid", headers=challenge)
    if not key.allows(needed):
        raise ApiError(403, "forbidden", f"this API key's scope ({key.scope}) cannot do this")
    return key


# The key checks read the state from the request rather than through the State dependency:
# FastAPI solves every dependency of a route per request, a cached one included, and on the
# service's hot path (``POST /programs/{name}/executions``) that solving cost more CPU than
# the store writes (benchmarks/bench_service.py).


async def require_read(
    request: Request,
    credentials: Credentials,
) -> ApiKey | None:
    """Any configured key (or none, when no key is configured)."""
    return _authorize(request.app.state.dspex, credentials, "read")


def allowed_state(
    request: Request, credentials: HTTPAuthorizationCredentials | None, needed: Scope
) -> ServiceState:
    """The state, once the request's key allows ``needed`` (else ``401``/``403``)."""
    state: ServiceState = request.app.state.dspex
    _authorize(state, credentials, needed)
    return state


async def read_state(request: Request, credentials: Credentials) -> ServiceState:
    """The state, once the request is allowed to read (:func:`require_read` and
    :func:`get_state` in one dependency)."""
    return allowed_state(request, credentials, "read")


async def require_admin(
    request: Request,
    credentials: Credentials,
) -> ApiKey | None:
    """An ``admin`` key (or none, when no key is configured)."""
    return _authorize(request.app.state.dspex, credentials, "admin")


async def require_metrics_access(
    request: Request,
    credentials: Credentials,
) -> ApiKey | None:
    """Any configured key when ``[server] metrics = "read"``; nothing when it is public."""
    state: ServiceState = request.app.state.dspex
    if state.metrics_access == "public":
        return None
    return _authorize(state, credentials, "read")


Reader = Depends(require_read)
ReadState = Annotated[ServiceState, Depends(read_state)]
"""The state, for a route any reader may call (instead of ``Reader`` and ``State``)."""
Admin = Depends(require_admin)
MetricsReader = Depends(require_metrics_access)
