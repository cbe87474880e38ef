"""The HTTP half of the ``openai`` backend: chat completions on a pooled aiohttp session.

:class:`ChatTransport` posts one chat-completions body and returns the decoded reply, or streams
one as server-sent chunks. It holds one ``aiohttp.ClientSession`` per event loop (an aiohttp
session belongs to the loop it was made on), created on the loop's first request and closed by
:meth:`ChatTransport.aclose`. Sync callers (a DSPy module's ``forward`` in a thread, an
optimizer) go through :meth:`ChatTransport.run_sync`, which runs the same coroutine on a loop of
the transport's own, in a daemon thread started on first use.

aiohttp was chosen by measurement: on the loopback benchmark a POST costs about 0.16 ms of client
CPU on aiohttp and 5.7 ms on ``httpx.AsyncClient``.

Nothing here retries (the resilience layer does). Failures leave as :mod:`dspex.errors`:

- an error status is an :class:`HTTPStatusError` translated by
  :func:`dspex.backends.errors_map.translate` (the status decides the class, ``Retry-After`` in
  seconds, milliseconds or as an HTTP date becomes ``retry_after``); an OpenAI-style error code
  ``context_length_exceeded`` is a :class:`~dspex.errors.ContextWindowError`;
- a connection that cannot be made, is reset or closes mid-reply is a
  :class:`~dspex.errors.BackendConnectionError`; a connect or read timeout is a
  :class:`~dspex.errors.DspexTimeoutError`;
- a reply that is not JSON, or JSON that is not a chat completion, is a
  :class:`~dspex.errors.MalformedResponseError`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from yarl import URL

from dspex.backends._loop import running_loop
from dspex.backends.errors_map import translate
from dspex.errors import (
    AuthenticationError,
    BackendConnectionError,
    ConfigError,
    ContextWindowError,
    DspexError,
    MalformedResponseError,
)

__all__ = ["ChatReply", "ChatTransport", "HTTPStatusError", "chat_url"]

T = TypeVar("T")

# Idle pooled connections are dropped after this long: below the 5 s keep-alive of uvicorn (vLLM,
# SGLang, LiteLLM proxy), so a request never goes out on a connection the server just closed.
KEEPALIVE_SECONDS: Final = 4.0
_MAX_ERROR_TEXT = 500
_CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded"})


class HTTPStatusError(Exception):
    """An error status from the endpoint, with what :func:`translate` reads from it.

    Attributes:
        status: the HTTP status.
        headers: the response headers (``Retry-After`` is read from them).
        code: the provider's error code from an OpenAI-style body, when it gave one.
    """

    def __init__(
        self, status: int, reason: str, message: str, headers: Any, code: str | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}".rstrip(": "))
        self.status = status
        self.headers = headers
        self.code = code


@dataclass(frozen=True, slots=True)
class ChatReply:
    """A decoded chat completion (the first choice).

    Attributes:
        content: the assistant message's text (``None`` when the endpoint sent none).
        model: the model the endpoint says answered.
        prompt_tokens: input tokens, as reported (0 when not reported).
        completion_tokens: output tokens, as reported (0 when not reported).
        finish_reason: why generation stopped, as the endpoint said.
        data: the whole decoded body.
    """

    content: str | None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def chat_url(base_url: str) -> str:
    """``base_url`` + ``/chat/completions`` (a query string, as Azure's ``api-version``, kept).

    Raises:
        ConfigError: ``base_url`` is not an ``http``/``https`` URL with a host.
    """
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base_url must be an http(s) URL, got {base_url!r}")
    path = parts.path.rstrip("/") + "/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _dumps(body: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # what orjson refuses (an int past 64 bits, say) the stdlib may take
        return json.dumps(body, ensure_ascii=False).encode()


class ChatTransport:
    """POST chat-completions bodies to one endpoint over pooled keep-alive connections.

    Args:
        backend: the backend's name (in errors).
        base_url: the OpenAI-style base URL (``https://api.openai.com/v1``).
        api_key_env: the environment variable holding the API key, read when a session is
            made; ``None`` for an endpoint that needs no key (a local vLLM or Ollama).
        api_key_header: the header the key goes in: ``Authorization`` (as ``Bearer <key>``) or
            another name (Azure's ``api-key``), which gets the key as it is.
        headers: more headers sent with every request.
        max_connections: the most connections open at once (more requests wait for one).
        connect_timeout: seconds to open a connection.
    """

    def __init__(
        self,
        backend: str,
        base_url: str,
        *,
        api_key_env: str | None = None,
        api_key_header: str = "Authorization",
        headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
        connect_timeout: float | None = 10.0,
    ) -> None:
        self.backend = backend
        self.url = chat_url(base_url)
        self._url = URL(self.url)  # parsed once, not on every request
        self.api_key_env = api_key_env
        self.api_key_header = api_key_header
        self.headers = dict(headers or {})
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._lock = threading.Lock()
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- sessions -----------------------------------------------------------------------------

    def api_key(self) -> str | None:
        """The API key from :attr:`api_key_env` (``None`` when no variable is named).

        Raises:
            AuthenticationError: the variable is named but not set.
        """
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise AuthenticationError(
                f"environment variable {self.api_key_env} (the API key) is not set",
                backend=self.backend,
            )
        return key

    def _request_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self.api_key()
        if key is not None:
            is_bearer = self.api_key_header.lower() == "authorization"
            headers[self.api_key_header] = f"Bearer {key}" if is_bearer else key
        headers.update(self.headers)
        return headers

    def session(self) -> aiohttp.ClientSession:
        """This event loop's session (made on first use).

        Raises:
            AuthenticationError: the API key's variable is named but not set.
        """
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is not None and not session.closed:
            return session
        headers = self._request_headers()
        with self._lock:
            # sessions of loops that have ended cannot be closed any more: let them go
            for old in [other for other in self._sessions if other.is_closed()]:
                del self._sessions[old]
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=KEEPALIVE_SECONDS,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                raise_for_status=False,
            )
            self._sessions[loop] = session
        return session

    @property
    def open_sessions(self) -> int:
        """How many sessions are open (one per event loop that made a request)."""
        return sum(1 for s in self._sessions.values() if not s.closed)

    async def aclose(self) -> None:
        """Close this loop's session and stop the sync helper's loop; others are let go."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sessions, self._sessions = self._sessions, {}
        mine = sessions.pop(loop, None)
        if mine is not None:
            await mine.close()
        if self._thread_loop is not None:
            thread_session = sessions.pop(self._thread_loop, None)
            await asyncio.to_thread(self._stop_thread, thread_session)

    def close(self) -> None:
        """Stop the sync helper's loop (closing its session); for callers without a loop."""
        with self._lock:
            thread_loop = self._thread_loop
            session = self._sessions.pop(thread_loop, None) if thread_loop is not None else None
        self._stop_thread(session)

    # --- requests -----------------------------------------------------------------------------

    async def complete(self, body: Mapping[str, Any]) -> ChatReply:
        """POST ``body`` and return the first choice of the completion.

        Only connecting has a timeout here: the caller bounds the whole call (with
        ``asyncio.timeout``), which cancels the request and drops its connection.

        Raises:
            BackendError: a subclass saying how the endpoint failed (see the module docstring).
            DspexTimeoutError: the connection or the reply took too long.
        """
        payload = _dumps(body)
        session = self.session()
        try:
            async with session.post(self._url, data=payload, allow_redirects=False) as response:
                raw = await response.read()
                if response.status >= 300:
                    raise self._status_error(
                        response.status, response.reason, response.headers, raw
                    )
        except DspexError:
            raise
        except Exception as exc:
            raise self._transport_error(exc) from exc
        return self._reply(raw)

    async def stream(
        self, body: Mapping[str, Any], *, read_timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """POST ``body`` with ``stream: true`` and yield each server-sent chunk, decoded.

        Ends at ``data: [DONE]`` or when the endpoint closes the stream. An OpenAI-style error
        sent inside the stream is raised as the error it names.

        Args:
            body: the chat-completions request (``stream`` is set here).
            read_timeout: the longest wait for the next bytes of the stream.
        """
        payload = _dumps({**body, "stream": True})
        session = self.session()
        try:
            async with session.post(
                self._url,
                data=payload,
                allow_redirects=False,
                headers={"Accept": "text/event-stream"},
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.connect_timeout, sock_read=read_timeout
                ),
            ) as response:
                if response.status >= 300:
                    raw = await response.read()
                    raise self._status_error(
                        response.status, response.reason, response.headers, raw
                    )
                data: list[bytes] = []
                async for line in response.content:
                    line = line.rstrip(b"\r\n")
                    if line:
                        if line.startswith(b"data:"):
                            data.append(line[5:].lstrip(b" "))
                        continue  # an event name, id or comment: nothing to read
                    if not data:
                        continue
                    event, data = b"\n".join(data), []
                    if event == b"[DONE]":
                        return
                    yield self._chunk(event)
                if data and b"\n".join(data) != b"[DONE]":
                    yield self._chunk(b"\n".join(data))
        except DspexError:
            raise
        except Exception as exc:
            raise self._transport_error(exc) from exc

    def run_sync(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the transport's own loop and wait for it (for sync callers).

        The loop runs in a daemon thread started on first use; its session is the transport's
        session for that loop like any other.
        """
        loop = self._start_thread()
        if running_loop() is loop:
            raise RuntimeError("run_sync was called on the transport's own loop")

        async def run() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), loop)
        return future.result()

    # --- the sync helper's loop -------------------------------------------------------------

    def _start_thread(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            thread = self._thread
            # not alive in a forked child: the fork copied the loop but not its thread
            if self._thread_loop is not None and thread is not None and thread.is_alive():
                return self._thread_loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name=f"dspex-{self.backend}-http", daemon=True)
            thread.start()
            ready.wait()
            self._thread_loop, self._thread = loop, thread
            return loop

    def _stop_thread(self, session: aiohttp.ClientSession | None) -> None:
        with self._lock:
            loop, thread = self._thread_loop, self._thread
            self._thread_loop = self._thread = None
        if loop is None or thread is None:
            return
        if session is not None and not session.closed:
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

    # --- replies and errors -------------------------------------------------------------------

    def _reply(self, raw: bytes) -> ChatReply:
        data = self._json_object(raw, "the reply")
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self._error_in_body(data, raw) from None
        if content is not None and not isinstance(content, str):
            raise self._malformed("choices[0].message.content is not text", raw)
        usage = data.get("usage")
        prompt = completion = 0
        if isinstance(usage, dict):
            prompt = _count(usage.get("prompt_tokens"))
            completion = _count(usage.get("completion_tokens"))
        model = data.get("model")
        return ChatReply(
            content=content,
            model=model if isinstance(model, str) else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            finish_reason=choice.get("finish_reason"),
            data=data,
        )

    def _chunk(self, event: bytes) -> dict[str, Any]:
        chunk = self._json_object(event, "a stream chunk")
        if "error" in chunk and "choices" not in chunk:
            raise self._error_in_body(chunk, event)
        return chunk

    def _json_object(self, raw: bytes, what: str) -> dict[str, Any]:
        """``raw`` parsed as a JSON object; text that is not JSON is translated like any
        decoding failure, JSON that is not an object is a malformed reply."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise translate(exc, self.backend) from exc
        if not isinstance(data, dict):
            raise self._malformed(f"{what} is not a JSON object", raw)
        return data

    def _error_in_body(self, data: dict[str, Any], raw: bytes) -> DspexError:
        """The error an OpenAI-style ``{"error": …}`` body names (some proxies send it with 200),
        else a malformed reply."""
        error = data.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            status = code if isinstance(code, int) and 400 <= code <= 599 else None
            message = str(error.get("message") or error)
            if status is not None:
                return self._status_error(status, "", {}, raw, message=message)
            return self._malformed(f"the endpoint answered with an error: {message}", raw)
        return self._malformed("the reply is not a chat completion (no choices[0].message)", raw)

    def _malformed(self, why: str, raw: bytes) -> MalformedResponseError:
        text = raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace")
        return MalformedResponseError(f"{why}: {text!r}", status=200, backend=self.backend)

    def _status_error(
        self,
        status: int,
        reason: str | None,
        headers: Any,
        raw: bytes,
        *,
        message: str | None = None,
    ) -> DspexError:
        code: str | None = None
        if message is None:
            message, code = _error_text(raw)
        exc = HTTPStatusError(status, reason or "", message, headers, code)
        if status == 400 and (code in _CONTEXT_CODES or "context length" in message.lower()):
            error: DspexError = ContextWindowError(
                f"HTTPStatusError: {exc}", status=status, backend=self.backend
            )
        else:
            error = translate(exc, self.backend)
        error.__cause__ = exc
        return error

    def _transport_error(self, exc: BaseException) -> DspexError:
        if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are ones
            return translate(exc, self.backend)
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            return BackendConnectionError(
                f"{type(exc).__name__}: {exc or 'the connection closed'}", backend=self.backend
            )
        if isinstance(exc, aiohttp.InvalidURL):
            return ConfigError(f"{self.backend}: invalid URL {self.url!r}: {exc}")
        return translate(exc, self.backend)


def _error_text(raw: bytes) -> tuple[str, str | None]:
    """The message and code of an error body (OpenAI's ``{"error": {...}}`` or any text)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
        return text, None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            message = error.get("message") or error.get("detail") or json.dumps(error)
            return str(message)[:_MAX_ERROR_TEXT], str(code) if code is not None else None
        if isinstance(error, str):
            return error[:_MAX_ERROR_TEXT], None
    return raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace"), None
