"""What the routers share: the declared error responses, the accepted media types and body
readers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import Depends, Request

from dspex.errors import ErrorDetail, ValidationError
from dspex.service.errors import COMMON_ERRORS, ApiError
from dspex.service.state import Credentials, ServiceState, allowed_state

__all__ = [
    "ERRORS",
    "JSON_TYPES",
    "MAX_NESTING",
    "NDJSON_TYPES",
    "YAML_TYPES",
    "accepts",
    "deeper_than",
    "media_type",
    "nesting_too_deep",
    "parse_json",
    "read_json",
    "reader_sending",
]

ERRORS: dict[int | str, dict[str, Any]] = COMMON_ERRORS

JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/jsonlines"})

MAX_NESTING = 64
"""The deepest a batch item may nest objects and arrays (a signature's types nest at most 32)."""

# Media types no HTML form can send and no cross-site page can send without a CORS preflight
# (which this service never grants): requiring one of them on every request with a body keeps
# other sites' pages from making a browser submit work here.


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


def _media_check(*kinds: frozenset[str]) -> Callable[[Request], None]:
    """What :func:`accepts` checks: raises ``415`` unless the body's media type is one of these."""
    allowed = frozenset().union(*kinds)
    names = " or ".join(sorted(allowed))

    def check(request: Request) -> None:
        kind = media_type(request)
        if kind in allowed or (not kind and not _has_body(request)):
            return
        got = f"Content-Type {kind!r}" if kind else "a body without a Content-Type"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"this route takes {names}; got {got}",
            headers={"Accept-Post": ", ".join(sorted(allowed))},
        )

    return check


def accepts(*kinds: frozenset[str]) -> Any:
    """A route dependency: a request body must come with one of these media types (else 415).

    A request without a body may leave ``Content-Type`` out; one that sends it anyway must send
    an accepted type, so an empty form post is refused too.
    """
    check = _media_check(*kinds)

    async def dependency(request: Request) -> None:  # async: a plain def runs in the threadpool
        check(request)

    return Depends(dependency)


def reader_sending(*kinds: frozenset[str]) -> Any:
    """One route dependency for ``Reader`` and ``accepts(*kinds)``, in that order, giving the
    state: the key is checked first (``401``/``403``), then the media type (``415``).

    One dependency rather than three: FastAPI solves each of a route's dependencies on every
    request, and on ``POST /programs/{name}/executions`` that cost more CPU than the store
    writes (``benchmarks/bench_service.py``).
    """
    check = _media_check(*kinds)

    async def dependency(request: Request, credentials: Credentials) -> ServiceState:
        state = allowed_state(request, credentials, "read")
        check(request)
        return state

    return Depends(dependency)


def nesting_too_deep(where: str = "the request body") -> ApiError:
    """``400 nesting_too_deep``: JSON nested deeper than the service reads."""
    return ApiError(
        400, "nesting_too_deep", f"{where} nests objects and arrays more than {MAX_NESTING} deep"
    )


def deeper_than(values: Iterable[Any], limit: int = MAX_NESTING) -> bool:
    """Whether any of ``values`` nests objects and arrays deeper than ``limit`` (a value that is
    an object or array is one level); walked without recursion."""
    stack: list[tuple[Any, int]] = [(v, 1) for v in values if isinstance(v, dict | list)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json(raw: bytes) -> Any:
    """JSON from a request body.

    Raises:
        ValidationError: the body is not JSON.
        ApiError: the body nests deeper than the parser goes (``400 nesting_too_deep``).
    """
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(
            "the request body is not valid JSON:", [ErrorDetail("body", "json_invalid", str(exc))]
        ) from None
    except RecursionError:
        raise nesting_too_deep() from None


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON (see :func:`parse_json`)."""
    return parse_json(await request.body())
