"""Opaque ``dspy`` modules behind a coordinator group: a DSPy LM that routes every raw LM call.

A ``dspy`` module kind runs user code that makes its own LM calls (a ``ChainOfThought`` inside,
a loop, several predictors), so the coordinator cannot wrap a predictor call as it does for
``predict``. Instead the module runs under :func:`routed_lm`: a ``dspy.LM`` whose engine (DSPy
3.4's custom-engine contract, ``async complete(Request) -> Response``) hands each request to a
:class:`LMRouter` — a coordinator group — which runs it on a member's own LM with the group's
retries, failover, breakers and attempt records.

Usage is counted once: the routed LM is the one DSPy's usage tracker sees (its model name is
the group's, ``dspex/<group>`` unless given), and the member LMs are called with the tracker
switched off. Their HTTP requests are the attempts: a member LM built by dspex has DSPy's own
retries off, so each provider request is exactly one recorded attempt.

This module imports DSPy lazily and nothing from :mod:`dspex.resilience` (the router is a
protocol), keeping the layers pointing down.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from dspex.backends._loop import running_loop
from dspex.backends.base import Backend, BackendAttempt, Usage
from dspex.backends.errors_map import translate
from dspex.errors import DspexError

__all__ = [
    "LMRouter",
    "RoutingEngine",
    "dspex_cause",
    "has_lm",
    "recording",
    "routed_lm",
]

T = TypeVar("T")

# the event loop the routed calls of a recording block run on (see _SyncBridge)
_loop: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar("dspex_routed_loop", default=None)

_recorded: ContextVar[tuple[list[BackendAttempt], str] | None] = ContextVar(
    "dspex_routed_attempts", default=None
)


class LMRouter(Protocol):
    """What routes one LM call across backends (a :class:`dspex.resilience.Coordinator`)."""

    name: str

    def call(
        self,
        op: Callable[[Backend], Awaitable[T]],
        *,
        module: str = ...,
        accepts: Callable[[Backend], bool] | None = ...,
        usage: Callable[[T], Mapping[str, Usage]] | None = ...,
        attempts: list[BackendAttempt] | None = ...,
    ) -> Awaitable[T]: ...


def has_lm(backend: Backend) -> bool:
    """Whether ``backend`` has an LM a routed call can use (a ``dspy`` backend has one).

    Looks at the class and the instance without touching the attribute, which may build the LM.
    """
    if any("lm" in vars(klass) for klass in type(backend).__mro__):
        return True
    return "lm" in getattr(backend, "__dict__", {})


@contextmanager
def recording(module: str = "") -> Iterator[list[BackendAttempt]]:
    """Collect, in order, every attempt the routed LM calls inside the block make.

    Attempts are numbered on from one another, so a module's LM calls number 1, 2, 3, … across
    calls and backends.

    Inside the block, a module's sync ``forward`` run in a worker thread (which inherits this
    context) may call the routed LM too: the call is handed to this event loop.
    """
    attempts: list[BackendAttempt] = []
    token = _recorded.set((attempts, module))
    loop_token = _loop.set(running_loop())
    try:
        yield attempts
    finally:
        _loop.reset(loop_token)
        _recorded.reset(token)


def dspex_cause(exc: BaseException) -> DspexError | None:
    """The dspex error behind ``exc``: DSPy wraps what an engine raises in its own LM error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DspexError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


class RoutingEngine:
    """DSPy's async engine contract over a router: each request is one routed call.

    Args:
        router: the coordinator group the calls go through.
    """

    def __init__(self, router: LMRouter) -> None:
        self.router = router

    async def complete(self, request: Any) -> Any:
        """Answer one ``dspy.lm15.Request`` with the first member LM that succeeds.

        Raises:
            DspexError: what the router raised (DSPy wraps it; see :func:`dspex_cause`).
        """
        recorded = _recorded.get()
        attempts, module = recorded if recorded is not None else (None, "")
        return await self.router.call(
            lambda backend: _ask(backend, request),
            module=module,
            accepts=has_lm,
            usage=_usage,
            attempts=attempts,
        )

    def stream(self, request: Any) -> AsyncIterator[Any]:
        """Streaming is not routed: a retry could not take back what was already streamed."""
        raise _unsupported(f"coordinator {self.router.name!r} does not stream LM calls")

    async def aclose(self) -> None:
        """Nothing to close: the members belong to the runtime."""


