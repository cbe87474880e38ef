"""The mock backend: answers any signature without a language model.

Outputs are type-correct and satisfy the fields' constraints (they come from
:mod:`dspex.signatures.samples`), and they are deterministic: the same signature, inputs, module
and seed always give the same outputs, in any process. Latency is an ``asyncio.sleep`` so fake
clocks (looptime) make it free in tests. Faults are injected deterministically by seed and call
count: retryable errors, permanent errors and hangs. A ``handler`` scripts outcomes call by call,
in the manner of httpx's ``MockTransport``.

Example:
    >>> backend = MockBackend(latency_ms=20, failure_rate=0.1, seed=7)
    >>> async def scripted(request: PredictRequest) -> dict[str, Any]:
    ...     raise RateLimitError("slow down", retry_after=1.0)
    >>> flaky = MockBackend(handler=scripted)
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dspex.backends.base import BackendHealth, PredictRequest, PredictResult, Usage
from dspex.errors import (
    BackendError,
    BackendUnavailableError,
    BadRequestError,
    DspexError,
    DspexTimeoutError,
    RateLimitError,
)
from dspex.signatures.samples import Sampler, compile_sampler
from dspex.signatures.types import Scalar

if TYPE_CHECKING:
    from dspex.signatures.signature import Signature

__all__ = ["MockBackend", "MockHandler"]

MockHandler = Callable[[PredictRequest], dict[str, Any] | Awaitable[dict[str, Any]]]

MODEL_NAME = "mock"
_WORDS_PER_TOKEN = 0.75  # the usual rule of thumb for English text
_PLAN_CACHE_LIMIT = 4096
_STR = Scalar("str")
# One encoder for every call: json.dumps with options builds a new encoder each time.
_INPUTS_ENCODER = json.JSONEncoder(sort_keys=True, default=repr, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class _Plan:
    """What answering one signature takes, computed once per signature."""

    text: str
    outputs: tuple[tuple[str, Sampler], ...]
    reasoning_is_text: bool
    # For outputs of plain scalars only (no list or dict a caller could mutate): answers drawn
    # once, picked by the per-call seed (as deterministic, much cheaper than drawing each call).
    answers: tuple[dict[str, Any], ...] = ()


class MockBackend:
    """A backend that needs no LM: deterministic, type-correct outputs and scripted faults.

    Args:
        name: the backend's name (in records, health and errors).
        latency_ms: how long each call takes; a request's ``config["mock_latency_ms"]`` overrides
            it per call (benchmarks give modules different durations this way).
        latency_jitter_ms: up to this much is added to each call's latency (deterministic).
        failure_rate: share of calls failing with a retryable error (unavailable or rate limited).
        permanent_failure_rate: share of calls failing with a non-retryable ``BadRequestError``.
        hang_rate: share of calls that never answer (until cancelled or the request times out).
        seed: seeds outputs, jitter and fault injection.
        handler: scripts each call: returns the outputs (or an awaitable of them) or raises. The
            faults above are still injected before the handler runs.

    Attributes:
        calls: how many calls were made.
        failures: how many calls raised.
        hangs: how many calls hung.
    """

    def __init__(
        self,
        name: str = "mock",
        *,
        latency_ms: float = 0.0,
        latency_jitter_ms: float = 0.0,
        failure_rate: float = 0.0,
        permanent_failure_rate: float = 0.0,
        hang_rate: float = 0.0,
        seed: int = 0,
        handler: MockHandler | None = None,
    ) -> None:
        rates = {
            "failure_rate": failure_rate,
            "permanent_failure_rate": permanent_failure_rate,
            "hang_rate": hang_rate,
        }
        for key, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {rate}")
        if sum(rates.values()) > 1.0:
            raise ValueError("failure_rate + permanent_failure_rate + hang_rate must be <= 1")
        if latency_ms < 0 or latency_jitter_ms < 0:
            raise ValueError("latencies must be >= 0")
        self.name = name
        self.latency_ms = latency_ms
        self.latency_jitter_ms = latency_jitter_ms
        self.failure_rate = failure_rate
        self.permanent_failure_rate = permanent_failure_rate
        self.hang_rate = hang_rate
        self.seed = seed
        self.handler = handler
        self.calls = 0
        self.failures = 0
        self.hangs = 0
        self.closed = False
        self._fault_rng = random.Random(seed)
        self._faulty = bool(failure_rate or permanent_failure_rate or hang_rate)
        self._plans: dict[int, tuple[Signature, _Plan]] = {}
        # One generator reseeded per call: building a Random costs more than seeding one, and
        # a call draws all its outputs before the next call (no await in between) can reseed it.
        self._output_rng = random.Random()
        self._seed_prefixes: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"MockBackend(name={self.name!r}, latency_ms={self.latency_ms}, seed={self.seed})"

    def cache_identity(self) -> dict[str, Any]:
        """What decides this backend's answers besides the call: its name and seed (a mock has
        no model; what the response cache keys on)."""
        return {"kind": "mock", "name": self.name, "seed": self.seed}

    # ------------------------------------------------------------------ Backend

    async def complete(self, request: PredictRequest) -> PredictResult:
        """Answer one predictor call.

        Raises:
            BackendUnavailableError: an injected retryable failure (503).
            RateLimitError: an injected retryable failure (429).
            BadRequestError: an injected permanent failure (400).
            DspexTimeoutError: the call took longer than ``request.timeout``.
            BackendError: the backend is closed, or the handler raised something that is not a
                :class:`~dspex.errors.DspexError`.
        """
        self.calls += 1
        if self.closed:
            self.failures += 1
            raise BackendError(f"backend {self.name!r} is closed", backend=self.name)
        if request.timeout is None:
            return await self._answer(request)
        try:
            async with asyncio.timeout(request.timeout):
                return await self._answer(request)
        except TimeoutError:
            self.failures += 1
            raise DspexTimeoutError(
                f"backend {self.name!r} did not answer within {request.timeout:g}s"
            ) from None

    async def health(self) -> BackendHealth:
        """Always healthy while open (a mock has nothing to be unhealthy about)."""
        details = {"calls": self.calls, "failures": self.failures, "hangs": self.hangs}
        if self.closed:
            return BackendHealth("unhealthy", "closed", details)
        return BackendHealth("healthy", "", details)

    async def aclose(self) -> None:
        """Refuse further calls."""
        self.closed = True

    # ------------------------------------------------------------------ answering

    async def _answer(self, request: PredictRequest) -> PredictResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        fault = self._fault_rng.random() if self._faulty else 1.0
        latency = request.config.get("mock_latency_ms", self.latency_ms)
        if self.latency_jitter_ms:
            latency += self._fault_rng.random() * self.latency_jitter_ms
        if latency > 0:
            await asyncio.sleep(latency / 1000.0)
        self._inject(fault)
        if fault < self.hang_rate:
            self.hangs += 1
            await loop.create_future()  # never resolved: only cancellation ends it
        extras: dict[str, Any] = {}
        if self.handler is not None:
            outputs = await self._run_handler(request)
        else:
            outputs = self.outputs_for(request)
            if request.kind == "chain_of_thought" and "reasoning" not in outputs:
                # Undeclared reasoning is not an output; it travels beside them, as with DSPy.
                extras["reasoning"] = _reasoning(request.inputs, outputs)
        return PredictResult(
            outputs=outputs,
            usage={MODEL_NAME: _usage(request.inputs, outputs)},
            model=MODEL_NAME,
            latency_ms=(loop.time() - started) * 1000.0,
            extras=extras,
        )

    def _inject(self, fault: float) -> None:
        """Raise the injected failure ``fault`` (a uniform draw) selects, if any."""
        edge = self.hang_rate
        if fault < edge:
            return  # the caller hangs
        edge += self.permanent_failure_rate
        if fault < edge:
            self.failures += 1
            raise BadRequestError("injected permanent failure", status=400, backend=self.name)
        edge += self.failure_rate
        if fault < edge:
            self.failures += 1
            # Split by the draw itself so the kind is as deterministic as the failure.
            if (edge - fault) < self.failure_rate / 2:
                raise RateLimitError(
                    "injected rate limit", status=429, retry_after=0.0, backend=self.name
                )
            raise BackendUnavailableError("injected unavailability", status=503, backend=self.name)

    async def _run_handler(self, request: PredictRequest) -> dict[str, Any]:
        assert self.handler is not None
        try:
            result = self.handler(request)
            if inspect.isawaitable(result):
                result = await result
        except DspexError:
            self.failures += 1
            raise
        except Exception as exc:
            self.failures += 1
            raise BackendError(
                f"mock handler raised {type(exc).__name__}: {exc}", backend=self.name
            ) from exc
        return dict(result)

    def outputs_for(self, request: PredictRequest) -> dict[str, Any]:
        """The deterministic outputs for ``request`` (what a handler-less call answers)."""
        plan = self._plan(request.signature)
        seed = self._output_seed(plan.text, request)
        if plan.answers:
            outputs = plan.answers[seed % len(plan.answers)].copy()
        else:
            rng = self._output_rng
            rng.seed(seed)
            outputs = {name: draw(rng) for name, draw in plan.outputs}
        if plan.reasoning_is_text and request.kind == "chain_of_thought":
            outputs["reasoning"] = _reasoning(request.inputs, outputs)
        return outputs

    def _output_seed(self, signature_text: str, request: PredictRequest) -> int:
        # hashlib, not hash(): str hashes are salted per process and outputs must be stable.
        try:
            inputs = orjson.dumps(request.inputs, default=repr, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # keys that are not strings
            inputs = _INPUTS_ENCODER.encode(request.inputs).encode()
        prefix = self._seed_prefixes.get((request.module, signature_text))
        if prefix is None:
            if len(self._seed_prefixes) >= _PLAN_CACHE_LIMIT:
                self._seed_prefixes.clear()
            prefix = f"{self.seed}\x1f{request.module}\x1f{signature_text}\x1f".encode()
            self._seed_prefixes[(request.module, signature_text)] = prefix
        return int.from_bytes(hashlib.blake2b(prefix + inputs, digest_size=8).digest(), "big")

    def _plan(self, signature: Signature) -> _Plan:
        entry = self._plans.get(id(signature))
        if entry is not None and entry[0] is signature:
            return entry[1]
        fields = signature.output_fields
        samplers = tuple((f.name, compile_sampler(f)) for f in fields)
        plan = _Plan(
            text=str(signature),
            outputs=samplers,
            reasoning_is_text=any(
                f.name == "reasoning" and f.type == Scalar("str") for f in fields
            ),
            answers=_answers(samplers, self.seed),
        )
        if len(self._plans) >= _PLAN_CACHE_LIMIT:
            self._plans.clear()
        # Keyed by identity (hashing a signature by value costs more than a mock call); the
        # entry keeps the signature alive so its id cannot be reused while cached.
        self._plans[id(signature)] = (signature, plan)
        return plan


_ANSWERS = 257  # a prime: seeds spread evenly over the answers


def _answers(
    samplers: tuple[tuple[str, Sampler], ...], seed: int | None
) -> tuple[dict[str, Any], ...]:
    """Answers drawn once for outputs that are all plain scalars (``()`` otherwise)."""
    rng = random.Random(f"{seed}\x1fanswers")
    answers: list[dict[str, Any]] = []
    for _ in range(_ANSWERS):
        answer = {name: draw(rng) for name, draw in samplers}
        if not all(v is None or isinstance(v, str | int | float) for v in answer.values()):
            return ()
        answers.append(answer)
    return tuple(answers)


def _reasoning(inputs: dict[str, Any], outputs: dict[str, Any]) -> str:
    given = ", ".join(sorted(inputs)) or "nothing"
    answer = ", ".join(k for k in outputs if k != "reasoning") or "the answer"
    return f"Looking at {given}, then working out {answer} step by step."


def _words(value: Any) -> int:
    if isinstance(value, str):
        return value.count(" ") + 1 if value else 0
    if isinstance(value, dict):
        # Field names count as words: a prompt spells them out.
        total = len(value)
        for item in value.values():
            total += _words(item)
        return total
    if isinstance(value, list | tuple):
        return sum(_words(v) for v in value)
    return 1


def _usage(inputs: dict[str, Any], outputs: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=int(_words(inputs) / _WORDS_PER_TOKEN) + 1,
        completion_tokens=int(_words(outputs) / _WORDS_PER_TOKEN) + 1,
    )
