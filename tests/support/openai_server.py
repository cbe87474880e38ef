"""A loopback OpenAI-compatible chat-completions server for tests and benchmarks.

It is a real HTTP server on ``127.0.0.1`` (ephemeral port, stdlib ``ThreadingHTTPServer`` in a
daemon thread), so tests exercise the whole real path: ``dspy.LM`` → DSPy's engine (lm15 or
LiteLLM) → HTTP → this server, and back through DSPy's adapters.

What it answers:

- ``POST /v1/chat/completions`` and ``POST /chat/completions``: a chat completion whose content
  answers in DSPy's ChatAdapter format (``[[ ## field ## ]]`` sections) or, when the prompt asks
  for a JSON object (JSONAdapter), as JSON. The output field names and types are read from the
  prompt DSPy sends ("Your output fields are: 1. `answer` (str): …"), and plausible values are
  made up per type. Pass ``responder`` to decide the content yourself.
- Every answer carries ``usage`` (whitespace-separated word counts of prompt and completion, so
  tests can predict them).
- A request with ``"stream": true`` gets the answer as server-sent chunks (``data: {…}`` lines,
  the content a few words per chunk, then the finish reason, the usage when
  ``stream_options.include_usage`` asks for it, and ``data: [DONE]``), ``chunk_delay`` seconds
  apart; :func:`truncated` then sends only the first half of the chunks, with no finish reason
  and no ``[DONE]``.

It is scriptable. Outcomes queued with :meth:`OpenAIServer.script` are used one per request,
in order; when the queue is empty, requests get :func:`ok`. Outcomes:

- :func:`ok` — a normal answer (optionally with fixed content),
- :func:`status` — an error response with that HTTP status (optionally ``Retry-After``),
- :func:`delay` — wait, then answer with another outcome (the wait ends early when the server
  stops, so a test that times out never leaves a thread sleeping),
- :func:`drop` — close the connection without answering (a transport error for the client),
- :func:`malformed` — HTTP 200 whose body is not JSON (a gateway's HTML page, say),
- :func:`truncated` — HTTP 200 whose JSON answer is cut off halfway (its length header matches
  what was sent, so only the JSON is broken).
- :func:`held` — a streamed answer that stops after its first words until the test sets a
  ``threading.Event`` (so a test can look at what a client did with them meanwhile).

Seeded fault injection: :meth:`OpenAIServer.inject` makes a share of the unscripted requests fail
with outcomes drawn from a list by a seeded random source; :attr:`OpenAIServer.injected` counts
what was injected, by outcome label.

Example:
    >>> with OpenAIServer() as server:  # doctest: +SKIP
    ...     server.script(status(429, retry_after=2), ok())
    ...     lm = dspy.LM("openai/test-model", api_base=server.base_url, api_key="k")
    ...     ...
    ...     assert server.request_count == 2
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "OpenAIServer",
    "Outcome",
    "Responder",
    "delay",
    "drop",
    "held",
    "malformed",
    "ok",
    "status",
    "truncated",
]

Responder = Callable[[dict[str, Any]], str]
"""Given the request JSON, return the assistant message content."""

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the server does with one request. Build these with the helper functions."""

    kind: str  # "ok" | "status" | "delay" | "drop" | "malformed" | "truncated" | "held"
    status: int = 200
    content: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    seconds: float = 0.0
    then: Outcome | None = None
    raw: bytes = b""
    retry_after_date: float | None = None  # seconds after the reply, sent as an HTTP date
    label: str = ""  # names the outcome in :attr:`OpenAIServer.injected`
    gate: threading.Event | None = None  # held: the rest of the stream waits for it

    @property
    def name(self) -> str:
        """The label, else the kind (with the status for ``status`` outcomes)."""
        if self.label:
            return self.label
        return f"status {self.status}" if self.kind == "status" else self.kind


def ok(content: str | None = None) -> Outcome:
    """Answer normally; ``content`` overrides the responder for this one request."""
    return Outcome("ok", content=content)


