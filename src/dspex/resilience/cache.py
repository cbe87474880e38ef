"""The response cache: validated LM responses, by exact request, shared through the store.

A ``predict`` or ``chain_of_thought`` module's call is answered from the cache when the same
request was answered before and its outputs passed the module's contract; only then is a
response stored (the engine stores it after validating it, so a response that breaks the
contract is never cached). Every process on the database shares the entries (SQLite or
PostgreSQL); each lives for the ``[cache] ttl``.

The key is the sha256 of the exact request: what the backend is (:func:`backend_identity`: the
model, endpoint, default parameters and prompt format; never a key), the module's signature
(instructions, fields, types, constraints), the call kind, its inputs, demos and per-call
``config``. Those are everything a backend turns into the messages it sends, so two calls with
one key send the same messages with the same parameters. A coordinator group's key names all its
members (whichever answers, the group answered).

In DESIGN §11's chain (cache → rate limit → retry/deadline → coordinator → transport) the cache
comes first: a hit takes no rate-limit turn, makes no attempt and opens no breaker. A hit is
recorded on its step (``cache_hit``, ``cost_saved_usd``: what the response cost when it was made)
with no tokens and no attempts.

Modes (:data:`~dspex._strategies.CacheMode`): ``off``; ``read_only`` (answer from the cache,
store nothing); ``read_write``. Which applies to a module call, first that says:

1. the run's (``--cache``, ``Runtime.execute(cache=…)``);
2. the module's ``cache:`` in the program spec;
3. its backend's ``[backends.NAME] cache``;
4. the operation's default: ``read_write`` for ``evaluate`` and ``optimize``, else
   ``[cache] mode`` (``off`` unless configured).

``kind: dspy`` modules run their own code and are not cached.

The engine's runner looks the cache up itself, before the retry loop and breakers. An
optimization's engine is the exception: its program's predictors change each call's demos and
instructions below the runner, so there the cache is a :class:`CachingBackend` right under them,
keyed on the request as sent (its mode defaults to ``read_write``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from dspex._strategies import CACHE_MODES, CacheMode
from dspex.backends.base import Backend, BackendHealth, PredictRequest, PredictResult, Usage
from dspex.errors import ErrorDetail, StorageError, ValidationError
from dspex.store.cache import CacheEntry

if TYPE_CHECKING:
    from dspex.backends.pricing import PriceTable
    from dspex.store.base import Store

__all__ = [
    "CachedResponse",
    "CachingBackend",
    "ResponseCache",
    "backend_identity",
    "check_mode",
    "jsonable",
    "request_key",
]

log = logging.getLogger("dspex.cache")


def check_mode(value: str | None) -> CacheMode | None:
    """``value`` as a cache mode (``None`` stays ``None``).

    Raises:
        ValidationError: not ``off``, ``read_only`` or ``read_write``.
    """
    if value is None:
        return None
    for mode in CACHE_MODES:
        if value == mode:
            return mode
    expected = ", ".join(CACHE_MODES)
    raise ValidationError(
        f"unknown cache mode {value!r} (use {expected})",
        [ErrorDetail("cache", "invalid", f"expected one of {expected}")],
    )


def jsonable(value: Any) -> Any:
    """A JSON-friendly form of a value that is not (for ``json.dumps(default=…)``): pydantic
    models as their JSON dump, enums as their value, sets sorted; anything else as its text."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=jsonable)


def backend_identity(backend: Backend) -> Any:
    """What a backend sends besides the call: its ``cache_identity()`` (model, endpoint,
    parameters, prompt format); a rate limiter's inner backend's; a coordinator group's members'
    and fallbacks'; else its class and name."""
    from dspex.resilience.coordinator import Coordinator
    from dspex.resilience.ratelimit import RateLimitedBackend

    if isinstance(backend, RateLimitedBackend):
        return backend_identity(backend.inner)
    if isinstance(backend, Coordinator):
        return {
            "group": [backend_identity(b) for b in backend.backends],
            "fallback": [backend_identity(b) for b in backend.context_window_fallback],
        }
    identity = getattr(backend, "cache_identity", None)
    if callable(identity):
        return identity()
    return {"class": type(backend).__qualname__, "name": backend.name}


