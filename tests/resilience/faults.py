"""A fault-injecting backend for resilience tests: the real mock backend with a scripted handler.

Each call takes the next :class:`Fault` from the script (``ok`` once the script is empty):
``ok``, ``rate_limited`` (429, optional ``Retry-After``), ``unavailable`` (5xx), ``connection``,
``timeout`` (the backend's own timeout), ``hang`` (never answers), ``auth`` (401), ``parse`` (the
answer could not be parsed), ``bad_request`` (400), ``context_window`` (400, the prompt is too long
for the model). Waits are ``asyncio.sleep``, so under
looptime they take no real time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendUnavailableError,
    BadRequestError,
    ContextWindowError,
    DspexTimeoutError,
    ParseError,
    RateLimitError,
)
from dspex.signatures.signature import Signature

QA = Signature.parse("question: str -> answer: str")


def request(question: str = "What is 6 * 7?", **kwargs: Any) -> PredictRequest:
    return PredictRequest(signature=QA, inputs={"question": question}, **kwargs)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    retry_after: float | None = None
    status: int | None = None


OK = Fault("ok")
UNAVAILABLE = Fault("unavailable", status=503)
CONNECTION = Fault("connection")
TIMEOUT = Fault("timeout")
HANG = Fault("hang")
AUTH = Fault("auth", status=401)
PARSE = Fault("parse")
BAD_REQUEST = Fault("bad_request", status=400)
CONTEXT_WINDOW = Fault("context_window", status=400)


def rate_limited(retry_after: float | None = None) -> Fault:
    return Fault("rate_limit", retry_after=retry_after, status=429)


def scripted(name: str, *faults: Fault, latency: float = 0.0) -> MockBackend:
    """A mock backend named ``name`` that answers each call with the next scripted fault."""
    queue = deque(faults)

    async def handler(req: PredictRequest) -> dict[str, Any]:
        fault = queue.popleft() if queue else OK
        if latency:
            await asyncio.sleep(latency)
        if fault.kind == "ok":
            return {"answer": f"{name} answered"}
        if fault.kind == "hang":
            await asyncio.get_running_loop().create_future()
        raise _error(name, fault)

    return MockBackend(name, handler=handler)


def _error(name: str, fault: Fault) -> Exception:
    match fault.kind:
        case "rate_limit":
            return RateLimitError(
                "slow down", status=429, retry_after=fault.retry_after, backend=name
            )
        case "unavailable":
            return BackendUnavailableError("down", status=fault.status, backend=name)
        case "connection":
            return BackendConnectionError("connection reset", backend=name)
        case "timeout":
            return DspexTimeoutError(f"{name} did not answer in time")
        case "auth":
            return AuthenticationError("invalid key", status=401, backend=name)
        case "parse":
            return ParseError("answer had no [[ ## answer ## ]]", backend=name)
        case "bad_request":
            return BadRequestError("bad request", status=400, backend=name)
        case "context_window":
            return ContextWindowError("prompt too long for the model", status=400, backend=name)
    raise AssertionError(f"unknown fault {fault.kind}")