def status(
    code: int,
    *,
    retry_after: float | str | None = None,
    retry_after_date: float | None = None,
    message: str | None = None,
    body: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    label: str = "",
) -> Outcome:
    """Answer with HTTP ``code`` and an OpenAI-style error body.

    Args:
        code: the HTTP status.
        retry_after: value of the ``Retry-After`` header (seconds, or an HTTP date string).
        retry_after_date: send ``Retry-After`` as the HTTP date this many seconds after the
            reply is sent (whole seconds: an HTTP date has no fraction).
        message: the error message in the body.
        body: a whole JSON body instead of the default ``{"error": {...}}``.
        headers: more response headers.
        label: the name :attr:`OpenAIServer.injected` counts this outcome under.
    """
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = (
            retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        )
    if body is None:
        error_type = _ERROR_TYPES.get(code, "server_error" if code >= 500 else "api_error")
        body = {
            "error": {
                "message": message or f"scripted status {code}",
                "type": error_type,
                "code": None,
            }
        }
    return Outcome(
        "status",
        status=code,
        headers=all_headers,
        body=body,
        retry_after_date=retry_after_date,
        label=label,
    )


def delay(seconds: float, then: Outcome | None = None, *, label: str = "") -> Outcome:
    """Wait ``seconds`` (real time, cut short when the server stops), then do ``then``."""
    return Outcome("delay", seconds=seconds, then=then or ok(), label=label)


def drop() -> Outcome:
    """Close the connection without sending any response."""
    return Outcome("drop")


def malformed(
    body: str = "<html><body><h1>502 Bad Gateway</h1></body></html>", *, code: int = 200
) -> Outcome:
    """Answer HTTP ``code`` (200 by default) with ``body`` as it is, labelled as JSON."""
    return Outcome("malformed", status=code, raw=body.encode())


def truncated() -> Outcome:
    """Answer HTTP 200 with a normal completion's JSON cut off halfway."""
    return Outcome("truncated")


def held(gate: threading.Event, *, after: int = 3) -> Outcome:
    """Stream the first ``after`` chunks (the role, then a few words each), then wait until
    ``gate`` is set (or the server stops) before the rest; a request that does not stream is
    answered at once."""
    return Outcome("held", gate=gate, seconds=after)


# --- default responder: answer the fields DSPy asked for --------------------------------------

_OUTPUT_SECTION = re.compile(r"Your output fields are:\s*\n(?P<body>.*?)(?:\n\s*\n|\Z)", re.S)
_FIELD_LINE = re.compile(r"^\s*\d+\.\s+`(?P<name>[^`]+)`\s+\((?P<type>.*?)\)(?::|$)")
_START_FIELD = re.compile(r"\[\[ ## (?P<name>\w+) ## \]\]")


