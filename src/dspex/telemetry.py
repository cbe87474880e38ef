"""Telemetry: OpenTelemetry spans per execution, module step and LM attempt, and log lines.

:class:`Telemetry` is a hooks object (see :mod:`dspex.hooks`) plus calls the runtime makes
around each execution. When ``opentelemetry`` is importable it emits, per execution:

- a ``dspex.execution`` span (program, version, execution id, status, attempts); a batch item's
  run gets one too (opened and ended by the engine run itself, with the item's execution id);
- a ``dspex.module NAME`` child per module that ran (times taken from the run, so the spans line
  up with the recorded steps), and one per predictor call inside a ``dspy`` module
  (``dspex.module NAME.PREDICTOR``, a child of its module's span);
- a ``chat MODEL`` client span per LM attempt, a child of the module that made it, following
  OpenTelemetry's GenAI semantic conventions: ``gen_ai.operation.name = "chat"``,
  ``gen_ai.request.model``, ``gen_ai.provider.name`` (and the older ``gen_ai.system``),
  ``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.response.finish_reasons`` when the
  response said, ``error.type`` and an error status on a failed attempt. With
  ``[capture] messages`` on, ``gen_ai.input.messages``/``gen_ai.output.messages`` carry the
  recorded (redacted, size limited) messages and response as JSON.

Every value a span carries was redacted by the run's :class:`~dspex.capture.Capture` before it
got here: spans never see a ``sensitive`` field's value.

Where spans go: a tracer given to :class:`Telemetry`; else the application's global tracer
provider when it set one; else, when the ``OTEL_*`` environment asks for an exporter
(``OTEL_TRACES_EXPORTER``, or an ``OTEL_EXPORTER_OTLP_ENDPOINT``/``..._TRACES_ENDPOINT``) and
the SDK is installed (``pip install 'dspex[otel]'``, plus the exporter: for OTLP,
``opentelemetry-exporter-otlp-proto-http`` or ``-grpc``), a tracer provider of this object's own,
built by the SDK's standard environment handling (exporters by their entry-point names,
``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``,
each exporter's ``OTEL_EXPORTER_OTLP_*``), flushed and shut down by :meth:`Telemetry.close`.
dspex never installs a global provider: the process's OpenTelemetry state stays the
application's.

Either way it writes structured log lines through :mod:`logging`: ``dspex.execution`` at INFO
per execution and ``dspex.step`` at DEBUG per step, each with a ``dspex`` dict in the record's
``extra``.

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider  # doctest: +SKIP
    >>> telemetry = Telemetry(tracer=TracerProvider().get_tracer("dspex"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigError, DspexError

if TYPE_CHECKING:
    from dspex.actions.models import ExecutionResult
    from dspex.backends.base import BackendAttempt, LMExchange
    from dspex.engine.program import Program
    from dspex.engine.results import RunResult, StepResult

__all__ = ["Telemetry", "otel_tracer", "tracer_provider_from_env"]

execution_log = logging.getLogger("dspex.execution")
step_log = logging.getLogger("dspex.step")

_EXPORTER_GROUP = "opentelemetry_traces_exporter"
_LM_KINDS = frozenset({"predict", "chain_of_thought", "predictor"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def otel_tracer() -> Any:
    """The ``dspex`` tracer of the global OpenTelemetry provider, or ``None`` without the API."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("dspex")


def _global_provider_set() -> bool:
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def tracer_provider_from_env(env: Mapping[str, str] | None = None) -> Any:
    """A tracer provider exporting where the ``OTEL_*`` environment says, or ``None``.

    ``None`` when the environment asks for no exporter (no ``OTEL_TRACES_EXPORTER`` and no
    OTLP endpoint, ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``) or the
    OpenTelemetry SDK is not installed. Exporters are found by their entry-point names, as the
    SDK's own configuration finds them (``otlp``, ``otlp_proto_http``, ``otlp_proto_grpc``,
    ``console``, …; ``otlp`` falls back to ``otlp_proto_http`` when only that one is
    installed); each reads its own ``OTEL_EXPORTER_*`` variables, and the SDK reads
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_BSP_*``
    from the process environment (``service.name`` defaults to ``dspex``). The provider is not
    made global.

    Raises:
        ConfigError: ``OTEL_TRACES_EXPORTER`` names an exporter that is not installed.
    """
    environ = os.environ if env is None else env
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() not in _FALSE:
        return None
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return None
    exporters = [_exporter(name) for name in names]
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "dspex"}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str) -> Any:
    found = {e.name: e for e in entry_points(group=_EXPORTER_GROUP)}
    if name == "otlp" and name not in found and "otlp_proto_http" in found:
        name = "otlp_proto_http"
    entry = found.get(name)
    if entry is None:
        known = ", ".join(sorted(found)) or "none"
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed (installed: {known});"
            " for OTLP: pip install 'dspex[otel]' opentelemetry-exporter-otlp-proto-http"
        )
    return entry.load()()


