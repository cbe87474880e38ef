"""What a run returns: one :class:`StepResult` per module and a :class:`RunResult` for the run.

Times are offsets in milliseconds from the start of the run, read from the event loop's clock
(so fake-time tests see exact numbers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dspex._slots import fast_frozen_init
from dspex.backends.base import BackendAttempt, LMExchange, Usage
from dspex.records import ExecutionStatus, StepStatus

__all__ = ["PREDICTOR_KIND", "RunError", "RunResult", "StepResult", "merge_usage"]

CHILDREN_ATTRIBUTE = "dspex_child_steps"
"""The attribute a failed ``dspy`` module call's exception carries its child steps on."""

PREDICTOR_KIND = "predictor"
"""The kind of a child step: one predictor call made inside a ``dspy`` module's own code."""


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class RunError:
    """Why a run (or one module) failed: the stable ``code``, a message and the module.

    ``retryable`` says whether running it again may succeed (:func:`dspex.errors.is_retryable`
    of the module's error), which a batch's item retries go by.
    """

    code: str
    message: str
    module: str | None = None
    retryable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "module": self.module}


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class StepResult:
    """How one module fared in one run, or one predictor call inside a ``dspy`` module.

    A predictor call made inside a ``dspy`` module's own code is a step too, one of its
    module's :attr:`children`: its name is ``<module>.<predictor name as named_predictors()
    gives it>`` (a dotted name, which no module of a program can have: analyses of the program
    graph leave it out), its kind :data:`PREDICTOR_KIND`, its attempt details the LM calls it
    made (on a plain backend; behind a coordinator group they are the module's own) and its
    usage is already counted in its module's.

    Attributes:
        name: the module name (``<module>.<predictor>`` for a child step).
        kind: the module kind (:data:`PREDICTOR_KIND` for a child step).
        status: ``completed``, ``failed``, ``skipped`` (a dependency failed) or ``cancelled``.
        error_code: the stable error code when failed (or why it was skipped/cancelled).
        error_message: the error message.
        started_ms: when it started, ms after the run started (``None`` if it never started).
        ended_ms: when it ended, ms after the run started.
        duration_ms: ``ended_ms - started_ms`` (0 when it never started); a child step's is
            measured on the monotonic clock of the thread that ran it.
        wait_ms: time spent waiting for resources before starting work.
        attempts: calls made (retries included).
        usage: token usage by model.
        outputs: the validated outputs when completed.
        backend: the backend used, for backend kinds.
        attempt_details: each backend attempt, when a coordinator group made them (its
            retries and failovers included); empty for a plain backend.
        children: the predictor calls made inside a ``dspy`` module, in start order.
        cache_hit: the response cache answered (no backend call, no tokens).
        cost_saved_usd: on a hit, what the cached response cost when it was made.
        recorded_inputs: the module's inputs as a trace records them (redacted, size
            limited; see :mod:`dspex.capture`), or ``None`` when inputs are not captured.
        recorded_outputs: its outputs as a trace records them, or ``None``.
        exchange: the last LM request and response as a trace records them: model, provider
            and finish reasons always, the messages and raw response (redacted, size limited)
            only with ``[capture] messages``; ``None`` when the backend reported none. Each of
            :attr:`attempt_details` carries its own the same way.
        attempt_times: when the module's own retry loop made several attempts, each one's
            ``(started_ms, ended_ms, error code)`` (``None`` for the one that answered);
            empty otherwise (the one attempt is the step).
    """

    name: str
    kind: str
    status: StepStatus
    error_code: str | None = None
    error_message: str | None = None
    started_ms: float | None = None
    ended_ms: float | None = None
    duration_ms: float = 0.0
    wait_ms: float = 0.0
    attempts: int = 0
    usage: Mapping[str, Usage] = field(default_factory=dict)
    outputs: Mapping[str, Any] | None = None
    backend: str | None = None
    attempt_details: tuple[BackendAttempt, ...] = ()
    children: tuple[StepResult, ...] = ()
    cache_hit: bool = False
    cost_saved_usd: float = 0.0
    recorded_inputs: dict[str, Any] | None = None
    recorded_outputs: dict[str, Any] | None = None
    exchange: LMExchange | None = None
    attempt_times: tuple[tuple[float, float, str | None], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view with stable keys."""
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status.value,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "started_ms": self.started_ms,
            "ended_ms": self.ended_ms,
            "duration_ms": self.duration_ms,
            "wait_ms": self.wait_ms,
            "attempts": self.attempts,
            "usage": {model: u.to_dict() for model, u in self.usage.items()},
            "outputs": dict(self.outputs) if self.outputs is not None else None,
            "backend": self.backend,
            "children": [child.to_dict() for child in self.children],
            "cache_hit": self.cache_hit,
            "cost_saved_usd": self.cost_saved_usd,
        }

    def shifted(self, ms: float) -> StepResult:
        """This step with its start and end ``ms`` later (how child steps get the run's clock)."""
        return replace(
            self,
            started_ms=None if self.started_ms is None else round(self.started_ms + ms, 3),
            ended_ms=None if self.ended_ms is None else round(self.ended_ms + ms, 3),
        )


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of :meth:`dspex.Engine.run`.

    Attributes:
        run_id: the run's id (given or generated).
        program: the program name.
        status: ``completed``, ``failed`` or ``cancelled``.
        outputs: the validated program outputs (empty unless completed).
        steps: one entry per module, in the plan's order.
        usage: token usage by model, summed over modules.
        duration_ms: wall time of the run (event-loop clock).
        error: why the run failed or was cancelled.
        strategy: the strategy the run used.
    """

    run_id: str
    program: str
    status: ExecutionStatus
    outputs: Mapping[str, Any]
    steps: tuple[StepResult, ...]
    usage: Mapping[str, Usage]
    duration_ms: float
    error: RunError | None = None
    strategy: str = "optimized"

    def step(self, name: str) -> StepResult:
        """The result of module ``name``.

        Raises:
            KeyError: no such module.
        """
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    @property
    def ok(self) -> bool:
        return self.status is ExecutionStatus.COMPLETED

    @property
    def total_usage(self) -> Usage:
        """Usage summed over every model."""
        total = Usage()
        for usage in self.usage.values():
            total = total + usage
        return total

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view with stable keys."""
        return {
            "run_id": self.run_id,
            "program": self.program,
            "status": self.status.value,
            "outputs": dict(self.outputs),
            "steps": [s.to_dict() for s in self.steps],
            "usage": {model: u.to_dict() for model, u in self.usage.items()},
            "duration_ms": self.duration_ms,
            "error": self.error.to_dict() if self.error else None,
            "strategy": self.strategy,
        }


def merge_usage(into: dict[str, Usage], more: Mapping[str, Usage]) -> None:
    """Add ``more`` to ``into`` model by model."""
    for model, usage in more.items():
        previous = into.get(model)
        into[model] = usage if previous is None else previous + usage
