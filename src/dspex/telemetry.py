"""Telemetry: one event per execution and per module step, as OpenTelemetry spans and log lines.

:class:`Telemetry` is a hooks object (see :mod:`dspex.hooks`) plus two calls the runtime makes
around each execution. When ``opentelemetry`` is importable it emits an ``dspex.execute`` span per
execution with one ``dspex.module`` child span per module that ran (times taken from the run, so
the spans line up with the recorded steps); otherwise it emits no spans. Either way it writes
structured log lines through :mod:`logging`: ``dspex.execution`` at INFO per execution and
``dspex.step`` at DEBUG per step, each with a ``dspex`` dict in the record's ``extra``.

Spans go to whatever tracer provider the application configured (the OpenTelemetry API is a
no-op until one is); dspex never configures providers or exporters itself.

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider  # doctest: +SKIP
    >>> telemetry = Telemetry(tracer=TracerProvider().get_tracer("dspex"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspex.actions.models import ExecutionResult
    from dspex.engine.program import Program
    from dspex.engine.results import StepResult

__all__ = ["Telemetry", "otel_tracer"]

execution_log = logging.getLogger("dspex.execution")
step_log = logging.getLogger("dspex.step")


def otel_tracer() -> Any:
    """The ``dspex`` tracer of the global OpenTelemetry provider, or ``None`` without the API."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("dspex")


@dataclass(slots=True)
class _Open:
    span: Any
    run_start_ns: int


class Telemetry:
    """Emits spans (when OpenTelemetry is available) and log lines for executions and steps.

    Args:
        tracer: an OpenTelemetry tracer; default: the global provider's ``dspex`` tracer when
            ``opentelemetry`` is importable, else no spans.
        spans: set ``False`` to emit log lines only.
    """

    def __init__(self, tracer: Any = None, *, spans: bool = True) -> None:
        self._tracer = (tracer if tracer is not None else otel_tracer()) if spans else None
        self._open: dict[str, _Open] = {}

    @property
    def tracing(self) -> bool:
        """Whether spans are emitted."""
        return self._tracer is not None

    # -- around an execution (called by the runtime) ------------------------------------------

    def execution_started(self, *, execution_id: str, program: str, version: int) -> None:
        """An execution was recorded and is about to run."""
        if self._tracer is None:
            return
        span = self._tracer.start_span(
            "dspex.execute",
            attributes={
                "dspex.execution_id": execution_id,
                "dspex.program": program,
                "dspex.program_version": version,
            },
        )
        if not span.is_recording():
            # nothing records it (no provider configured, or sampled out): its module spans
            # would not be recorded either, so none is made and nothing is kept for it
            span.end()
            return
        self._open[execution_id] = _Open(span, time.time_ns())

    def execution_finished(self, result: ExecutionResult) -> None:
        """An execution ended and its record is final."""
        fields = {
            "execution_id": result.execution_id,
            "program": result.program,
            "program_version": result.program_version,
            "status": result.status,
            "duration_ms": result.duration_ms,
            "error_code": result.error.code if result.error else None,
            "attempts": result.attempts,
        }
        if execution_log.isEnabledFor(logging.INFO):
            execution_log.info(
                "execution %s %s program=%s v%d duration_ms=%s error=%s",
                result.execution_id,
                result.status,
                result.program,
                result.program_version,
                result.duration_ms,
                fields["error_code"],
                extra={"dspex": fields},
            )
        opened = self._open.pop(result.execution_id, None)
        if opened is None:
            return
        from opentelemetry import trace

        span = opened.span
        span.set_attribute("dspex.status", result.status)
        span.set_attribute("dspex.attempts", result.attempts)
        if result.duration_ms is not None:
            span.set_attribute("dspex.duration_ms", result.duration_ms)
        if result.error is not None:
            span.set_attribute("dspex.error_code", result.error.code)
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.error.message))
        else:
            span.set_status(trace.Status(trace.StatusCode.OK))
        span.end()

    # -- engine hooks -------------------------------------------------------------------------

    def before_run(
        self, *, run_id: str, program: Program, inputs: Mapping[str, Any], strategy: str
    ) -> None:
        opened = self._open.get(run_id)
        if opened is not None:
            # Step offsets are relative to the engine's run start, which is now.
            opened.run_start_ns = time.time_ns()

    def after_step(self, *, run_id: str, step: StepResult) -> None:
        if step_log.isEnabledFor(logging.DEBUG):
            step_log.debug(
                "step %s %s %s duration_ms=%s",
                run_id,
                step.name,
                step.status.value,
                step.duration_ms,
                extra={
                    "dspex": {
                        "execution_id": run_id,
                        "module": step.name,
                        "status": step.status.value,
                        "duration_ms": step.duration_ms,
                        "attempts": step.attempts,
                        "error_code": step.error_code,
                        "backend": step.backend,
                    }
                },
            )
        opened = self._open.get(run_id)
        if opened is None or self._tracer is None or step.started_ms is None:
            return
        from opentelemetry import trace

        start = opened.run_start_ns + int(step.started_ms * 1_000_000)
        end = opened.run_start_ns + int((step.ended_ms or step.started_ms) * 1_000_000)
        attributes: dict[str, Any] = {
            "dspex.module": step.name,
            "dspex.kind": step.kind,
            "dspex.status": step.status.value,
            "dspex.attempts": step.attempts,
        }
        if step.backend is not None:
            attributes["dspex.backend"] = step.backend
        if step.error_code is not None:
            attributes["dspex.error_code"] = step.error_code
        span = self._tracer.start_span(
            f"dspex.module {step.name}",
            context=trace.set_span_in_context(opened.span),
            start_time=start,
            attributes=attributes,
        )
        if step.error_code is not None and step.status.value == "failed":
            span.set_status(trace.Status(trace.StatusCode.ERROR, step.error_message or ""))
        span.end(end_time=end)
