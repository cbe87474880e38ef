"""The dashboard: one static page and its assets, served by the HTTP app with no build step.

``GET /`` redirects to ``GET /dashboard``, a plain HTML page whose script
(``/static/dashboard.js``, an ES module) and stylesheet (``/static/dashboard.css``) ship inside
the package. The page reads the service's own JSON API with the key entered in the page (kept in
``sessionStorage``), or with no key when none is configured. Three read-scoped routes exist for
it alone:

- ``GET /dashboard/programs/{name}/versions``: the program's versions with their scores, lineage
  and promotions, and its optimization runs (:mod:`dspex.service.dashboard._versions`);
- ``GET /dashboard/programs/{name}/graph``: the program's DAG and the Gantt chart of its last
  run as SVG, rendered server-side by :mod:`dspex.reports` (the drawings of
  ``dspex graph --html``), with the planned and actual critical paths;
- ``GET /dashboard/batches``: the most recent batches with their counts.

Example:
    >>> from fastapi import FastAPI
    >>> from dspex.service import dashboard
    >>> app = FastAPI()
    >>> dashboard.install(app)  # the router plus /static
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

import dspex
from dspex.service.dashboard._graph import graph_payload
from dspex.service.dashboard._versions import versions_payload
from dspex.service.routes._common import ERRORS
from dspex.service.state import Reader, State

__all__ = ["STATIC_DIR", "install", "page_html", "router"]

STATIC_DIR: Path = Path(__file__).resolve().parent.parent / "static"
"""The folder of the page's assets, mounted at ``/static``."""

router = APIRouter(tags=["dashboard"])


@cache
def page_html() -> str:
    """The dashboard page, with the package version in its asset URLs (cache busting)."""
    template = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    return template.replace("{version}", dspex.__version__)


def install(app: FastAPI) -> None:
    """Add the dashboard to ``app``: :data:`router` and the ``/static`` assets."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """The service root shows the dashboard."""
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    """The dashboard page (public: its data calls carry the key)."""
    return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/programs/{name}/graph", dependencies=[Reader], responses=ERRORS)
async def program_graph(name: str, state: State) -> dict[str, Any]:
    """A program's graph and last run as server-rendered SVG (see :func:`graph_payload`)."""
    return graph_payload(await state.runtime.graph(name))


@router.get("/dashboard/programs/{name}/versions", dependencies=[Reader], responses=ERRORS)
async def program_versions(name: str, state: State) -> dict[str, Any]:
    """A program's versions with their scores, lineage and promotions (see
    :func:`versions_payload`)."""
    return await versions_payload(state.runtime, name)


@router.get("/dashboard/batches", dependencies=[Reader], responses=ERRORS)
async def recent_batches(
    state: State, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> dict[str, Any]:
    """The most recent batches, newest first, with their counts."""
    batches = await state.runtime.list_batches(limit=limit)
    items = [
        {
            "batch_id": batch.batch_id,
            "program": batch.program,
            "program_version": batch.program_version,
            "status": batch.status,
            "counts": {
                "total": batch.total,
                "completed": batch.completed,
                "failed": batch.failed,
                "cancelled": batch.cancelled,
                "remaining": batch.remaining,
            },
            "created_at": batch.created_at.isoformat(),
            "finished_at": None if batch.finished_at is None else batch.finished_at.isoformat(),
        }
        for batch in batches
    ]
    return {"items": items}
