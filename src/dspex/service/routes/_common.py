"""What the routers share: the declared error responses and body readers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from dspex.errors import ErrorDetail, ValidationError
from dspex.service.errors import COMMON_ERRORS

__all__ = ["ERRORS", "JSON_TYPES", "YAML_TYPES", "media_type", "read_json"]

ERRORS: dict[int | str, dict[str, Any]] = COMMON_ERRORS

JSON_TYPES = frozenset({"application/json", ""})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parse_json(raw: bytes) -> Any:
    """JSON from a request body.

    Raises:
        ValidationError: the body is not JSON.
    """
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(
            "the request body is not valid JSON:", [ErrorDetail("body", "json_invalid", str(exc))]
        ) from None


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON (see :func:`parse_json`)."""
    return parse_json(await request.body())