@dataclass(slots=True)
class _Open:
    span: Any
    run_start_ns: int
    own: bool = False  # opened by the engine run itself (a batch item), ended with it


class Telemetry:
    """Emits spans (when OpenTelemetry is available) and log lines for executions and steps.

    Args:
        tracer: an OpenTelemetry tracer; default: the global provider's ``dspex`` tracer when
            the application set a provider, else one of :func:`tracer_provider_from_env`'s
            when the ``OTEL_*`` environment asks for an exporter, else the global (no-op until
            set) provider's; no spans without ``opentelemetry``.
        spans: set ``False`` to emit log lines only.
        env: the environment to read ``OTEL_*`` from (default ``os.environ``).

    Raises:
        ConfigError: ``OTEL_TRACES_EXPORTER`` names an exporter that is not installed.
    """

    def __init__(
        self, tracer: Any = None, *, spans: bool = True, env: Mapping[str, str] | None = None
    ) -> None:
        self._provider: Any = None
        # the global provider's tracer: a no-op until the application sets a provider
        self._global = False
        if spans and tracer is None:
            tracer = otel_tracer()
            self._global = tracer is not None
            if tracer is not None and not _global_provider_set():
                self._provider = tracer_provider_from_env(env)
                if self._provider is not None:
                    tracer = self._provider.get_tracer("dspex")
                    self._global = False
        self._tracer = tracer if spans else None
        self._open: dict[str, _Open] = {}
        # executions whose span nothing records: their runs get no span of their own either
        self._unrecorded: set[str] = set()

    @property
    def tracing(self) -> bool:
        """Whether spans are emitted."""
        return self._tracer is not None

    def close(self) -> None:
        """Flush and shut down the tracer provider this object built from the environment (a
        given tracer or the global provider is the application's to shut down)."""
        provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown()

    # -- around an execution (called by the runtime) ------------------------------------------

    def execution_started(self, *, execution_id: str, program: str, version: int) -> None:
        """An execution was recorded and is about to run."""
        if self._tracer is None:
            return
        span = self._tracer.start_span(
            "dspex.execution",
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
            self._unrecorded.add(execution_id)
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
        self._unrecorded.discard(result.execution_id)
        opened = self._open.pop(result.execution_id, None)
        if opened is None or opened.own:
            return
        span = opened.span
        span.set_attribute("dspex.attempts", result.attempts)
        _end(span, str(result.status), result.duration_ms, result.error)

    def execution_refused(self, execution_id: str, error: DspexError | None) -> None:
        """An execution announced by :meth:`execution_started` was never recorded (the store
        refused its record, which is written while the run starts): its span ends with why."""
        self._unrecorded.discard(execution_id)
        opened = self._open.pop(execution_id, None)
        if opened is None or opened.own:
            return
        _end(opened.span, "refused", None, error)

    # -- engine hooks -------------------------------------------------------------------------

    def before_run(
        self, *, run_id: str, program: Program, inputs: Mapping[str, Any], strategy: str
    ) -> None:
        opened = self._open.get(run_id)
        if opened is not None:
            # Step offsets are relative to the engine's run start, which is now.
            opened.run_start_ns = time.time_ns()
        elif (
            self._tracer is not None
            and run_id not in self._unrecorded
            and not (self._global and not _global_provider_set())
        ):
            # a run nobody announced (a batch item, a bare engine run): its own execution span
            span = self._tracer.start_span(
                "dspex.execution",
                attributes={
                    "dspex.execution_id": run_id,
                    "dspex.program": program.name,
                    "dspex.strategy": strategy,
                },
            )
            if span.is_recording():
                self._open[run_id] = _Open(span, time.time_ns(), own=True)
            else:
                span.end()

    def after_run(self, *, run_id: str, result: RunResult) -> None:
        opened = self._open.get(run_id)
        if opened is None or not opened.own:
            return
        del self._open[run_id]
        _end(opened.span, result.status.value, result.duration_ms, result.error)

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
        self._module_span(opened.span, opened.run_start_ns, step)

    # -- spans --------------------------------------------------------------------------------

    def _module_span(self, parent: Any, run_start_ns: int, step: StepResult) -> None:
        from opentelemetry import trace

        tracer = self._tracer
        assert tracer is not None
        assert step.started_ms is not None
        start = run_start_ns + int(step.started_ms * 1_000_000)
        end = run_start_ns + int((step.ended_ms or step.started_ms) * 1_000_000)
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
        span = tracer.start_span(
            f"dspex.module {step.name}",
            context=trace.set_span_in_context(parent),
            start_time=start,
            attributes=attributes,
        )
        if step.error_code is not None and step.status.value == "failed":
            span.set_attribute("error.type", step.error_code)
            span.set_status(trace.Status(trace.StatusCode.ERROR, step.error_message or ""))
        for child in step.children:
            if child.started_ms is not None:
                self._module_span(span, run_start_ns, child)
        for attempt in _lm_attempts(step, run_start_ns):
            self._lm_span(span, attempt)
        span.end(end_time=end)

    def _lm_span(self, parent: Any, attempt: _LMAttempt) -> None:
        from opentelemetry import trace

        tracer = self._tracer
        assert tracer is not None
        exchange = attempt.exchange
        model = exchange.model if exchange is not None and exchange.model else attempt.model
        provider = exchange.provider if exchange is not None else None
        if provider is None and model is not None and "/" in model:
            provider = model.split("/", 1)[0]
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": attempt.input_tokens,
            "gen_ai.usage.output_tokens": attempt.output_tokens,
            "dspex.backend": attempt.backend,
            "dspex.attempt": attempt.number,
        }
        if model is not None:
            attributes["gen_ai.request.model"] = model
        if provider is not None:
            attributes["gen_ai.provider.name"] = provider
            attributes["gen_ai.system"] = provider
        if exchange is not None:
            if exchange.finish_reasons:
                attributes["gen_ai.response.finish_reasons"] = list(exchange.finish_reasons)
            if exchange.messages:
                attributes["gen_ai.input.messages"] = _json(list(exchange.messages))
            if exchange.response is not None:
                attributes["gen_ai.output.messages"] = _json(exchange.response)
        if attempt.error_code is not None:
            attributes["error.type"] = attempt.error_code
        span = tracer.start_span(
            f"chat {model}" if model is not None else "chat",
            context=trace.set_span_in_context(parent),
            kind=trace.SpanKind.CLIENT,
            start_time=attempt.start_ns,
            attributes=attributes,
        )
        if attempt.error_code is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, attempt.error_code))
        span.end(end_time=attempt.end_ns)