class _SyncBridge:
    """The sync half of the engine pair: routing runs on the event loop the router lives on.

    A sync call from a worker thread inside :func:`recording` (a module's ``forward``, run by
    the engine's thread helper) is handed to that loop, and the thread waits for it. Anywhere
    else it is refused: from the loop's own thread, waiting would never end.
    """

    def __init__(self, name: str, engine: RoutingEngine) -> None:
        self.name = name
        self._engine = engine

    def complete(self, request: Any) -> Any:
        loop = _loop.get()
        if loop is None or loop.is_closed() or running_loop() is loop:
            raise _unsupported(
                f"coordinator {self.name!r} routes async LM calls only (and sync ones from a"
                " module dspex runs in a worker thread): call the module with acall() and its"
                " predictors with acall() inside aforward()"
            )
        return asyncio.run_coroutine_threadsafe(self._engine.complete(request), loop).result()

    def stream(self, request: Any) -> Iterator[Any]:
        raise _unsupported(f"coordinator {self.name!r} does not stream LM calls")

    def close(self) -> None:
        """Nothing to close."""


def routed_lm(router: LMRouter, *, model: str | None = None) -> Any:
    """A ``dspy.LM`` whose every call goes through ``router`` (bind it with ``dspy.context``).

    Args:
        router: the coordinator group.
        model: the name DSPy records the calls (and their usage) under; default
            ``dspex/<group name>``.

    Example:
        >>> with dspy.context(lm=routed_lm(group), track_usage=True):  # doctest: +SKIP
        ...     prediction = await module.acall(question="…")
    """
    import dspy

    engine = RoutingEngine(router)
    return dspy.LM(
        model or f"dspex/{router.name}",
        engine=_SyncBridge(router.name, engine),
        async_engine=engine,
        cache=False,  # every call is a real routed call; dspex decides about reuse
        num_retries=0,  # retries belong to the router
    )


async def _ask(backend: Backend, request: Any) -> Any:
    """One attempt: the request on ``backend``'s own LM, its usage not tracked (counted once,
    by the routed LM).

    A rate-limited backend (``rpm``/``tpm``: it has a ``limiter``) is waited for first and
    charged the answer's tokens, as its ``complete`` would be.
    """
    import dspy

    lm: Any = getattr(backend, "lm")  # noqa: B009 - a property that may build the LM
    limiter: Any = getattr(backend, "limiter", None)
    if limiter is not None:
        await limiter.acquire()
    try:
        with dspy.context(usage_tracker=None):
            response = await lm.acall(dataclasses.replace(request, model=lm.model))
    except DspexError:
        raise
    except Exception as exc:
        raise translate(exc, backend.name) from exc
    if limiter is not None:
        limiter.spend(sum(u.total_tokens for u in _usage(response).values()))
    return response


def _usage(response: Any) -> dict[str, Usage]:
    usage = getattr(response, "usage", None)
    if usage is None:
        return {}
    prompt = getattr(usage, "input_tokens", None)
    completion = getattr(usage, "output_tokens", None)
    return {
        str(getattr(response, "model", None) or "unknown"): Usage(
            prompt if isinstance(prompt, int) else 0,
            completion if isinstance(completion, int) else 0,
        )
    }


def _unsupported(message: str) -> Exception:
    from dspy.utils.exceptions import LMUnsupportedFeatureError

    error: Exception = LMUnsupportedFeatureError(message)
    return error
