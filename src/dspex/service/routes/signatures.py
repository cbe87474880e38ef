"""Signatures: validate at a level, export a JSON schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

import dspex
from dspex.service.routes._common import ERRORS, JSON_TYPES, accepts
from dspex.service.schemas import SchemaRequest, ValidateRequest
from dspex.service.state import Reader

__all__ = ["router"]

router = APIRouter(tags=["signatures"], responses=ERRORS)

Json = accepts(JSON_TYPES)


@router.post(
    "/signatures/validate", response_model=dspex.ValidationReport, dependencies=[Reader, Json]
)
async def validate(body: ValidateRequest) -> Any:
    """Every problem of a signature, by step (``200`` even when it is invalid)."""
    # The comprehensive and deep levels round-trip through DSPy: keep them off the event loop.
    return await run_in_threadpool(dspex.validate_signature, body.signature, body.level)


@router.post("/signatures/schema", response_model=dict[str, Any], dependencies=[Reader, Json])
async def schema(body: SchemaRequest) -> dict[str, Any]:
    """The JSON schema of a signature's outputs (or inputs) for a target."""
    if isinstance(body.signature, str):
        signature = dspex.Signature.parse(body.signature)
    else:
        signature = dspex.Signature.from_dict(body.signature)
    return signature.json_schema(body.target, part=body.part)