@dataclass(slots=True)
class _LMAttempt:
    number: int
    backend: str
    start_ns: int
    end_ns: int
    error_code: str | None
    input_tokens: int
    output_tokens: int
    model: str | None
    exchange: LMExchange | None


def _lm_attempts(step: StepResult, run_start_ns: int) -> Iterator[_LMAttempt]:
    """The LM calls a step made: each backend attempt a coordinator group or a ``dspy``
    module's predictor reported, else the module's own attempts on its backend."""
    if step.attempt_details:
        for info in step.attempt_details:
            yield _from_detail(info)
        return
    if step.kind not in _LM_KINDS or step.backend is None or step.attempts <= 0:
        return
    if step.started_ms is None:
        return
    # one backend made every attempt: the model the answer names is the one each asked
    models = list(step.usage)
    model = step.exchange.model if step.exchange is not None else None
    if model is None and len(models) == 1:
        model = models[0]
    prompt = sum(u.prompt_tokens for u in step.usage.values())
    completion = sum(u.completion_tokens for u in step.usage.values())
    ended_ms = step.ended_ms if step.ended_ms is not None else step.started_ms
    failed = step.status.value != "completed"
    times = step.attempt_times
    if len(times) != step.attempts:  # one attempt (the step), or untimed retries: the last
        times = ((step.started_ms, ended_ms, step.error_code if failed else None),)
    for index, (started, ended, code) in enumerate(times):
        last = index == len(times) - 1
        yield _LMAttempt(
            number=step.attempts - len(times) + index + 1,
            backend=step.backend,
            start_ns=run_start_ns + int(started * 1_000_000),
            end_ns=run_start_ns + int(ended * 1_000_000),
            error_code=(step.error_code if failed else None) if last else code,
            input_tokens=prompt if last else 0,
            output_tokens=completion if last else 0,
            model=model,
            exchange=step.exchange if last else None,
        )


def _from_detail(info: BackendAttempt) -> _LMAttempt:
    models = list(info.usage)
    return _LMAttempt(
        number=info.attempt,
        backend=info.backend,
        start_ns=int(info.started_at * 1_000_000_000),
        end_ns=int(info.ended_at * 1_000_000_000),
        error_code=info.error_code,
        input_tokens=info.prompt_tokens,
        output_tokens=info.completion_tokens,
        model=models[0] if len(models) == 1 else None,
        exchange=info.exchange,
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _end(span: Any, status: str, duration_ms: float | None, error: Any) -> None:
    """End a run's span with its status, duration and error (``code``/``message``), if any."""
    from opentelemetry import trace

    span.set_attribute("dspex.status", status)
    if duration_ms is not None:
        span.set_attribute("dspex.duration_ms", duration_ms)
    if error is not None:
        span.set_attribute("dspex.error_code", error.code)
        span.set_attribute("error.type", error.code)
        span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
    else:
        span.set_status(trace.Status(trace.StatusCode.OK))
    span.end()
