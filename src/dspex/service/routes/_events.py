"""What the routes that stream Server-Sent Events share: the response class and the OpenAPI
description of their events (the events themselves come from
:class:`~dspex.service.events.EventFeed`)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter

from dspex.service.routes._common import ERRORS

__all__ = [
    "JSON_ERRORS",
    "NO_BUFFERING",
    "EventStream",
    "event_responses",
    "inlined_schema",
    "sse_event_schema",
]

NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Headers that keep proxies from holding events back."""


class EventStream(StreamingResponse):
    """A response of Server-Sent Events."""

    media_type = "text/event-stream"


def inlined_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions (no ``$ref`` can
    point inside a schema embedded in the OpenAPI document)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


def sse_event_schema(name: str, description: str, data: dict[str, Any]) -> dict[str, Any]:
    """One kind of Server-Sent Event (as OpenAPI 3.2 ``itemSchema`` describes them)."""
    return {
        "type": "object",
        "description": description,
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "description": "the event's sequence number"},
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
        },
    }


# Responses declared with a model take the route's own media type (text/event-stream here):
# the errors name theirs, with the schema every other route registers.
JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": entry["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for status, entry in ERRORS.items()
}


def event_responses(
    description: str, progress: tuple[str, Any], done: tuple[str, Any]
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of an events route: ``progress`` events (each described and of
    the given type), then one ``done`` event, as OpenAPI 3.2 ``itemSchema`` describes them."""
    return {
        200: {
            "description": description,
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "itemSchema": {
                        "oneOf": [
                            sse_event_schema(
                                "progress",
                                progress[0],
                                inlined_schema(TypeAdapter(progress[1]).json_schema()),
                            ),
                            sse_event_schema(
                                "done", done[0], inlined_schema(TypeAdapter(done[1]).json_schema())
                            ),
                        ]
                    },
                }
            },
        },
        **JSON_ERRORS,
    }
