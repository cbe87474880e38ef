"""The request path stays on the event loop, and the app keeps the collector off startup objects.

Both were measured causes of the service's latency tail (``benchmarks/bench_service.py``): a
plain ``def`` dependency or endpoint is run by FastAPI in the threadpool (a thread hop per
request), and full collections over everything imported at startup paused every request.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from tests.service._support import ready_program, service

from dspex.service.routes import batches, executions, operations, programs, signatures


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for child in dependant.dependencies:
        yield from _calls(child)


def _runs_on_the_loop(call: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    if inspect.isfunction(call) or inspect.ismethod(call):
        return False
    return inspect.iscoroutinefunction(type(call).__call__)  # an instance, such as HTTPBearer


def test_no_route_endpoint_or_dependency_runs_in_the_threadpool() -> None:
    routers = (batches, executions, operations, programs, signatures)
    routes = [r for module in routers for r in module.router.routes if isinstance(r, APIRoute)]
    assert len(routes) > 10
    blocking = sorted(
        f"{route.path}: {getattr(call, '__qualname__', repr(call))}"
        for route in routes
        for call in _calls(route.dependant)
        if not _runs_on_the_loop(call)
    )
    assert blocking == []


def test_objects_alive_at_startup_are_frozen_while_the_app_runs(workdir: Path) -> None:
    with service(workdir) as client:
        ready_program(client)
        assert gc.get_freeze_count() > 0
        response = client.post("/programs/qa/executions", json={"inputs": {"question": "q?"}})
        assert response.json()["status"] == "completed"


def test_the_frozen_objects_are_released_when_the_app_stops(workdir: Path) -> None:
    with service(workdir):
        pass
    assert gc.get_freeze_count() == 0
