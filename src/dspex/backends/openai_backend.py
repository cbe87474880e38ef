"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint, on the fast path.

OpenAI, Azure OpenAI, vLLM, SGLang, Ollama, a LiteLLM proxy, Together, Groq, Fireworks, … —
anything that serves ``POST {base_url}/chat/completions``. A predictor call is DSPy's own work
done without DSPy's per-call machinery around it:

1. **format** with a DSPy adapter through its public API — ``ChatAdapter`` by default (the
   byte-identical :class:`~dspex.backends._dspy_adapter.FastChatAdapter`), ``JSONAdapter`` with
   ``adapter = "json"`` — over the signature DSPy's ``Predict`` or ``ChainOfThought`` would use.
   What depends only on the signature (its DSPy class, the reasoning field, input defaults, the
   system message) is built once per signature. The messages are the ones ``dspy.LM`` is sent
   for the same module.
2. **send** the request on a pooled aiohttp session (:mod:`dspex.backends._openai_http`): one
   HTTP request per call, no retries (the resilience layer retries), usage read from the reply.
3. **parse** with the same adapter, fallback included: when the ``ChatAdapter`` cannot read an
   answer, the call asks once more in JSON mode with a ``JSONAdapter`` (with
   ``response_format: {"type": "json_object"}`` unless ``json_mode = "off"``), as DSPy does; an
   answer that still cannot be read is a :class:`~dspex.errors.ParseError`.

:meth:`OpenAIBackend.stream` sends the same request with ``stream: true`` and yields the text as
the server-sent chunks arrive, then the parsed result. In a streaming run
(:mod:`dspex.backends.streaming`) :meth:`OpenAIBackend.complete` itself streams the calls of the
modules the run's token sink wants, handing it each output field's text as it arrives; the
result, the JSON fallback included, is the same as without. :attr:`OpenAIBackend.lm` is a
``dspy.LM`` over the same transport (:mod:`dspex.backends._openai_lm`), so ``kind: dspy`` modules
and optimizers make their LM calls on it too.

Example ``dspex.toml``::

    [backends.gpt]
    kind = "openai"
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"
    temperature = 0.0
    max_connections = 64
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticUndefined

from dspex.backends._openai_http import ChatReply, ChatTransport
from dspex.backends.base import BackendHealth, PredictKind, PredictRequest, PredictResult, Usage
from dspex.backends.dspy_backend import _plain
from dspex.backends.errors_map import translate
from dspex.backends.streaming import TOKEN_SINK, FieldStream, TokenSink
from dspex.errors import (
    BackendConnectionError,
    ConfigError,
    DspexError,
    DspexTimeoutError,
    ErrorDetail,
)
from dspex.signatures.dspy_interop import from_dspy_values, to_dspy_values

if TYPE_CHECKING:
    from dspex.signatures.signature import Signature

__all__ = ["OpenAIBackend", "OpenAIOptions", "StreamEvent"]

AdapterName = Literal["chat", "json"]
JsonMode = Literal["json_object", "off"]

_REASONING: Final = "reasoning"
_PLAN_CACHE_SIZE: Final = 256
_JSON_OBJECT: Final = {"type": "json_object"}
# body keys the backend writes itself
_RESERVED: Final = frozenset({"model", "messages", "stream", "stream_options"})
# what ChatAdapter drops from a call when it does not use native function calling
_TOOL_KEYS: Final = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
# request parameters that may be written at the top of a [backends.NAME] table
TOP_LEVEL_PARAMS: Final = frozenset(
    {
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "reasoning_effort",
    }
)


