"""The request path stays on the event loop; `dspex serve` keeps the collector off startup objects.

Both were measured causes of the service's latency tail (``benchmarks/bench_service.py``): a
plain ``def`` dependency or endpoint is run by FastAPI in the threadpool (a thread hop per
request), and full collections over everything imported at startup paused every request.
"""

from __future__ import annotations

import gc
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
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


def _run_a_batch(client: TestClient) -> None:
    response = client.post("/programs/qa/batches", json=[{"question": f"q{i}"} for i in range(5)])
    assert response.status_code == 202, response.text
    events = client.get(f"/batches/{response.json()['batch_id']}/events").text
    assert '"status": "completed"' in events or '"status":"completed"' in events


def test_an_app_mounted_in_a_host_leaves_its_interpreter_as_it_found_it(workdir: Path) -> None:
    def state() -> tuple[object, ...]:
        return gc.get_threshold(), gc.get_freeze_count(), sys.getswitchinterval()

    before = state()
    with service(workdir) as client:
        ready_program(client)
        assert state() == before
        _run_a_batch(client)
        assert state() == before
    assert state() == before


def test_an_app_serving_a_process_of_its_own_freezes_startup_objects_for_good(
    workdir: Path,
) -> None:
    # `dspex serve`: startup objects stay out of the collector's walks, batches included
    threshold = gc.get_threshold()
    try:
        with service(workdir, tune_process=True) as client:
            frozen = gc.get_freeze_count()
            assert frozen > 0
            assert gc.get_threshold()[0] >= 50_000
            ready_program(client)
            _run_a_batch(client)
            response = client.post("/programs/qa/executions", json={"inputs": {"question": "q?"}})
            assert response.json()["status"] == "completed"
            # still frozen (a few frozen objects are freed as they go: the count only shrinks)
            assert gc.get_freeze_count() > 0.9 * frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
