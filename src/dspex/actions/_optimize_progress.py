"""An optimization run's bookkeeping: what it cost (program runs, LM calls, usage), its
progress events and its trials' public view. See :mod:`dspex.actions.optimize`."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from dspex.backends.base import Usage
from dspex.engine.dspy_program import LM_KINDS, in_program_call

if TYPE_CHECKING:
    from dspex.engine.results import RunResult
    from dspex.records import OptimizationTrial

__all__ = [
    "CANDIDATE",
    "Counter",
    "OptimizationCallback",
    "OptimizationEvent",
    "Progress",
    "Stopped",
    "TrialInfo",
    "lm_callback",
    "merged_stats",
    "trial_info",
]

log = logging.getLogger("dspex.optimize")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrialInfo(_Model):
    """One candidate the optimizer scored (0 is the starting version)."""

    number: int
    score: float | None
    detail: dict[str, Any]


@dataclass
class Counter:
    """What a run cost: program runs, LM calls and usage (from runs, or from DSPy's callbacks
    for a ``dspy`` module, which makes its own LM calls)."""

    program_calls: int = 0
    failed_calls: int = 0
    lm_calls: int = 0
    failed_lm_calls: int = 0
    usage: dict[str, Usage] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_change: Callable[[], None] | None = None
    """Called (outside the lock) after each counted call: progress events."""

    def on_run(self, result: RunResult) -> None:
        with self.lock:
            self.program_calls += 1
            self.failed_calls += int(result.status.value != "completed")
            for step in result.steps:
                if step.kind in LM_KINDS:
                    self.lm_calls += step.attempts
                    self.failed_lm_calls += step.attempts - int(step.status.value == "completed")
            self._add(result.usage)
        self._changed()

    def on_lm(self, failed: bool, usage: Mapping[str, Usage]) -> None:
        with self.lock:
            self.lm_calls += 1
            self.failed_lm_calls += int(failed)
            self._add(usage)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _add(self, usage: Mapping[str, Usage]) -> None:
        for model, counts in usage.items():
            self.usage[model] = self.usage.get(model, Usage()) + counts

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "program_calls": self.program_calls,
                "failed_calls": self.failed_calls,
                "lm_calls": self.lm_calls,
                "failed_lm_calls": self.failed_lm_calls,
                "usage": {m: u.to_dict() for m, u in sorted(self.usage.items())},
            }


def lm_callback(counter: Counter) -> Any:
    """A DSPy callback counting each LM call made outside a graph program's LM modules: a
    ``dspy`` module's own, and the optimizer's (MIPROv2's prompt model, GEPA's reflection LM)."""
    from dspy.utils.callback import BaseCallback

    class _LMCalls(BaseCallback):  # type: ignore[misc]  # dspy is untyped
        def on_lm_end(
            self, call_id: str, outputs: Any, exception: BaseException | None = None
        ) -> None:
            if not in_program_call():  # a program's LM call is counted by its run
                counter.on_lm(exception is not None, {})

    return _LMCalls()


class OptimizationEvent(_Model):
    """A progress event of an optimization run.

    Attributes:
        optimization_id: the run.
        phase: ``started`` (the run, or a resumed run, holds its lease), ``baseline`` (the
            starting version was scored), ``compiling`` (the optimizer runs), ``candidate`` (a
            candidate was scored and recorded), ``calls`` (program and LM calls so far, at most
            one such event every half second), ``result`` (the result was scored).
        trial: the trial recorded (``baseline``, ``candidate``, ``result``).
        program_calls: program runs so far in this attempt; ``lm_calls`` LM calls.
        elapsed_s: seconds since this attempt started.
    """

    optimization_id: str
    phase: Literal["started", "baseline", "compiling", "candidate", "calls", "result"]
    trial: TrialInfo | None = None
    program_calls: int
    lm_calls: int
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON data (a Server-Sent Event's ``data``)."""
        return self.model_dump(mode="json")


OptimizationCallback = Callable[[OptimizationEvent], None]

_CALLS_EVERY = 0.5  # seconds between two ``calls`` events


class Stopped(Exception):
    """Raised in the optimizer's thread once its run was cancelled: its next program call or
    trial stops it (a thread cannot be cancelled from outside)."""


class Progress:
    """Emits a run's events on the event loop, from the loop or the optimizer's thread."""

    def __init__(
        self,
        optimization_id: str,
        counter: Counter,
        callback: OptimizationCallback | None,
        loop: asyncio.AbstractEventLoop,
        *,
        calls_every: float = _CALLS_EVERY,
    ) -> None:
        self._id = optimization_id
        self._counter = counter
        self._callback = callback
        self._loop = loop
        self._t0 = time.monotonic()
        self._last_calls = self._t0
        self._calls_every = calls_every
        self.stopped = threading.Event()
        counter.on_change = self._calls

    def check(self) -> None:
        """Raise :class:`Stopped` once the run was cancelled."""
        if self.stopped.is_set():
            raise Stopped("the optimization was cancelled")

    def emit(self, phase: str, trial: OptimizationTrial | None = None) -> None:
        if self._callback is None:
            return
        with self._counter.lock:
            program_calls, lm_calls = self._counter.program_calls, self._counter.lm_calls
        event = OptimizationEvent(
            optimization_id=self._id,
            phase=phase,
            trial=None if trial is None else trial_info(trial),
            program_calls=program_calls,
            lm_calls=lm_calls,
            elapsed_s=round(time.monotonic() - self._t0, 3),
        )
        if _on_loop(self._loop):
            self._deliver(event)
        else:
            self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: OptimizationEvent) -> None:
        assert self._callback is not None
        try:
            self._callback(event)
        except Exception:
            log.exception("an optimization progress callback raised; the run goes on")

    def _calls(self) -> None:
        self.check()
        now = time.monotonic()
        if now - self._last_calls >= self._calls_every:
            self._last_calls = now
            self.emit("calls")


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def trial_info(trial: OptimizationTrial) -> TrialInfo:
    detail = {k: v for k, v in trial.detail.items() if k != CANDIDATE}
    return TrialInfo(number=trial.number, score=trial.score, detail=detail)


CANDIDATE = "candidate_spec"
"""A ``bootstrap_random_search`` trial's key holding the candidate (the program spec it makes):
what a resumed run loads instead of building and scoring it again. Not shown in trials."""


def merged_stats(previous: Mapping[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """This attempt's stats plus those an earlier attempt recorded when it ended."""
    out = dict(now)
    for key in ("program_calls", "failed_calls", "lm_calls", "failed_lm_calls"):
        out[key] = int(now.get(key, 0)) + int(previous.get(key, 0))
    usage: dict[str, dict[str, Any]] = {
        m: dict(u) for m, u in (previous.get("usage") or {}).items()
    }
    for model, counts in (now.get("usage") or {}).items():
        into = usage.setdefault(model, {})
        for key, value in counts.items():
            into[key] = into.get(key, 0) + value
    out["usage"] = dict(sorted(usage.items()))
    return out
