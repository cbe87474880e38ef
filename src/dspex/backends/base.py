"""The backend interface: what answers one predictor call.

A backend is small and async (``complete``, ``health``, ``aclose``), in the manner of an httpx
transport. ``mock`` answers without an LM; ``dspy`` runs a DSPy predictor with a ``dspy.LM``.
Providers' exceptions never leave a backend: they are translated into :mod:`dspex.errors` here at
the edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from dspex._slots import fast_frozen_init
from dspex.records import AttemptOutcome

if TYPE_CHECKING:
    from dspex.signatures.signature import Signature

__all__ = [
    "Backend",
    "BackendAttempt",
    "BackendHealth",
    "HealthStatus",
    "LMExchange",
    "PredictKind",
    "PredictRequest",
    "PredictResult",
    "Usage",
]

PredictKind = Literal["predict", "chain_of_thought"]
HealthStatus = Literal["healthy", "degraded", "unhealthy"]
"""A backend's, a health check's or a whole health report's status (best to worst)."""


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class PredictRequest:
    """One predictor call.

    Attributes:
        signature: the module's signature (inputs already validated and coerced).
        inputs: input values by field name.
        kind: ``predict`` or ``chain_of_thought`` (the latter adds a ``reasoning`` output).
        module: the name of the module making the call (for records and fault scripts).
        config: per-call LM settings (``temperature``, ``max_tokens``, …).
        timeout: seconds this one call may take, or ``None``.
        demos: few-shot examples (field values by name) shown before the inputs, as a
            ``dspy.Predict``'s ``demos``; a backend without an LM may ignore them.
    """

    signature: Signature
    inputs: dict[str, Any]
    kind: PredictKind = "predict"
    module: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    demos: Sequence[Mapping[str, Any]] = ()


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one model."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class LMExchange:
    """One LM request as sent and its response as received (what a trace records when
    ``[capture] messages`` is on; the backend only hands over what it already holds).

    Attributes:
        messages: the chat messages sent.
        response: the raw response (the decoded body, for an HTTP endpoint).
        model: the model asked for.
        provider: who serves it (``openai``, ``anthropic``, …), as OpenTelemetry's
            ``gen_ai.provider.name`` names it.
        finish_reasons: why generation stopped, per choice, when the response said.
    """

    messages: Sequence[Mapping[str, Any]]
    response: Any = None
    model: str | None = None
    provider: str | None = None
    finish_reasons: tuple[str, ...] = ()


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class BackendAttempt:
    """One call to one backend made while answering a request (a coordinator records these).

    Attributes:
        backend: the backend that was called.
        attempt: 1-based number of this attempt within the request (across backends).
        outcome: ``succeeded``, ``failed`` or ``cancelled``.
        started_at: wall-clock start (seconds since the epoch).
        ended_at: wall-clock end (seconds since the epoch).
        duration_ms: how long the attempt took, measured on the monotonic clock.
        error_code: the stable :mod:`dspex.errors` code of the failure, if it failed.
        error_message: the failure's message, if it failed.
        status: the provider's HTTP status, when there was one.
        retry_after: seconds the provider asked to wait, when it said.
        usage: token usage per model (only a successful attempt reports usage).
        module: the module that made the call, when known.
        group: the coordinator group that made the attempt.
        exchange: the LM request and response, when the backend reported them.
    """

    backend: str
    attempt: int
    outcome: AttemptOutcome
    started_at: float
    ended_at: float
    duration_ms: float
    error_code: str | None = None
    error_message: str | None = None
    status: int | None = None
    retry_after: float | None = None
    usage: dict[str, Usage] = field(default_factory=dict)
    module: str = ""
    group: str = ""
    exchange: LMExchange | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(u.prompt_tokens for u in self.usage.values())

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens for u in self.usage.values())


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class PredictResult:
    """What a backend answered.

    Attributes:
        outputs: output values by field name (validated by the caller, not the backend).
        usage: token usage per model name.
        model: the model that answered, when known.
        latency_ms: wall time of the call as the backend measured it.
        extras: what the backend produced beyond the declared outputs (for example the
            ``reasoning`` of a ``chain_of_thought`` call whose signature does not declare it).
        attempts: every backend attempt made for this answer, in order (filled in by a
            coordinator; empty when a plain backend answered directly).
        exchange: the LM request and response of the call that answered, when the backend
            has them (a recorded trace keeps them only with ``[capture] messages``).
    """

    outputs: dict[str, Any]
    usage: dict[str, Usage] = field(default_factory=dict)
    model: str | None = None
    latency_ms: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)
    attempts: tuple[BackendAttempt, ...] = ()
    exchange: LMExchange | None = None


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """A backend's own view of its health."""

    status: HealthStatus
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What the engine calls. Implementations raise only :class:`dspex.DspexError` subclasses."""

    name: str

    async def complete(self, request: PredictRequest) -> PredictResult: ...

    async def health(self) -> BackendHealth: ...

    async def aclose(self) -> None: ...
