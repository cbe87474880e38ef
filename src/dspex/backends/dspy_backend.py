"""The ``dspy`` backend: answer a predictor call with a DSPy module and a ``dspy.LM``.

Each call builds (once per signature and kind, then cached) a ``dspy.Predict`` or
``dspy.ChainOfThought`` over the signature's DSPy class, and runs it with DSPy's native async
path (``acall``) inside one ``dspy.context(lm=…, adapter=…, usage_tracker=…)``: settings are
bound per call, never globally with ``dspy.configure``. Running the module itself (not its
adapter directly) keeps everything DSPy does around a call: callbacks in ``dspy.settings``,
input defaults and warnings, module and LM histories, traces, streaming and decision outputs.

When no adapter is given to the backend or configured in DSPy (DSPy would build a default
``ChatAdapter``), the call uses :class:`~dspex.backends._dspy_adapter.FastChatAdapter`, which
sends the same messages and parses into the same values, for less work per call. An adapter given
or configured, a plain ``dspy.ChatAdapter()`` included, is used as given. Usage is counted in a
tracker of the call's own.

dspex owns retries, so an LM built from a model string has DSPy's own retries off
(``num_retries=0``) and its response cache off; a ready ``lm`` passed in is used as given. The
only repair DSPy still makes is its adapter fallback: when the ChatAdapter cannot parse an
answer, DSPy asks once more in JSON mode. Every provider, DSPy and transport exception is
translated by :func:`dspex.backends.errors_map.translate`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from dspex.backends._loop import own_task
from dspex.backends.base import (
    BackendHealth,
    LMExchange,
    PredictKind,
    PredictRequest,
    PredictResult,
    Usage,
)
from dspex.backends.errors_map import translate
from dspex.backends.streaming import TOKEN_SINK, stream_dspy
from dspex.errors import AuthenticationError, ConfigError, DspexError, DspexTimeoutError
from dspex.signatures.dspy_interop import from_dspy_values, to_dspy_values

if TYPE_CHECKING:
    from dspex.signatures.signature import Signature

__all__ = ["DspyBackend"]

_PREDICTOR_CACHE_SIZE = 256
_REASONING = "reasoning"


class DspyBackend:
    """A backend that runs DSPy predictors on a ``dspy.LM`` (any provider DSPy supports).

    Args:
        name: the backend's name (in errors, records and health).
        model: a DSPy/LiteLLM model string (``"openai/gpt-4o-mini"``); the LM is built on first
            use with ``num_retries=0`` and ``cache=False``.
        lm: a ready LM object (``dspy.LM``, ``dspy.utils.DummyLM``) instead of ``model``.
        api_base: the provider's base URL (with ``model``).
        api_key_env: the environment variable holding the API key, read when the LM is built;
            the key itself is never part of the backend's configuration.
        lm_kwargs: more keyword arguments for ``dspy.LM`` (``temperature``, ``max_tokens``, …).
        adapter: a DSPy adapter to use instead of DSPy's default (``ChatAdapter``).

    Raises:
        ConfigError: neither or both of ``model`` and ``lm`` were given.

    Example:
        >>> backend = DspyBackend(
        ...     "openai", model="openai/gpt-4o-mini", api_key_env="OPENAI_API_KEY"
        ... )
    """

    def __init__(
        self,
        name: str = "dspy",
        *,
        model: str | None = None,
        lm: Any = None,
        api_base: str | None = None,
        api_key_env: str | None = None,
        lm_kwargs: dict[str, Any] | None = None,
        adapter: Any = None,
    ) -> None:
        if (model is None) == (lm is None):
            raise ConfigError(f"backend {name!r}: give exactly one of model= and lm=")
        if lm is not None and (api_base or api_key_env or lm_kwargs):
            raise ConfigError(
                f"backend {name!r}: api_base, api_key_env and lm_kwargs apply only with model="
            )
        self.name = name
        self.model = model if model is not None else str(getattr(lm, "model", "unknown"))
        self._lm: Any = lm
        self._owns_lm = lm is None
        self._api_base = api_base
        self._api_key_env = api_key_env
        self._lm_kwargs = dict(lm_kwargs or {})
        self._adapter = adapter
        self._fast_adapter: Any = None
        self._predictors: OrderedDict[tuple[Any, PredictKind], Any] = OrderedDict()
        self._by_id: dict[tuple[int, PredictKind], tuple[Signature, Any]] = {}

    def __repr__(self) -> str:
        return f"DspyBackend(name={self.name!r}, model={self.model!r})"

    def cache_identity(self) -> dict[str, Any]:
        """What, besides the call itself, decides the request this backend sends: the model,
        its endpoint, the LM's settings and the adapter (what the response cache keys on)."""
        lm_settings = self._lm_kwargs if self._owns_lm else dict(getattr(self._lm, "kwargs", {}))
        return {
            "kind": "dspy",
            "model": self.model,
            "api_base": self._api_base,
            "lm": lm_settings,
            "adapter": type(self._adapter).__qualname__ if self._adapter is not None else None,
        }

    # --- the LM -------------------------------------------------------------------------------

    @property
    def lm(self) -> Any:
        """The LM this backend calls (built on first use): what a ``dspy`` module runs on.

        Raises:
            AuthenticationError: the API key's environment variable is not set.
            BackendError: the LM cannot be built.
        """
        return self._get_lm()

    def _get_lm(self) -> Any:
        if self._lm is None:
            self._lm = self._build_lm()
        return self._lm

    def _build_lm(self) -> Any:
        import dspy

        assert self.model is not None
        kwargs: dict[str, Any] = {**self._lm_kwargs}
        for reserved in ("num_retries", "cache", "api_key", "api_base"):
            if reserved in kwargs:
                raise ConfigError(
                    f"backend {self.name!r}: lm_kwargs may not set {reserved!r} "
                    "(retries and caching belong to dspex; keys come from api_key_env)"
                )
        if self._api_base is not None:
            kwargs["api_base"] = self._api_base
        if self._api_key_env is not None:
            key = os.environ.get(self._api_key_env)
            if not key:
                raise AuthenticationError(
                    f"environment variable {self._api_key_env} (the API key) is not set",
                    backend=self.name,
                )
            kwargs["api_key"] = key
        try:
            return dspy.LM(self.model, num_retries=0, cache=False, **kwargs)
        except DspexError:
            raise
        except Exception as exc:
            raise translate(exc, self.name) from exc

    # --- predictors ---------------------------------------------------------------------------

    def _predictor(self, signature: Signature, kind: PredictKind) -> Any:
        # Calls of one program pass the same signature object: found by identity, it is not
        # hashed (a signature hashes by value, which costs more than the rest of this lookup).
        seen = self._by_id.get((id(signature), kind))
        if seen is not None and seen[0] is signature:
            return seen[1]
        predictor, cached = self._predictor_by_value(signature, kind)
        if not cached:
            return predictor
        if len(self._by_id) >= _PREDICTOR_CACHE_SIZE:
            self._by_id.clear()
        # the entry keeps the signature alive, so its id cannot be reused while cached
        self._by_id[(id(signature), kind)] = (signature, predictor)
        return predictor

    def _predictor_by_value(self, signature: Signature, kind: PredictKind) -> tuple[Any, bool]:
        """The predictor for an equal signature and ``kind``, and whether it is cached."""
        import dspy

        cacheable = True
        try:
            key: tuple[Any, PredictKind] = (signature, kind)
            hash(key)
        except TypeError:  # an unhashable signature is simply not cached
            cacheable = False
            key = (id(signature), kind)
            self._predictors.pop(key, None)
        cached = self._predictors.get(key)
        if cached is not None:
            self._predictors.move_to_end(key)
            return cached, True
        dspy_signature: Any = signature.to_dspy()
        declares_reasoning = _REASONING in signature.output_names
        if kind == "chain_of_thought" and not declares_reasoning:
            predictor: Any = dspy.ChainOfThought(dspy_signature)
        else:
            # a declared reasoning field keeps its own type, so plain Predict asks for it
            predictor = dspy.Predict(dspy_signature)
        self._predictors[key] = predictor
        if len(self._predictors) > _PREDICTOR_CACHE_SIZE:
            self._predictors.popitem(last=False)
        return predictor, cacheable

    def _call_adapter(self) -> Any:
        """The adapter for a call: the given one, DSPy's configured one, or the fast default.

        Only where DSPy would build its own default ``ChatAdapter`` (none given, none configured
        with ``dspy.configure`` or ``dspy.context``) does
        :class:`~dspex.backends._dspy_adapter.FastChatAdapter` stand in, with the same messages
        for less work. An adapter given or configured is always used as given.
        """
        import dspy

        adapter = self._adapter if self._adapter is not None else dspy.settings.adapter
        if adapter is not None:
            return adapter
        if self._fast_adapter is None:
            from dspex.backends._dspy_adapter import FastChatAdapter

            self._fast_adapter = FastChatAdapter()
        return self._fast_adapter

    # --- Backend protocol ---------------------------------------------------------------------

    async def complete(self, request: PredictRequest) -> PredictResult:
        """Run one predictor call.

        Raises:
            DspexTimeoutError: ``request.timeout`` passed before the LM answered.
            BackendError: the provider failed (subclass says how; see ``errors_map``).
            ParseError: the answer could not be parsed into the output fields.
        """
        try:
            lm = self._get_lm()
            predictor = self._predictor(request.signature, request.kind)
        except DspexError:
            raise
        except Exception as exc:
            raise translate(exc, self.name) from exc
        sig = request.signature
        # values of DSPy's types (Image, History, …) travel as JSON; DSPy formats its objects
        call_kwargs: dict[str, Any] = to_dspy_values(sig.input_fields, request.inputs)
        if request.config:
            call_kwargs["config"] = dict(request.config)
        if request.demos:
            fields = (*sig.input_fields, *sig.output_fields)
            call_kwargs["demos"] = [to_dspy_values(fields, demo) for demo in request.demos]
        started = time.perf_counter()
        deadline = None if request.timeout is None else asyncio.timeout(request.timeout)
        # the default adapter leaves the messages it wrote and the completion it read here
        from dspex.backends._dspy_adapter import EXCHANGE

        exchange: list[Any] = [None, None]
        reset = EXCHANGE.set(exchange)
        try:
            if deadline is None:
                prediction, usage = await self._run(predictor, lm, call_kwargs, request.module)
            else:
                async with deadline:
                    prediction, usage = await self._run(predictor, lm, call_kwargs, request.module)
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                assert request.timeout is not None
                raise DspexTimeoutError(
                    f"{self.name}: no answer within {request.timeout:g}s"
                    + (f" (module {request.module})" if request.module else "")
                ) from exc
            raise translate(exc, self.name) from exc
        except DspexError:
            raise
        except Exception as exc:
            raise translate(exc, self.name) from exc
        finally:
            EXCHANGE.reset(reset)
        latency_ms = (time.perf_counter() - started) * 1000
        return self._result(request, prediction, usage, lm, latency_ms, exchange)

    async def _run(
        self, predictor: Any, lm: Any, call_kwargs: dict[str, Any], module: str = ""
    ) -> tuple[Any, Any]:
        """Run ``predictor`` on ``lm`` and return its prediction and the LM usage it caused.

        The call counts its usage in a tracker of its own, set in the same ``dspy.context`` as
        the LM and adapter (so DSPy does not open a second one): usage is counted even inside
        an enclosing ``dspy.track_usage()``, which receives the same entries when the call ends.

        In a streaming run that wants ``module``'s tokens, the predictor runs under
        ``dspy.streamify`` with a stream listener per output field
        (:func:`~dspex.backends.streaming.stream_dspy`); DSPy's listeners read DSPy's own
        adapters, so the plain ``ChatAdapter`` stands in for the fast one there.
        """
        import dspy
        from dspy.utils.usage_tracker import UsageTracker

        tracker = UsageTracker()
        parent = dspy.settings.usage_tracker
        sink = TOKEN_SINK.get()
        streaming = sink is not None and sink.wants(module)
        adapter = self._call_adapter()
        if streaming and adapter is self._fast_adapter:
            adapter = dspy.ChatAdapter()
        try:
            with dspy.context(lm=lm, adapter=adapter, track_usage=True, usage_tracker=tracker):
                if sink is not None and streaming:
                    sink.begin(module)
                    prediction = await stream_dspy(
                        predictor,
                        call_kwargs,
                        None,
                        lambda field, text: sink.token(module, field, text),
                        is_async=True,
                    )
                else:
                    # a task of its own: each of the call's wake-ups (about eight) resumes
                    # DSPy's frames only, not the engine's and batch runner's above this one
                    prediction = await own_task(predictor.acall(**call_kwargs))
        finally:
            if parent is not None:
                for model, entries in tracker.usage_data.items():
                    parent.usage_data[model].extend(entries)
        return prediction, tracker.get_total_tokens()

    def _result(
        self,
        request: PredictRequest,
        prediction: Any,
        raw_usage: Any,
        lm: Any,
        latency_ms: float,
        exchange: list[Any],
    ) -> PredictResult:
        declared = [f.name for f in request.signature.output_fields]
        outputs = {
            name: _plain(from_dspy_values(prediction[name]))
            for name in declared
            if name in prediction
        }
        extras: dict[str, Any] = {}
        if _REASONING not in declared and _REASONING in prediction:
            extras[_REASONING] = prediction[_REASONING]
        model = str(getattr(lm, "model", self.model))
        messages, completion = exchange
        return PredictResult(
            outputs=outputs,
            usage=_usage(raw_usage),
            model=model,
            latency_ms=latency_ms,
            extras=extras,
            # what the default adapter wrote and read (another adapter reports nothing)
            exchange=LMExchange(
                messages=messages,
                response=completion,
                model=model,
                provider=model.split("/", 1)[0] if "/" in model else None,
            )
            if messages is not None
            else None,
        )

    async def health(self) -> BackendHealth:
        """Healthy when the LM can be built; makes no LM call."""
        try:
            lm = self._get_lm()
        except DspexError as exc:
            return BackendHealth("unhealthy", reason=exc.message, details={"code": exc.code})
        return BackendHealth(
            "healthy",
            details={"model": str(getattr(lm, "model", self.model)), "kind": "dspy"},
        )

    async def aclose(self) -> None:
        """Close the LM's connection pools when this backend built the LM."""
        lm, self._predictors, self._by_id = self._lm, OrderedDict(), {}
        self._fast_adapter = None
        if lm is None or not self._owns_lm:
            return
        self._lm = None
        close = getattr(lm, "aclose", None)
        if callable(close):
            await close()


def _plain(value: Any) -> Any:
    """Pydantic models as dicts (recursively), so outputs are plain JSON-like data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(raw: Any) -> dict[str, Usage]:
    if not isinstance(raw, Mapping):
        return {}
    usage: dict[str, Usage] = {}
    for model, counts in raw.items():
        if isinstance(counts, Mapping):
            usage[str(model)] = Usage(
                prompt_tokens=_count(counts.get("prompt_tokens")),
                completion_tokens=_count(counts.get("completion_tokens")),
            )
    return usage
