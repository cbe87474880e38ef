"""ASGI middleware: the request body limit (413), the loopback guard of a service without API
keys (400/403) and the last line against a traceback (500).

All are plain ASGI so they also cover bodies read as a stream (JSONL uploads) and responses
that are streamed.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException

__all__ = [
    "BodyLimitMiddleware",
    "CrashGuardMiddleware",
    "LoopbackGuardMiddleware",
    "is_loopback_host",
    "loopback_refusal",
]

log = logging.getLogger("dspex.service")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "errors": []}}


def _too_large(limit: int) -> dict[str, Any]:
    return _error("payload_too_large", f"the request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``max_body_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before the body is read; a chunked
    body is counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await _send_json(send, 413, _too_large(self.limit))
                    return
        seen = 0
        limit = self.limit

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"the request body is larger than {limit} bytes")
            return message

        await self.app(scope, counted, send)


_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header value, or ``None`` when it is malformed."""
    value = value.strip()
    if value.startswith("["):  # an IPv6 address: [::1]:8000
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
    else:
        name, _, port_text = value.partition(":")
        rest = f":{port_text}" if port_text else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    port = int(rest[1:]) if rest else None
    return name.lower().rstrip("."), port


# one entry per Host a client sends (so the address is parsed once, not on every request)
@functools.lru_cache(maxsize=256)
def is_loopback_host(value: str) -> bool:
    """Whether a ``Host`` header value (a name or address, with an optional port) names this
    machine: ``localhost``, an address in 127.0.0.0/8, or ``::1``.

    Example:
        >>> is_loopback_host("127.0.0.1:8000"), is_loopback_host("evil.example")
        (True, False)
    """
    split = _split_host(value)
    if split is None:
        return False
    name = split[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether an ``Origin`` header names the origin the request was sent to."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    split = _split_host(host)
    if split is None or parts.hostname is None or parts.scheme != scheme:
        return False
    default = _DEFAULT_PORTS.get(scheme)
    return (parts.hostname.rstrip("."), origin_port or default) == (split[0], split[1] or default)


class LoopbackGuardMiddleware:
    """What a service without API keys refuses, since any page a browser on this machine shows
    could otherwise drive it:

    - a request whose ``Host`` is not a loopback name, ``400 host_not_allowed``: a page on
      another site whose name was pointed at 127.0.0.1 (DNS rebinding) would reach the service
      with its own name as ``Host``, and read the answers as its own;
    - a ``POST``/``PUT``/``PATCH``/``DELETE`` whose ``Origin`` is not the service's own,
      ``403 origin_not_allowed``: a page on another site posting here (a form, or ``fetch``
      without CORS) is refused whatever it sends. Clients other than browsers send no
      ``Origin``.

    The routes also refuse bodies whose media type a form or a simple cross-site request could
    send (415), so a browser that sent no ``Origin`` is refused too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = loopback_refusal(scope)
        if refused is not None:
            await _send_json(send, *refused)
            return
        await self.app(scope, receive, send)


def loopback_refusal(scope: MutableMapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """What :class:`LoopbackGuardMiddleware` answers an HTTP request with (status and error
    document), or ``None`` when it lets the request through."""
    headers = dict(scope.get("headers", ()))
    host = headers.get(b"host", b"").decode("latin-1")
    if not is_loopback_host(host):
        message = (
            f"Host {host!r} is not this machine: without an API key the service answers"
            " only requests addressed to localhost, 127.0.0.1 or [::1]"
        )
        return 400, _error("host_not_allowed", message)
    origin = headers.get(b"origin")
    if (
        scope.get("method") in _UNSAFE_METHODS
        and origin is not None
        and not _same_origin(origin.decode("latin-1"), scope.get("scheme", "http"), host)
    ):
        message = (
            f"requests from {origin.decode('latin-1')!r} may not change anything here:"
            " without an API key only pages of the service itself may"
        )
        return 403, _error("origin_not_allowed", message)
    return None


class CrashGuardMiddleware:
    """Answer an unexpected exception with ``500 internal_error`` (logged, never returned)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unexpected error answering %s %s", scope.get("method"), scope["path"])
            if started:
                return  # the response is under way: the client sees it cut short
            message = "an unexpected error occurred; it has been logged"
            await _send_json(send, 500, _error("internal_error", message))
