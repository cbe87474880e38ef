"""Errors over HTTP: every failure is ``{"error": {"code", "message", "errors"}}`` with a status.

The ``code`` is the stable :mod:`dspex.errors` code (the same the CLI prints with ``--json``); the
status mirrors the CLI's exit codes: a request mistake is 4xx, work that could not be done
(storage, backends) is 503. A traceback never reaches a response: an unexpected exception is
logged and answered ``500 internal_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from dspex.errors import (
    BackendError,
    BatchError,
    CircuitOpenError,
    ConfigError,
    DspexError,
    DspexTimeoutError,
    ErrorDetail,
    ExecutionCancelledError,
    ExecutionFinishedError,
    GraphError,
    NotFoundError,
    OptimizationError,
    PathNotAllowedError,
    ProgramStateError,
    PromotionRefusedError,
    RateLimitError,
    ResourceError,
    SecurityError,
    SignatureError,
    SpecError,
    StorageError,
    ValidationError,
)

__all__ = [
    "COMMON_ERRORS",
    "ApiError",
    "ErrorBody",
    "ErrorDetailModel",
    "ErrorResponse",
    "error_response",
    "install_error_handlers",
    "status_for",
]

log = logging.getLogger("dspex.service")


class ErrorDetailModel(BaseModel):
    """One problem with a request: where (``field`` path), what (``code``) and why."""

    model_config = ConfigDict(extra="forbid")

    field: str
    code: str
    message: str


class ErrorBody(BaseModel):
    """The stable ``code``, a message for people and every field problem found."""

    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    errors: list[ErrorDetailModel]


class ErrorResponse(BaseModel):
    """What every failed request answers."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


_DESCRIPTIONS = {
    400: "bad request (malformed spec or graph, unknown backend or strategy, JSON nested too deep)",
    401: "missing or unknown API key",
    403: "the API key's scope does not allow this, or the spec names a file outside the"
    " allowed directories",
    404: "not found",
    409: "conflict with the current state (program not ready, batch not running, a promotion"
    " refused by its score gate)",
    413: "request body or batch too large",
    415: "the body's Content-Type is not one this route takes (JSON; YAML for a program spec;"
    " JSON Lines for batch items)",
    422: "validation failed (every field problem listed)",
    429: "too many requests",
    503: "storage or backends unavailable",
}

# Declared on every route so the OpenAPI document lists each status a route can answer.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in _DESCRIPTIONS.items()
}

# The most specific class first: subclasses map differently from their parents.
_STATUS: tuple[tuple[type[DspexError], int], ...] = (
    (RateLimitError, 429),
    (StorageError, 503),
    (NotFoundError, 404),
    (ProgramStateError, 409),
    (PromotionRefusedError, 409),
    (BatchError, 409),
    (OptimizationError, 409),
    (ExecutionCancelledError, 409),
    (ExecutionFinishedError, 409),
    (SignatureError, 422),
    (SpecError, 400),
    (ValidationError, 422),
    (GraphError, 400),
    (ConfigError, 400),
    (ResourceError, 400),
    # a spec reaching for a file the server does not allow: refused whatever the key's scope
    (PathNotAllowedError, 403),
    (SecurityError, 400),
    (CircuitOpenError, 503),
    (BackendError, 503),
    (DspexTimeoutError, 503),
)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def status_for(exc: DspexError) -> int:
    """The HTTP status of a dspex error (400 for anything not listed)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


class ApiError(Exception):
    """An error the service itself raises (auth, limits, conflicts it detects)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error document with ``status``."""
    body = {"error": {"code": code, "message": message, "errors": errors or []}}
    return JSONResponse(body, status_code=status, headers=headers)


def _details(exc: DspexError) -> list[dict[str, str]]:
    return [detail.to_dict() for detail in getattr(exc, "errors", None) or []]


async def _on_dspex(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DspexError)
    headers = None
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, RateLimitError) and retry_after is not None:
        headers = {"Retry-After": str(max(1, round(retry_after)))}
    return error_response(status_for(exc), exc.code, exc.message, _details(exc), headers)


async def _on_api(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers)


async def _on_request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = ErrorDetail.from_pydantic(exc.errors())
    message = "invalid request: " + "; ".join(f"{d.field}: {d.message}" for d in details)
    return error_response(422, "validation_error", message, [d.to_dict() for d in details])


def _on_http(
    routes: Sequence[BaseRoute],
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = _methods_of_path(routes, request)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
        return error_response(exc.status_code, code, message, headers=headers)

    return on_http


def _methods_of_path(routes: Sequence[BaseRoute], request: Request) -> list[str]:
    """Every method a route of the request's path answers: the router's own 405 names the
    methods of the first route whose path matched, although others may share the path."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(request.scope)
        route_methods = getattr(route, "methods", None)
        if match is not Match.NONE and route_methods:
            methods.update(route_methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute] = ()) -> None:
    """Answer every dspex, service, validation and HTTP error with the JSON error document.

    Args:
        app: the application.
        routes: its routes, whose methods a ``405`` lists in ``Allow``.
    """
    app.add_exception_handler(DspexError, _on_dspex)
    app.add_exception_handler(ApiError, _on_api)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http(tuple(routes)))
