"""Telemetry: an OpenTelemetry span per execution with a child per module, and log lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tests.runtime._support import DIAMOND, QA, make_runtime, ready

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.errors import BadRequestError, StorageError
from dspex.store import MemoryStore
from dspex.telemetry import Telemetry, otel_tracer


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Telemetry:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(tracer=provider.get_tracer("dspex-test"))


@pytest.mark.looptime
async def test_each_execution_is_a_span_with_a_child_per_module(
    exporter: InMemorySpanExporter, telemetry: Telemetry
) -> None:
    async with make_runtime(MemoryStore(), telemetry=telemetry) as rt:
        await ready(rt, DIAMOND)
        result = await rt.execute("diamond", {"q": "go"})
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "dspex.execution"]
    children = [s for s in spans if s.name.startswith("dspex.module ")]
    assert sorted(s.name for s in children) == [f"dspex.module {m}" for m in "abcd"]
    assert root.attributes is not None
    assert root.attributes["dspex.execution_id"] == result.execution_id
    assert root.attributes["dspex.program"] == "diamond"
    assert root.attributes["dspex.status"] == "completed"
    assert root.status.status_code is StatusCode.OK
    assert root.context is not None
    assert all(c.parent is not None and c.parent.span_id == root.context.span_id for c in children)
    b = next(c for c in children if c.name == "dspex.module b")
    assert b.start_time is not None
    assert b.end_time is not None
    assert b.end_time - b.start_time == 300_000_000  # 300 ms of (fake) run time


async def test_a_failed_execution_span_has_an_error_status(
    exporter: InMemorySpanExporter, telemetry: Telemetry
) -> None:
    def refuse(request: PredictRequest) -> dict[str, Any]:
        raise BadRequestError("no")

    backends = {"default": MockBackend(handler=refuse)}
    async with make_runtime(MemoryStore(), backends, telemetry=telemetry) as rt:
        await ready(rt, QA)
        await rt.execute("qa", {"question": "why?"})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["dspex.execution"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes is not None
    assert root.attributes["dspex.error_code"] == "backend_bad_request"
    module = spans["dspex.module answer"]
    assert module.status.status_code is StatusCode.ERROR


async def test_executions_and_steps_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dspex")
    async with make_runtime(MemoryStore()) as rt:
        await ready(rt, QA)
        result = await rt.execute("qa", {"question": "why?"})
    executions = [r for r in caplog.records if r.name == "dspex.execution"]
    steps = [r for r in caplog.records if r.name == "dspex.step"]
    assert len(executions) == 1
    assert executions[0].dspex["execution_id"] == result.execution_id  # type: ignore[attr-defined]
    assert executions[0].dspex["status"] == "completed"  # type: ignore[attr-defined]
    assert [s.dspex["module"] for s in steps] == ["answer"]  # type: ignore[attr-defined]


async def test_telemetry_without_spans_only_logs() -> None:
    quiet = Telemetry(spans=False)
    assert not quiet.tracing
    async with make_runtime(MemoryStore(), telemetry=quiet) as rt:
        await ready(rt, QA)
        assert (await rt.execute("qa", {"question": "why?"})).status == "completed"


def test_the_default_tracer_comes_from_the_global_provider() -> None:
    assert otel_tracer() is not None
    assert Telemetry().tracing


class _CountingTracer:
    """A tracer that counts the spans asked of it."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.started: list[str] = []

    def start_span(self, name: str, **kwargs: Any) -> Any:
        self.started.append(name)
        return self.tracer.start_span(name, **kwargs)


async def test_an_execution_span_nobody_records_gets_no_module_spans(
    exporter: InMemorySpanExporter,
) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = _CountingTracer(provider.get_tracer("dspex-test"))
    async with make_runtime(MemoryStore(), telemetry=Telemetry(tracer=tracer)) as rt:
        await ready(rt, DIAMOND)
        assert (await rt.execute("diamond", {"q": "go"})).status == "completed"
    assert tracer.started == ["dspex.execution"]
    assert exporter.get_finished_spans() == ()


async def test_an_execution_whose_record_is_refused_ends_its_span_with_why(
    exporter: InMemorySpanExporter, telemetry: Telemetry
) -> None:
    # the record is written while the run starts; the span opened for it must not stay open
    class Refusing(MemoryStore):
        async def start_execution(self, *args: Any, **kwargs: Any) -> Any:
            raise StorageError("database error: disk I/O error")

    async with make_runtime(Refusing(), telemetry=telemetry) as rt:
        await ready(rt, QA)
        with pytest.raises(StorageError):
            await rt.execute("qa", {"question": "why?"})
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "dspex.execution"]
    assert root.attributes is not None
    assert root.attributes["dspex.status"] == "refused"
    assert root.attributes["dspex.error_code"] == "storage_error"
    assert root.status.status_code is StatusCode.ERROR
    assert telemetry._open == {}
