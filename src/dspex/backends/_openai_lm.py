"""A ``dspy.LM`` over the ``openai`` backend's transport, for modules that make their own calls.

A ``kind: dspy`` module (and an optimizer) calls its LM itself, so the ``openai`` backend hands
it a ``dspy.LM`` built on DSPy's custom-engine contract (``complete(Request) -> Response``, one
attempt per call): :class:`AsyncChatEngine` and :class:`ChatEngine` send each ``dspy.lm15``
request on the backend's own pooled session. DSPy keeps everything around the call (history,
callbacks, the usage tracker); the LM is built with DSPy's cache and retries off, since retries
belong to dspex.

The request body is the one DSPy's own OpenAI dialect writes for the request
(``dspy.clients.lm15_boundary.request_kwargs``), with the backend's default parameters under the
request's own; the reply becomes a ``dspy.lm15.Response`` through
``dspy.lm15.response_from_openai_chat``. The engines declare what the endpoint takes (JSON mode
when the backend's ``json_mode`` allows it), which is what DSPy's adapters read.

Failures leave an engine as ``dspy.lm15`` errors (the contract), each carrying the status and
``Retry-After`` of the dspex error behind it and raised from it, so
:func:`dspex.backends.errors_map.translate` gives back the same dspex class.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any, Final

from dspex.backends._openai_http import ChatTransport
from dspex.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendUnavailableError,
    BadRequestError,
    ConfigError,
    ContextWindowError,
    DspexError,
    DspexTimeoutError,
    QuotaExceededError,
    RateLimitError,
)

__all__ = ["AsyncChatEngine", "ChatEngine", "chat_lm"]

# the chat-completions parameters an OpenAI-compatible endpoint is expected to take
_PARAMS: Final = frozenset(
    {
        "temperature",
        "max_tokens",
        "top_p",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "stream",
    }
)

_FINISH: Final = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_call",
    "function_call": "tool_call",
    "content_filter": "content_filter",
}


class AsyncChatEngine:
    """DSPy's async engine contract over a :class:`ChatTransport`.

    Args:
        transport: the backend's transport (shared: the engine never closes it).
        model: the model sent in every request.
        params: default request parameters; a request's own values win.
        timeout: seconds one call may take (``None``: no limit).
        json_mode: whether the endpoint takes ``response_format: {"type": "json_object"}``.
        stream_usage: ask for usage at the end of a stream (``stream_options``).
    """

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False

    def __init__(
        self,
        transport: ChatTransport,
        *,
        model: str,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        json_mode: bool = True,
        stream_usage: bool = True,
    ) -> None:
        self.transport = transport
        self.model = model
        self.params = dict(params or {})
        self.timeout = timeout
        self.stream_usage = stream_usage
        self.supported_params = _PARAMS | ({"response_format"} if json_mode else set())

    def body(self, request: Any) -> dict[str, Any]:
        """The chat-completions body for a ``dspy.lm15.Request``."""
        from dspy.clients.lm15_boundary import request_kwargs

        sent = request_kwargs(request, "chat")
        defaults = self.params
        if "max_completion_tokens" in sent and "max_tokens" in defaults:
            defaults = {k: v for k, v in defaults.items() if k != "max_tokens"}
        return {"model": self.model, **defaults, **sent}

    async def complete(self, request: Any) -> Any:
        """Answer one ``dspy.lm15.Request`` with one HTTP request.

        Raises:
            dspy.lm15.LM15Error: a subclass for how the call failed, raised from the dspex error.
        """
        from dspy.lm15 import ProviderError, response_from_openai_chat

        body = self.body(request)
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self.transport.complete(body)
        except DspexError as exc:
            raise lm15_error(exc) from exc
        except TimeoutError as exc:
            error = DspexTimeoutError(f"{self.transport.backend}: no answer within {self.timeout}s")
            raise lm15_error(error) from exc
        try:
            return response_from_openai_chat(reply.data, model=request.model)
        except Exception as exc:
            raise ProviderError(f"the reply is not a chat completion DSPy can read: {exc}") from exc

    async def stream(self, request: Any) -> AsyncGenerator[Any, None]:
        """Stream one request as ``dspy.lm15`` events: start, text deltas, end (with usage)."""
        from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta, Usage

        body = self.body(request)
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        started = False
        finish: str | None = None
        usage: Any = None
        try:
            async for chunk in self.transport.stream(body, read_timeout=self.timeout):
                if not started:
                    started = True
                    yield StreamStartEvent(
                        id=_text(chunk.get("id")), model=_text(chunk.get("model"))
                    )
                counts = chunk.get("usage")
                if isinstance(counts, dict):
                    usage = Usage(
                        input_tokens=counts.get("prompt_tokens"),
                        output_tokens=counts.get("completion_tokens"),
                    )
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield StreamDeltaEvent(delta=TextDelta(text=text))
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], "stop")
        except DspexError as exc:
            raise lm15_error(exc) from exc
        if not started:
            yield StreamStartEvent()
        if finish is None:
            raise lm15_error(
                BackendConnectionError(
                    "the stream ended before the answer was complete",
                    backend=self.transport.backend,
                )
            )
        yield StreamEndEvent(finish_reason=finish, usage=usage)

    async def aclose(self) -> None:
        """Nothing to close: the transport belongs to the backend."""


class ChatEngine:
    """DSPy's sync engine contract: the async engine's calls, run on the transport's own loop."""

    def __init__(self, engine: AsyncChatEngine) -> None:
        self.engine = engine
        self.supports_function_calling = engine.supports_function_calling
        self.supports_reasoning = engine.supports_reasoning
        self.supports_response_schema = engine.supports_response_schema
        self.supported_params = engine.supported_params

    def complete(self, request: Any) -> Any:
        return self.engine.transport.run_sync(lambda: self.engine.complete(request))

    def stream(self, request: Any) -> Iterator[Any]:
        events = self.engine.stream(request)
        run = self.engine.transport.run_sync
        try:
            while True:
                try:
                    yield run(events.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            run(events.aclose)

    def close(self) -> None:
        """Nothing to close: the transport belongs to the backend."""


def _text(value: Any) -> str | None:
    """A non-empty string for an event's ``id``/``model``, else ``None``."""
    return str(value) if value not in (None, "") else None


def chat_lm(engine: AsyncChatEngine) -> Any:
    """A ``dspy.LM`` named ``engine.model`` whose calls go through ``engine`` (cache and
    retries off)."""
    import dspy

    return dspy.LM(
        engine.model,
        engine=ChatEngine(engine),
        async_engine=engine,
        cache=False,  # every call is a real call; dspex decides about reuse
        num_retries=0,  # retries belong to dspex
    )


def lm15_error(exc: DspexError) -> Exception:
    """The ``dspy.lm15`` error an engine raises for ``exc`` (status and ``Retry-After`` kept)."""
    from dspy import lm15

    table: tuple[tuple[type[DspexError], type[Exception]], ...] = (
        (ContextWindowError, lm15.ContextLengthError),
        (QuotaExceededError, lm15.BillingError),
        (AuthenticationError, lm15.AuthError),
        (RateLimitError, lm15.RateLimitError),
        (BadRequestError, lm15.InvalidRequestError),
        (BackendUnavailableError, lm15.ServerError),
        (BackendConnectionError, lm15.TransportError),
        (DspexTimeoutError, lm15.TimeoutError),
        (ConfigError, lm15.ConfigurationError),
    )
    target: Any = next(
        (target for cls, target in table if isinstance(exc, cls)), lm15.ProviderError
    )
    status = getattr(exc, "status", None)
    retry_after = getattr(exc, "retry_after", None)
    error: Exception = target(exc.message, status=status, retry_after=retry_after)
    return error
