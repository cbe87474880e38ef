"""``/programs``: register (JSON or YAML), list, show, initialize, archive, graph."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from dspex import GraphInfo, Program, ProgramInfo, Runtime
from dspex.errors import ErrorDetail, SpecError
from dspex.service.routes._common import (
    ERRORS,
    JSON_TYPES,
    YAML_TYPES,
    accepts,
    media_type,
    parse_json,
)
from dspex.service.schemas import ProgramDetail, ProgramList
from dspex.service.state import Admin, Reader, State

__all__ = ["router"]

router = APIRouter(tags=["programs"], responses=ERRORS)

Version = Annotated[
    int | None,
    Query(ge=1, le=Runtime.MAX_VERSION, description="the version (default: the newest)"),
]
NoBody = accepts(JSON_TYPES)  # these routes read no body: one sent anyway must still be JSON

_SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a program spec, as JSON or YAML",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "object"}},
        },
    }
}


def _parse_spec(raw: bytes, kind: str) -> dict[str, Any] | Program:
    if kind in YAML_TYPES:
        # the one YAML reader of specs, shared with `dspex program register` (no aliases)
        return Program.from_yaml(raw)
    data = parse_json(raw)
    if not isinstance(data, dict):
        # Never hand the runtime a string: it would read it as a path on this machine.
        raise SpecError(
            "a program spec must be an object:",
            [ErrorDetail("body", "not_an_object", f"got {type(data).__name__}")],
        )
    return data


@router.get("/programs", response_model=ProgramList, dependencies=[Reader])
async def list_programs(state: State, all_versions: bool = False) -> ProgramList:
    """The newest version of every program (or every version)."""
    items = await state.runtime.list_programs(all_versions=all_versions)
    return ProgramList(items=items)


@router.post(
    "/programs",
    response_model=ProgramInfo,
    status_code=201,
    dependencies=[Admin, accepts(JSON_TYPES, YAML_TYPES)],
    openapi_extra=_SPEC_BODY,
)
async def register_program(request: Request, state: State, initialize: bool = False) -> ProgramInfo:
    """Register a spec (``draft``); ``?initialize=true`` also initializes it."""
    spec = _parse_spec(await request.body(), media_type(request))
    info = await state.runtime.register(spec)
    if initialize:
        info = await state.runtime.initialize(info.name, info.version)
    return info


@router.get("/programs/{name}", response_model=ProgramDetail, dependencies=[Reader])
async def show_program(name: str, state: State, version: Version = None) -> ProgramDetail:
    """One version: info, stored spec and plan."""
    info = await state.runtime.get_program(name, version)
    program = await state.runtime.load_program(name, info.version)
    return ProgramDetail(program=info, spec=program.to_dict(), plan=program.plan().to_dict())


@router.post(
    "/programs/{name}/initialize", response_model=ProgramInfo, dependencies=[Admin, NoBody]
)
async def initialize_program(name: str, state: State, version: Version = None) -> ProgramInfo:
    """Check a version and move it to ``ready`` (or ``error``, with the reason)."""
    return await state.runtime.initialize(name, version)


@router.post("/programs/{name}/archive", response_model=ProgramInfo, dependencies=[Admin, NoBody])
async def archive_program(name: str, state: State, version: Version = None) -> ProgramInfo:
    """Archive a version (final)."""
    return await state.runtime.archive(name, version)


@router.get("/programs/{name}/graph", response_model=GraphInfo, dependencies=[Reader])
async def program_graph(name: str, state: State, version: Version = None) -> GraphInfo:
    """The plan (weighted by recorded durations), the modules and the last run."""
    return await state.runtime.graph(name, version)