def request_key(identity: Any, request: PredictRequest) -> str:
    """The cache key of ``request`` sent to a backend of ``identity`` (64 hex characters)."""
    text = _dumps(
        [
            identity,
            request.signature.to_dict(),
            request.kind,
            request.inputs,
            list(request.demos),
            request.config,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


class CachedResponse:
    """A stored response, ready to be validated again as the module's answer.

    Attributes:
        result: the outputs and extras as a :class:`PredictResult` (no usage: nothing was spent).
        cost_usd: what the response cost when it was made.
        model: the model that made it.
    """

    __slots__ = ("cost_usd", "model", "result")

    def __init__(self, result: PredictResult, cost_usd: float, model: str) -> None:
        self.result = result
        self.cost_usd = cost_usd
        self.model = model


class ResponseCache:
    """Looks up and stores validated responses in a :class:`~dspex.store.cache.CacheStore`.

    Args:
        store: where entries live (every process on the database shares them); its clock
            dates them.
        ttl: seconds an entry answers (``None``: forever).
        mode: the default mode of a run that names none (``[cache] mode``).
        backend_modes: each backend's own mode (``[backends.NAME] cache``), by name.
        prices: what a response's tokens cost, kept with it as the cost a hit saves.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float | None = 7 * 86_400.0,
        mode: CacheMode = "off",
        backend_modes: Mapping[str, CacheMode] | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.mode: CacheMode = mode
        self.backend_modes = dict(backend_modes or {})
        self.prices = prices
        self._identities: dict[int, tuple[Backend, str]] = {}

    def mode_for(
        self,
        backend: str,
        module: CacheMode | None,
        run: CacheMode | None,
        default: CacheMode | None = None,
    ) -> CacheMode:
        """The mode of one module call: the run's, else the module's, else its backend's, else
        ``default`` (the operation's), else :attr:`mode`."""
        if run is not None:
            return run
        if module is not None:
            return module
        configured = self.backend_modes.get(backend)
        if configured is not None:
            return configured
        return default if default is not None else self.mode

    def key(self, backend: Backend, request: PredictRequest) -> str:
        """The key of ``request`` sent to ``backend``."""
        known = self._identities.get(id(backend))
        if known is None or known[0] is not backend:
            known = self._identities[id(backend)] = (backend, _dumps(backend_identity(backend)))
        return request_key(known[1], request)

    async def lookup(self, key: str) -> CachedResponse | None:
        """The response stored under ``key``, if any and not expired (a store failure is a
        miss: the call goes to the backend)."""
        try:
            entry = await self.store.get_cached(key)
        except StorageError as exc:
            log.warning("response cache lookup failed, calling the backend: %s", exc)
            return None
        if entry is None:
            return None
        response = entry.response
        result = PredictResult(
            outputs=dict(response.get("outputs") or {}),
            model=entry.model,
            extras=dict(response.get("extras") or {}),
        )
        return CachedResponse(result, entry.cost_usd, entry.model)

    async def save(
        self,
        key: str,
        *,
        program: str,
        module: str,
        backend: str,
        outputs: Mapping[str, Any],
        extras: Mapping[str, Any],
        usage: Mapping[str, Usage],
        model: str | None = None,
    ) -> None:
        """Store a response whose ``outputs`` passed validation, with what the backend gave
        beyond them (``extras``), its ``usage`` and ``model`` (a store failure is logged: the
        answer stands, uncached)."""
        if model is None:
            model = next(iter(usage)) if len(usage) == 1 else backend
        response = json.loads(
            json.dumps(
                {
                    "outputs": dict(outputs),
                    "extras": dict(extras),
                    "usage": {m: u.to_dict() for m, u in usage.items()},
                },
                default=jsonable,
            )
        )
        cost = self.prices.cost(usage) if self.prices is not None and usage else 0.0
        entry = CacheEntry(
            key=key,
            program=program,
            module=module,
            backend=backend,
            model=model,
            response=response,
            cost_usd=cost,
            expires_at=(
                self.store.clock() + timedelta(seconds=self.ttl) if self.ttl is not None else None
            ),
        )
        try:
            await self.store.put_cached(entry)
        except StorageError as exc:
            log.warning("response cache write failed, the answer is not cached: %s", exc)


class CachingBackend:
    """``inner`` behind the response cache, for an engine whose runner does not look it up
    itself: an optimization's, whose program predictors set each call's demos and instructions
    below the runner, so the key is taken here on the request as it is sent.

    A hit answers with the stored outputs (no usage: nothing was spent); a miss is stored only
    when its outputs pass the request's signature (the caller validates them again as its
    answer). Health and closing go to ``inner``.

    Args:
        inner: the backend.
        cache: the response cache.
        program: the program whose modules call it (kept with each entry).
        mode_of: each module's mode, by module name.
        on_hit: called on each hit (an optimization counts them apart from backend calls).
    """

    def __init__(
        self,
        inner: Backend,
        cache: ResponseCache,
        *,
        program: str,
        mode_of: Callable[[str], CacheMode],
        on_hit: Callable[[], None] | None = None,
    ) -> None:
        self.name = inner.name
        self.inner = inner
        self.cache = cache
        self.program = program
        self.mode_of = mode_of
        self.on_hit = on_hit

    def __repr__(self) -> str:
        return f"CachingBackend({self.inner!r})"

    async def complete(self, request: PredictRequest) -> PredictResult:
        mode = self.mode_of(request.module)
        if mode == "off":
            return await self.inner.complete(request)
        key = self.cache.key(self.inner, request)
        hit = await self.cache.lookup(key)
        if hit is not None:
            if self.on_hit is not None:
                self.on_hit()
            return hit.result
        result = await self.inner.complete(request)
        if mode == "read_write":
            signature = request.signature
            raw = result.outputs
            try:
                outputs = signature.validate_outputs(
                    {k: raw[k] for k in signature.output_names if k in raw}
                )
            except ValidationError:
                return result  # breaks the contract: never stored
            await self.cache.save(
                key,
                program=self.program,
                module=request.module,
                backend=self.name,
                outputs=outputs,
                extras=result.extras,
                usage=result.usage,
                model=result.model,
            )
        return result

    async def health(self) -> BackendHealth:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()