class OpenAIOptions(BaseModel):
    """The options of an ``openai`` backend (a ``[backends.NAME]`` table with ``kind = "openai"``).

    Attributes:
        base_url: the endpoint's OpenAI-style base URL; requests go to
            ``{base_url}/chat/completions`` (a query string such as Azure's ``api-version`` is
            kept).
        model: the model named in every request.
        api_key_env: the environment variable holding the API key (none for a local server).
        api_key_header: ``Authorization`` (sent as ``Bearer <key>``) or the header that takes the
            key as it is (``api-key`` for Azure OpenAI).
        timeout: seconds one call may take, unless the module sets its own.
        max_connections: the most connections open to the endpoint at once.
        headers: more headers for every request.
        params: default request parameters (``temperature``, ``max_tokens``, or anything else
            the endpoint takes, such as vLLM's ``top_k``); a module's ``config`` wins over them.
            The common ones may also be written at the top of the table.
        adapter: ``chat`` (DSPy's ``ChatAdapter``, the default) or ``json`` (``JSONAdapter``).
        json_mode: ``json_object`` (JSON calls send ``response_format: {"type":
            "json_object"}``) or ``off`` for an endpoint that does not take it.
        stream_usage: streamed calls ask for usage at the end (``stream_options``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    api_key_header: str = Field(default="Authorization", min_length=1)
    timeout: float | None = Field(default=60.0, gt=0, allow_inf_nan=False)
    max_connections: int = Field(default=100, ge=1, strict=True)
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    adapter: AdapterName = "chat"
    json_mode: JsonMode = "json_object"
    stream_usage: bool = True

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> OpenAIOptions:
        """Read a ``[backends.NAME]`` table (``kind`` and unset keys left out).

        ``api_base`` is taken for ``base_url`` (the ``dspy`` kind's name for it); the common
        request parameters at the top of the table join ``params``.

        Raises:
            ConfigError: an unknown or malformed option, a reserved request parameter, or an
                API key written into the configuration.
        """
        options = {k: v for k, v in table.items() if k != "kind" and v is not None}
        if "api_base" in options:
            if "base_url" in options:
                raise ConfigError(f"backend {name!r}: give base_url or api_base, not both")
            options["base_url"] = options.pop("api_base")
        params = dict(options.pop("params", None) or {})
        for key in sorted(TOP_LEVEL_PARAMS & options.keys()):
            params[key] = options.pop(key)
        if "api_key" in options or "api_key" in params:
            raise ConfigError(
                f"backend {name!r}: API keys are never written in the configuration; "
                "name the environment variable that holds it with api_key_env"
            )
        reserved = sorted(_RESERVED & params.keys())
        if reserved:
            raise ConfigError(f"backend {name!r}: params may not set {reserved} (dspex sets them)")
        unknown = sorted(set(options) - set(cls.model_fields))
        if unknown:
            raise ConfigError(
                f"backend {name!r}: unknown openai options {unknown}; other request parameters "
                "the endpoint takes go in params = {...}"
            )
        try:
            return cls(**options, params=params)
        except PydanticValidationError as exc:
            details = ErrorDetail.from_pydantic(exc, root="options")
            problems = "; ".join(f"{d.field}: {d.message}" for d in details)
            raise ConfigError(f"backend {name!r}: {problems}") from None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One step of :meth:`OpenAIBackend.stream`: a piece of text, or (last) the whole result.

    Attributes:
        delta: text that just arrived (empty in the last event).
        result: the parsed answer, in the last event only.
    """

    delta: str = ""
    result: PredictResult | None = None


@dataclass(slots=True)
class _Streamed:
    """What a streamed answer gathered besides its text."""

    parts: list[str] = field(default_factory=list)
    model: str | None = None
    finish: str | None = None
    usage: Usage = field(default_factory=Usage)

    def reply(self) -> ChatReply:
        return ChatReply(content="".join(self.parts), model=self.model, finish_reason=self.finish)


@dataclass(frozen=True, slots=True)
class _Call:
    """One call's plan, adapters, DSPy inputs and request body."""

    plan: _Plan
    adapter: Any
    json_adapter: Any
    demos: list[dict[str, Any]]
    inputs: dict[str, Any]
    config: Mapping[str, Any]
    body: dict[str, Any]

    @property
    def may_fall_back(self) -> bool:
        """Whether an unreadable answer is asked again in JSON mode (ChatAdapter's fallback)."""
        return self.adapter is not self.json_adapter and getattr(
            self.adapter, "use_json_adapter_fallback", True
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the calls of one signature and kind share."""

    signature: Any  # the DSPy signature class the module's predictor uses
    declared: tuple[str, ...]  # the dspex signature's output names
    reasoning_extra: bool  # a chain_of_thought reasoning the signature does not declare
    defaults: dict[str, Any]  # input defaults, as Predict fills them in


class OpenAIBackend:
    """A backend for an OpenAI-compatible chat-completions endpoint.

    Args:
        name: the backend's name (in errors, records and health).
        base_url: the endpoint's base URL (``https://api.openai.com/v1``,
            ``http://localhost:8000/v1`` for vLLM, ``http://localhost:11434/v1`` for Ollama).
        model: the model named in every request.
        api_key_env: the environment variable holding the API key, read when the first request
            is made on an event loop; ``None`` for an endpoint that needs none.
        api_key_header: the header for the key (see :class:`OpenAIOptions`).
        timeout: seconds one call may take unless the request sets its own (``None``: no limit).
        max_connections: the most connections open at once.
        headers: more headers for every request.
        params: default request parameters; a request's ``config`` wins over them.
        adapter: ``"chat"`` (default) or ``"json"``.
        json_mode: ``"json_object"`` (default) or ``"off"``.
        stream_usage: streamed calls ask for usage at the end.

    Raises:
        ConfigError: ``base_url`` is not an http(s) URL.

    Example:
        >>> backend = OpenAIBackend(
        ...     "vllm", base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct"
        ... )
    """

    def __init__(
        self,
        name: str = "openai",
        *,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        api_key_header: str = "Authorization",
        timeout: float | None = 60.0,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        adapter: AdapterName = "chat",
        json_mode: JsonMode = "json_object",
        stream_usage: bool = True,
    ) -> None:
        if adapter not in ("chat", "json"):
            raise ConfigError(f"backend {name!r}: adapter is 'chat' or 'json', got {adapter!r}")
        if json_mode not in ("json_object", "off"):
            raise ConfigError(
                f"backend {name!r}: json_mode is 'json_object' or 'off', got {json_mode!r}"
            )
        # what rebuilds this backend in another process (see __reduce__)
        self._options: dict[str, Any] = {
            "base_url": base_url,
            "model": model,
            "api_key_env": api_key_env,
            "api_key_header": api_key_header,
            "timeout": timeout,
            "max_connections": max_connections,
            "headers": dict(headers or {}),
            "params": dict(params or {}),
            "adapter": adapter,
            "json_mode": json_mode,
            "stream_usage": stream_usage,
        }
        self.name = name
        self.model = model
        self.base_url = base_url
        self.timeout = timeout
        self.adapter_name: AdapterName = adapter
        self.json_mode: JsonMode = json_mode
        self.stream_usage = stream_usage
        self.params = {k: v for k, v in (params or {}).items() if k not in _RESERVED}
        self.transport = ChatTransport(
            name,
            base_url,
            api_key_env=api_key_env,
            api_key_header=api_key_header,
            headers=headers,
            max_connections=max_connections,
        )
        self._adapter: Any = None
        self._json_adapter: Any = None
        self._lm: Any = None
        self._by_id: dict[tuple[int, PredictKind], tuple[Signature, _Plan]] = {}
        self._plans: OrderedDict[tuple[Signature, PredictKind], _Plan] = OrderedDict()

    @classmethod
    def from_options(cls, name: str, options: OpenAIOptions) -> OpenAIBackend:
        """The backend for validated options."""
        return cls(name, **options.model_dump())

    @classmethod
    def from_config(cls, name: str, table: Mapping[str, Any]) -> OpenAIBackend:
        """The backend for a ``[backends.NAME]`` table (see :meth:`OpenAIOptions.from_table`).

        Raises:
            ConfigError: the table is wrong.
        """
        return cls.from_options(name, OpenAIOptions.from_table(name, table))

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r})"
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its options: a copy (a batch's worker process) opens its own connections
        and builds its own caches; the API key is read from the environment there."""
        return (functools.partial(OpenAIBackend, self.name, **self._options), ())

    # --- the LM for modules that call it themselves -------------------------------------------

    @property
    def lm(self) -> Any:
        """A ``dspy.LM`` over this backend's transport (built on first use), for ``kind: dspy``
        modules and optimizers; DSPy's cache and retries are off."""
        if self._lm is None:
            from dspex.backends._openai_lm import AsyncChatEngine, chat_lm

            engine = AsyncChatEngine(
                self.transport,
                model=self.model,
                params=self.params,
                timeout=self.timeout,
                json_mode=self.json_mode != "off",
                stream_usage=self.stream_usage,
            )
            self._lm = chat_lm(engine)
        return self._lm

    # --- per-signature work -------------------------------------------------------------------

    def _adapters(self) -> tuple[Any, Any]:
        """The main adapter and the JSON one (for ``adapter = "json"`` and the fallback)."""
        if self._adapter is None:
            import dspy

            if self.adapter_name == "json":
                self._json_adapter = self._adapter = dspy.JSONAdapter()
            else:
                from dspex.backends._dspy_adapter import FastChatAdapter

                self._adapter = FastChatAdapter()
                # what ChatAdapter's fallback builds: its own native-function-calling choice
                self._json_adapter = dspy.JSONAdapter(
                    use_native_function_calling=self._adapter.use_native_function_calling,
                    parallel_tool_calls=self._adapter.parallel_tool_calls,
                )
        return self._adapter, self._json_adapter

    def _plan(self, signature: Signature, kind: PredictKind) -> _Plan:
        # found by identity first: a program's calls pass the same signature object
        seen = self._by_id.get((id(signature), kind))
        if seen is not None and seen[0] is signature:
            return seen[1]
        key = (signature, kind)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _build_plan(signature, kind)
            if len(self._plans) > _PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        if len(self._by_id) >= _PLAN_CACHE_SIZE:
            self._by_id.clear()
        self._by_id[(id(signature), kind)] = (signature, plan)  # keeps the id from reuse
        return plan

    def _body(self, messages: list[dict[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        params = self.params
        if config:
            # the mock backend's knobs (mock_latency_ms, …) are not the endpoint's
            sent = {k: v for k, v in config.items() if k not in _RESERVED and k[:5] != "mock_"}
            params = {**params, **sent}
        for key, value in params.items():
            if value is not None:
                body[key] = value
        return body

    # --- Backend protocol ---------------------------------------------------------------------

    async def complete(self, request: PredictRequest) -> PredictResult:
        """Answer one predictor call with one HTTP request (two when the JSON fallback runs).

        In a streaming run whose sink wants this module's tokens
        (:data:`~dspex.backends.streaming.TOKEN_SINK`), the request is streamed and its output
        fields' text goes to the sink as it arrives; the result is the same.

        Raises:
            DspexTimeoutError: the call took longer than ``request.timeout`` (else the
                backend's ``timeout``).
            BackendError: the endpoint failed (the subclass says how; a
                :class:`~dspex.errors.ParseError` when the answer cannot be read).
        """
        started = time.perf_counter()
        seconds = request.timeout if request.timeout is not None else self.timeout
        sink = TOKEN_SINK.get()
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                if sink is not None and sink.wants(request.module):
                    outputs, extras, usage, model = await self._call_streamed(
                        request, sink, seconds
                    )
                else:
                    outputs, extras, usage, model = await self._call(request)
        except TimeoutError as exc:
            if deadline.expired():
                raise DspexTimeoutError(
                    f"{self.name}: no answer within {seconds:g}s"
                    + (f" (module {request.module})" if request.module else "")
                ) from exc
            raise translate(exc, self.name) from exc
        return PredictResult(
            outputs=outputs,
            usage={self.model: usage},
            model=model,
            latency_ms=(time.perf_counter() - started) * 1000,
            extras=extras,
        )

    def _prepare(self, request: PredictRequest) -> _Call:
        """What one call sends: the plan, the adapters, the DSPy inputs and the body."""
        config: Mapping[str, Any] = request.config
        try:
            demos = _dspy_demos(request)
            plan = self._plan(request.signature, request.kind)
            adapter, json_adapter = self._adapters()
            inputs = {**plan.defaults, **request.inputs} if plan.defaults else request.inputs
            inputs = to_dspy_values(request.signature.input_fields, inputs)
            if config and adapter is not json_adapter and _TOOL_KEYS & config.keys():
                config = {k: v for k, v in config.items() if k not in _TOOL_KEYS}
            body = self._body(adapter.format(plan.signature, demos, inputs), config)
            if adapter is json_adapter:
                self._json_mode(body)
        except DspexError:
            raise
        except Exception as exc:
            raise translate(exc, self.name) from exc
        return _Call(plan, adapter, json_adapter, demos, inputs, config, body)

    async def _call(
        self, request: PredictRequest
    ) -> tuple[dict[str, Any], dict[str, Any], Usage, str]:
        from dspy.utils.exceptions import AdapterParseError

        call = self._prepare(request)
        reply = await self.transport.complete(call.body)
        usage = Usage(reply.prompt_tokens, reply.completion_tokens)
        try:
            fields = _parse(call.adapter, call.plan.signature, reply)
        except AdapterParseError as exc:
            if not call.may_fall_back:
                raise translate(exc, self.name) from exc
            fields, more, reply = await self._fallback(call)
            usage = usage + more
        return (*_outputs(call.plan, fields), usage, reply.model or self.model)

    async def _fallback(self, call: _Call) -> tuple[dict[str, Any], Usage, ChatReply]:
        """ChatAdapter's fallback: the same call once more, in JSON mode."""
        from dspy.utils.exceptions import AdapterParseError

        json_adapter = call.json_adapter
        try:
            body = self._body(
                json_adapter.format(call.plan.signature, call.demos, call.inputs), call.config
            )
            self._json_mode(body)
        except Exception as error:
            raise translate(error, self.name) from error
        reply = await self.transport.complete(body)
        usage = Usage(reply.prompt_tokens, reply.completion_tokens)
        try:
            fields = _parse(json_adapter, call.plan.signature, reply)
        except AdapterParseError as error:
            raise translate(error, self.name) from error
        return fields, usage, reply

    async def _call_streamed(
        self, request: PredictRequest, sink: TokenSink, seconds: float | None
    ) -> tuple[dict[str, Any], dict[str, Any], Usage, str]:
        """:meth:`_call` as a stream: each output field's text goes to ``sink`` as it comes.

        When the ChatAdapter cannot read the streamed answer, the JSON fallback runs as in
        :meth:`_call` (not streamed); the sink hears of it as a new attempt.
        """
        from dspy.utils.exceptions import AdapterParseError

        call = self._prepare(request)
        module = request.module
        sink.begin(module)
        names = (*call.plan.signature.output_fields,)
        fields_stream = FieldStream(names, "json" if call.adapter is call.json_adapter else "chat")
        reply = _Streamed()
        async for text in self._deltas(call.body, seconds, reply):
            for name, piece in fields_stream.feed(text):
                sink.token(module, name, piece)
        for name, piece in fields_stream.end():
            sink.token(module, name, piece)
        usage = reply.usage
        answer = reply.reply()
        try:
            fields = _parse(call.adapter, call.plan.signature, answer)
        except AdapterParseError as exc:
            if not call.may_fall_back:
                raise translate(exc, self.name) from exc
            sink.begin(module)
            fields, more, answer = await self._fallback(call)
            usage = usage + more
        return (*_outputs(call.plan, fields), usage, answer.model or self.model)

    async def _deltas(
        self, body: dict[str, Any], seconds: float | None, into: _Streamed
    ) -> AsyncIterator[str]:
        """Send ``body`` as a stream; yield the answer's text as it arrives, and gather the
        rest (model, finish reason, usage) ``into`` the accumulator.

        Raises:
            BackendConnectionError: the stream ended before the answer was complete.
        """
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        async for chunk in self.transport.stream(body, read_timeout=seconds):
            into.model = into.model or chunk.get("model")
            counts = chunk.get("usage")
            if isinstance(counts, dict):
                into.usage = _usage(counts)
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    into.parts.append(text)
                    yield text
                into.finish = choice.get("finish_reason") or into.finish
        if into.finish is None:
            raise BackendConnectionError(
                "the stream ended before the answer was complete", backend=self.name
            )

    def _json_mode(self, body: dict[str, Any]) -> None:
        """Ask for a JSON object, as ``JSONAdapter`` does of an LM that takes
        ``response_format`` but not a schema."""
        if self.json_mode == "json_object":
            body["response_format"] = _JSON_OBJECT

    async def stream(self, request: PredictRequest) -> AsyncIterator[StreamEvent]:
        """Answer one predictor call as a stream: the text as it arrives, then the result.

        The request is the one :meth:`complete` sends, with ``stream: true``. The answer is
        parsed with the backend's adapter once the stream ends; there is no JSON fallback after
        text was shown (as in DSPy). ``request.timeout`` (else the backend's) bounds each wait
        for the next chunk.

        Raises:
            BackendError: the endpoint failed, the stream broke off, or the answer cannot be read
                (:class:`~dspex.errors.ParseError`).
        """
        from dspy.utils.exceptions import AdapterParseError

        started = time.perf_counter()
        call = self._prepare(request)
        seconds = request.timeout if request.timeout is not None else self.timeout
        streamed = _Streamed()
        async for text in self._deltas(call.body, seconds, streamed):
            yield StreamEvent(delta=text)
        try:
            fields = _parse(call.adapter, call.plan.signature, streamed.reply())
        except AdapterParseError as exc:
            raise translate(exc, self.name) from exc
        outputs, extras = _outputs(call.plan, fields)
        result = PredictResult(
            outputs=outputs,
            usage={self.model: streamed.usage},
            model=streamed.model or self.model,
            latency_ms=(time.perf_counter() - started) * 1000,
            extras=extras,
        )
        yield StreamEvent(result=result)

    async def health(self) -> BackendHealth:
        """Healthy when a request could be made (the API key is there); makes no request."""
        details = {"kind": "openai", "model": self.model, "base_url": self.base_url}
        try:
            self.transport.api_key()
        except DspexError as exc:
            return BackendHealth(
                "unhealthy", reason=exc.message, details={**details, "code": exc.code}
            )
        return BackendHealth("healthy", details=details)

    async def aclose(self) -> None:
        """Close this event loop's connections and the sync helper's loop."""
        self._by_id, self._plans = {}, OrderedDict()
        await self.transport.aclose()


def _build_plan(signature: Signature, kind: PredictKind) -> _Plan:
    """The DSPy signature ``dspy.Predict`` or ``dspy.ChainOfThought`` would format with."""
    import dspy

    dspy_signature: Any = signature.to_dspy()
    declared = signature.output_names
    reasoning_extra = kind == "chain_of_thought" and _REASONING not in declared
    if reasoning_extra:
        # ChainOfThought's own extension of the signature (its reasoning field, placed first)
        dspy_signature = dspy.ChainOfThought(dspy_signature).predict.signature
    defaults = {
        name: info.default
        for name, info in dspy_signature.input_fields.items()
        if info.default is not PydanticUndefined
    }
    return _Plan(dspy_signature, declared, reasoning_extra, defaults)


def _parse(adapter: Any, signature: Any, reply: ChatReply) -> dict[str, Any]:
    """The adapter's parse of a reply; an empty one fails as in DSPy's adapter pipeline."""
    if not reply.content:
        from dspy.utils.exceptions import AdapterParseError

        raise AdapterParseError(
            adapter_name=type(adapter).__name__,
            signature=signature,
            lm_response=str(reply.content),
            message="The LM returned an empty or null response.",
        )
    fields: dict[str, Any] = adapter.parse(signature, reply.content)
    return fields


def _dspy_demos(request: PredictRequest) -> list[dict[str, Any]]:
    """The request's demos with values of DSPy's types (Image, History, …) as DSPy objects."""
    fields = (*request.signature.input_fields, *request.signature.output_fields)
    return [to_dspy_values(fields, demo) for demo in request.demos]


def _outputs(plan: _Plan, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    outputs = {
        name: _plain(from_dspy_values(fields[name])) for name in plan.declared if name in fields
    }
    extras = (
        {_REASONING: fields[_REASONING]} if plan.reasoning_extra and _REASONING in fields else {}
    )
    return outputs, extras


def _usage(counts: Mapping[str, Any]) -> Usage:
    prompt, completion = counts.get("prompt_tokens"), counts.get("completion_tokens")
    return Usage(
        prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else 0,
        completion if isinstance(completion, int) and not isinstance(completion, bool) else 0,
    )