def _messages_text(request: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for message in request.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n\n".join(parts)


def requested_output_fields(request: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``(name, type)`` of each output field DSPy's prompt asks for, in order."""
    text = _messages_text(request)
    match = _OUTPUT_SECTION.search(text)
    if match is None:
        return []
    fields: list[tuple[str, str]] = []
    for line in match.group("body").splitlines():
        field_match = _FIELD_LINE.match(line)
        if field_match:
            fields.append((field_match.group("name"), field_match.group("type").strip()))
    return fields


def sample_value(type_text: str, name: str) -> Any:
    """A plausible value for a field of the type DSPy printed (``str``, ``Literal['a']``, …)."""
    t = type_text.replace(" ", "")
    if t.startswith("Literal["):
        first = t[len("Literal[") :].split(",")[0].rstrip("]")
        return json.loads(first.replace("'", '"')) if first[:1] in "'\"" else json.loads(first)
    if t.startswith(("list[", "List[")):
        return []
    if t.startswith(("dict[", "Dict[")):
        return {}
    if t == "int":
        return 1
    if t == "float":
        return 0.5
    if t == "bool":
        return True
    return f"{name} answer"


def default_responder(request: dict[str, Any]) -> str:
    """Answer every requested output field, in JSON when asked for JSON, else ChatAdapter form."""
    fields = requested_output_fields(request)
    values = {name: sample_value(type_text, name) for name, type_text in fields}
    if _wants_json(request):
        return json.dumps(values)
    return chat_adapter_content(values)


def chat_adapter_content(values: Mapping[str, Any]) -> str:
    """Format ``values`` as DSPy's ChatAdapter expects, ending with ``[[ ## completed ## ]]``."""
    sections = []
    for name, value in values.items():
        rendered = value if isinstance(value, str) else json.dumps(value)
        sections.append(f"[[ ## {name} ## ]]\n{rendered}")
    sections.append("[[ ## completed ## ]]")
    return "\n\n".join(sections)


def _wants_json(request: Mapping[str, Any]) -> bool:
    if request.get("response_format"):
        return True
    return "JSON object" in _messages_text(request) and "[[ ## completed ## ]]" not in (
        _messages_text(request)
    )


def _word_count(text: str) -> int:
    return len(text.split())


# --- the server -------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordedRequest:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    received_at: float
    client_port: int | None = None  # the client's side of the connection (one per connection)


class OpenAIServer:
    """A scriptable OpenAI-compatible chat-completions server on 127.0.0.1.

    Args:
        responder: builds the assistant content from the request JSON (default: answer the
            output fields DSPy's prompt asks for).
        latency: seconds every request waits before its outcome (real time; keep it small).
        model: the ``model`` reported in answers (default: the requested model).
        chunk_delay: seconds between the chunks of a streamed answer (cut short when the
            server stops).

    Attributes:
        requests: every request received, in order (path, headers, parsed JSON).
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: float = 0.0,
        model: str | None = None,
        chunk_delay: float = 0.0,
    ) -> None:
        self.responder: Responder = responder or default_responder
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.model = model
        self.requests: list[RecordedRequest] = []
        self._outcomes: deque[Outcome] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._fault_rate = 0.0
        self._faults: tuple[Outcome, ...] = ()
        self._rng = random.Random(0)
        self.injected: Counter[str] = Counter()
        """How many requests each injected outcome answered (by :attr:`Outcome.name`)."""

    # lifecycle

    def start(self) -> OpenAIServer:
        """Bind an ephemeral port and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        handler = _make_handler(self)
        httpd = _Server(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._stopping.clear()
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; pending delays end at once."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addresses

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``…/v1``), what ``api_base`` should be."""
        return f"{self.url}/v1"

    # scripting

    def script(self, *outcomes: Outcome) -> None:
        """Queue outcomes for the next requests, in order (after any already queued)."""
        with self._lock:
            self._outcomes.extend(outcomes)

    def inject(self, rate: float, faults: Iterable[Outcome], *, seed: int = 0) -> None:
        """Answer a share ``rate`` of unscripted requests with one of ``faults``.

        A random source seeded with ``seed`` decides, request by request in arrival order,
        whether a fault is injected and which one (uniformly). Scripted outcomes go first and
        are never replaced. ``rate = 0`` turns injection off.
        """
        chosen = tuple(faults)
        if not 0.0 <= rate <= 1.0 or (rate and not chosen):
            raise ValueError("rate must be in [0, 1] and faults non-empty when rate > 0")
        with self._lock:
            self._fault_rate = rate
            self._faults = chosen
            self._rng = random.Random(seed)
            self.injected.clear()

    def reset(self) -> None:
        """Forget queued outcomes, recorded requests and injected counts."""
        with self._lock:
            self._outcomes.clear()
            self.requests.clear()
            self.injected.clear()

    @property
    def request_count(self) -> int:
        """How many chat-completion requests arrived (including failed and dropped ones)."""
        with self._lock:
            return len(self.requests)

    @property
    def pending_outcomes(self) -> int:
        with self._lock:
            return len(self._outcomes)

    # called by the handler threads

    def _record(
        self,
        path: str,
        headers: Iterable[tuple[str, str]],
        body: dict[str, Any],
        client_port: int | None = None,
    ) -> Outcome:
        with self._lock:
            self.requests.append(
                RecordedRequest(path, dict(headers), body, time.monotonic(), client_port)
            )
            if self._outcomes:
                return self._outcomes.popleft()
            if self._fault_rate and self._rng.random() < self._fault_rate:
                fault = self._rng.choice(self._faults)
                self.injected[fault.name] += 1
                return fault
            return ok()

    def _wait(self, seconds: float) -> bool:
        """Wait; return False when the server is stopping."""
        return not self._stopping.wait(seconds) if seconds > 0 else True

    def _completion(self, request: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = _word_count(_messages_text(request))
        completion_tokens = _word_count(content)
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model or request.get("model", "loopback"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _chunks(self, request: dict[str, Any], content: str) -> list[dict[str, Any]]:
        """The streamed form of :meth:`_completion`: content deltas (a few words each), the
        finish reason, and the usage when the request asks for it."""
        whole = self._completion(request, content)
        base = {
            "id": whole["id"],
            "object": "chat.completion.chunk",
            "created": whole["created"],
            "model": whole["model"],
        }
        words = re.split(r"(?<=\s)", content)
        pieces = ["".join(words[i : i + 3]) for i in range(0, len(words), 3)] or [""]
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            *(
                {**base, "choices": [{"index": 0, "delta": {"content": piece}}]}
                for piece in pieces
                if piece
            ),
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        if (request.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": whole["usage"]})
        return chunks


_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


class _Server(ThreadingHTTPServer):
    # the stdlib's listen backlog of 5 overflows when a test opens many connections at once,
    # and the kernel then resets some of them: a connection error nobody scripted
    request_queue_size = 128


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # one TCP segment per reply: without this, headers and body go out in two writes and
        # Nagle plus delayed ACK add ~40 ms to every request on loopback
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            return

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] not in _PATHS:
                self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send_json(400, {"error": {"message": "body is not JSON"}})
                return
            outcome = server._record(self.path, self.headers.items(), body, self.client_address[1])
            if not server._wait(server.latency):
                return
            self._perform(outcome, body)

        def _perform(self, outcome: Outcome, body: dict[str, Any]) -> None:
            if outcome.kind == "delay":
                if server._wait(outcome.seconds) and outcome.then is not None:
                    self._perform(outcome.then, body)
                return
            if outcome.kind == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if outcome.kind == "status":
                headers = dict(outcome.headers)
                if outcome.retry_after_date is not None:
                    headers["Retry-After"] = formatdate(
                        time.time() + outcome.retry_after_date, usegmt=True
                    )
                self._send_json(outcome.status, dict(outcome.body or {}), headers)
                return
            if outcome.kind == "malformed":
                self._send(outcome.status, outcome.raw)
                return
            content = outcome.content if outcome.content is not None else server.responder(body)
            if body.get("stream") is True:
                chunks = server._chunks(body, content)
                if outcome.kind == "truncated":
                    self._send_events(chunks[: max(1, (len(chunks) - 1) // 2)], done=False)
                elif outcome.kind == "held":
                    self._send_events(chunks, hold_after=int(outcome.seconds), gate=outcome.gate)
                else:
                    self._send_events(chunks)
                return
            if outcome.kind == "truncated":
                whole = json.dumps(server._completion(body, content)).encode()
                self._send(200, whole[: len(whole) // 2])
                return
            self._send_json(200, server._completion(body, content))

        def _send_events(
            self,
            events: list[dict[str, Any]],
            *,
            done: bool = True,
            hold_after: int = 0,
            gate: threading.Event | None = None,
        ) -> None:
            """Server-sent events, each written on its own, then ``data: [DONE]`` (with
            ``done``); with a ``gate``, the events after the first ``hold_after`` wait for it."""
            encoded = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
            if done:
                encoded.append(b"data: [DONE]\n\n")
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(sum(len(e) for e in encoded)))
                self.end_headers()
                for position, event in enumerate(encoded):
                    if position and not server._wait(server.chunk_delay):
                        return
                    if gate is not None and position == hold_after:
                        while not gate.wait(0.05):
                            if server._stopping.is_set():
                                return
                    self.wfile.write(event)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send_json(
            self, code: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None
        ) -> None:
            self._send(code, json.dumps(payload).encode(), headers)

        def _send(self, code: int, data: bytes, headers: Mapping[str, str] | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # the client gave up (timed out) before the answer was ready
                self.close_connection = True

    return Handler
