"""Full traces: steps keep their inputs and outputs, LM attempts their messages and raw response
(opt-in), sensitive fields are stored as "[redacted]", and spans follow the GenAI conventions.

LM attempts go to the loopback OpenAI-compatible server through the ``openai`` backend; the
records go through every real store (memory, SQLite, PostgreSQL); spans go to the SDK's
in-memory exporter.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind
from tests.support.openai_server import OpenAIServer, chat_adapter_content, status

from dspex.backends.dspy_backend import DspyBackend
from dspex.backends.mock import MockBackend
from dspex.backends.openai_backend import OpenAIBackend
from dspex.capture import REDACTED
from dspex.config import CaptureSettings, DefaultsSettings, Settings
from dspex.errors import ConfigError
from dspex.resilience import RetryPolicy
from dspex.runtime import Runtime
from dspex.store.base import Store
from dspex.telemetry import Telemetry, tracer_provider_from_env

KEY_ENV = "DSPEX_TEST_TRACES_KEY"
MODEL = "loopback-model"
SECRET = "123-45-6789"

FIELDS: dict[str, Any] = {
    "inputs": {"question": "str", "ssn": {"type": "str", "sensitive": True}},
    "outputs": {"answer": "str"},
}
LOOKUP: dict[str, Any] = {
    "name": "lookup",
    "signature": FIELDS,
    "modules": {"answer": {"kind": "predict", "signature": FIELDS}},
}


def _echo(request: dict[str, Any]) -> str:
    """Answers with the whole prompt's last user message inside: a model that repeats its input."""
    last = request["messages"][-1]["content"]
    return chat_adapter_content({"answer": f"you said: {last[-200:]}"})


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer(_echo) as running:
        yield running


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


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with open_kind(request.param, request, FakeClock()) as opened:
        yield opened


@asynccontextmanager
async def _runtime(
    store: Store,
    server: OpenAIServer | None,
    telemetry: Telemetry | None = None,
    *,
    capture: CaptureSettings | None = None,
    retry: RetryPolicy | None = None,
) -> AsyncIterator[Runtime]:
    """A started runtime over ``store`` (which it closes) calling the loopback server (else
    the mock backend)."""
    backend = (
        OpenAIBackend("default", base_url=server.base_url, model=MODEL, api_key_env=KEY_ENV)
        if server is not None
        else MockBackend("default")
    )
    defaults = DefaultsSettings(retry=retry or RetryPolicy(max_attempts=1))
    try:
        async with Runtime(
            Settings(capture=capture or CaptureSettings(), defaults=defaults),
            store,
            backends={"default": backend},
            worker_id="worker-1",
            telemetry=telemetry or Telemetry(spans=False),
        ) as rt:
            yield rt
    finally:
        await backend.aclose()


async def _ready(rt: Runtime, spec: dict[str, Any] = LOOKUP) -> None:
    info = await rt.register(spec)
    info = await rt.initialize(info.name, info.version)
    assert info.status == "ready", info.error


def _spans(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        named.setdefault(span.name, []).append(span)
    return named


# -- recorded steps and attempts ---------------------------------------------------------------


async def test_steps_record_inputs_and_outputs_with_sensitive_fields_redacted(
    store: Store, server: OpenAIServer
) -> None:
    async with _runtime(store, server) as rt:
        await _ready(rt)
        result = await rt.execute("lookup", {"question": "whose number?", "ssn": SECRET})
        assert result.status == "completed", result.error
        detail = await rt.get_execution(result.execution_id)
        (step,) = await store.list_steps(result.execution_id)
        (attempt,) = await store.list_attempts(result.execution_id)
    assert step.inputs == {"question": "whose number?", "ssn": REDACTED}
    assert step.outputs is not None
    assert set(step.outputs) == {"answer"}
    # messages are not captured by default
    assert attempt.messages is None
    assert attempt.response is None
    assert detail.steps[0].inputs == step.inputs
    assert detail.steps[0].outputs == step.outputs


async def test_lm_messages_and_response_are_recorded_when_asked_with_the_secret_cut_out(
    store: Store, server: OpenAIServer
) -> None:
    async with _runtime(store, server, capture=CaptureSettings(messages=True)) as rt:
        await _ready(rt)
        result = await rt.execute("lookup", {"question": "whose number?", "ssn": SECRET})
        assert result.status == "completed", result.error
        (attempt,) = await store.list_attempts(result.execution_id)
        (step,) = await store.list_steps(result.execution_id)
    assert attempt.messages is not None
    assert attempt.response is not None
    sent = server.requests[-1].json["messages"]
    assert SECRET in json.dumps(sent)  # the LM saw the real value...
    recorded = json.dumps([attempt.messages, attempt.response])
    assert SECRET not in recorded  # ...the record does not
    assert REDACTED in json.dumps(attempt.messages)
    assert [m["role"] for m in attempt.messages] == [m["role"] for m in sent]
    assert attempt.response["choices"][0]["finish_reason"] == "stop"
    assert attempt.response["usage"]["prompt_tokens"] == attempt.prompt_tokens
    # the answer echoed the number: redacted in the recorded response too
    assert "whose number?" in json.dumps(attempt.messages)
    assert step.inputs is not None
    assert step.inputs["ssn"] == REDACTED


async def test_capture_redact_names_fields_at_any_depth_and_off_records_nothing(
    server: OpenAIServer, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    nested: dict[str, Any] = {
        "name": "nested",
        "signature": "profile: dict[str, str], question: str -> answer: str",
        "modules": {
            "answer": {
                "kind": "predict",
                "signature": "profile: dict[str, str], question: str -> answer: str",
            }
        },
    }
    inputs = {"profile": {"name": "Ada", "token": "tok-999"}, "question": "hi"}
    capture = CaptureSettings(redact=("token",), messages=True)
    async with (
        open_kind("sqlite", request, FakeClock()) as store,
        _runtime(store, server, capture=capture) as rt,
    ):
        await _ready(rt, nested)
        result = await rt.execute("nested", inputs)
        (step,) = await store.list_steps(result.execution_id)
        (attempt,) = await store.list_attempts(result.execution_id)
    assert step.inputs == {"profile": {"name": "Ada", "token": REDACTED}, "question": "hi"}
    assert "tok-999" not in json.dumps([attempt.messages, attempt.response])

    off = CaptureSettings(inputs_outputs=False)
    async with (
        open_kind("memory", request, FakeClock()) as store,
        _runtime(store, server, capture=off) as rt,
    ):
        await _ready(rt, nested)
        result = await rt.execute("nested", inputs)
        (step,) = await store.list_steps(result.execution_id)
        (attempt,) = await store.list_attempts(result.execution_id)
    assert step.inputs is None
    assert step.outputs is None
    assert attempt.messages is None
    assert attempt.response is None


async def test_huge_values_are_cut_with_a_marker(request: pytest.FixtureRequest) -> None:
    capture = CaptureSettings(max_chars=100, max_items=3)
    qa: dict[str, Any] = {
        "name": "qa",
        "signature": "question: str, tags: list[str] -> answer: str",
        "modules": {
            "answer": {
                "kind": "predict",
                "signature": "question: str, tags: list[str] -> answer: str",
            }
        },
    }
    async with (
        open_kind("sqlite", request, FakeClock()) as store,
        _runtime(store, None, capture=capture) as rt,
    ):
        await _ready(rt, qa)
        result = await rt.execute("qa", {"question": "x" * 1000, "tags": list("abcdef")})
        (step,) = await store.list_steps(result.execution_id)
        record = await store.get_execution(result.execution_id)
    assert step.inputs is not None
    assert step.inputs["question"] == "x" * 100 + "…[truncated 900 chars]"
    assert step.inputs["tags"] == ["a", "b", "c", "…[3 more]"]
    # the execution's own inputs are the run's contract and are kept whole
    assert record.inputs["question"] == "x" * 1000


def test_a_field_marked_sensitive_survives_the_signature_round_trips() -> None:
    from dspex import Signature, validate_signature

    sig = Signature.from_dict({"name": "S", **FIELDS})
    assert sig.field("ssn").sensitive
    assert not sig.field("question").sensitive
    assert sig.to_dict()["inputs"]["ssn"] == {"type": "str", "sensitive": True}
    assert Signature.from_dict(sig.to_dict()) == sig
    assert Signature.from_dspy(sig.to_dspy()) == sig
    assert validate_signature(sig.to_dict(), level="comprehensive").valid


def test_sensitive_must_be_true_or_false() -> None:
    from dspex import Signature
    from dspex.errors import SignatureError

    bad = {"inputs": {"ssn": {"type": "str", "sensitive": "yes"}}, "outputs": {"a": "str"}}
    with pytest.raises(SignatureError) as caught:
        Signature.from_dict(bad)
    assert [(e.field, e.code) for e in caught.value.errors] == [("ssn", "invalid_spec")]


async def test_the_dspy_backend_records_the_messages_and_completion_with_the_secret_cut_out(
    server: OpenAIServer, request: pytest.FixtureRequest
) -> None:
    backend = DspyBackend(
        "default", model=f"openai/{MODEL}", api_base=server.base_url, api_key_env=KEY_ENV
    )
    settings = Settings(
        capture=CaptureSettings(messages=True),
        defaults=DefaultsSettings(retry=RetryPolicy(max_attempts=1)),
    )
    try:
        async with (
            open_kind("memory", request, FakeClock()) as store,
            Runtime(settings, store, backends={"default": backend}, worker_id="w") as rt,
        ):
            await _ready(rt)
            result = await rt.execute("lookup", {"question": "whose number?", "ssn": SECRET})
            assert result.status == "completed", result.error
            (attempt,) = await store.list_attempts(result.execution_id)
    finally:
        await backend.aclose()
    assert attempt.messages is not None
    assert [m["role"] for m in attempt.messages] == ["system", "user"]
    assert isinstance(attempt.response, str)
    assert "[[ ## answer ## ]]" in attempt.response
    assert SECRET in json.dumps(server.requests[-1].json)
    assert SECRET not in json.dumps([attempt.messages, attempt.response])
    assert "whose number?" in json.dumps(attempt.messages)


# -- spans --------------------------------------------------------------------------------------


async def test_spans_per_execution_module_and_lm_attempt_follow_the_genai_conventions(
    server: OpenAIServer,
    exporter: InMemorySpanExporter,
    telemetry: Telemetry,
    request: pytest.FixtureRequest,
) -> None:
    async with (
        open_kind("memory", request, FakeClock()) as store,
        _runtime(store, server, telemetry, capture=CaptureSettings(messages=True)) as rt,
    ):
        await _ready(rt)
        result = await rt.execute("lookup", {"question": "whose number?", "ssn": SECRET})
        (attempt,) = await store.list_attempts(result.execution_id)
    spans = _spans(exporter)
    (root,) = spans["dspex.execution"]
    (module,) = spans["dspex.module answer"]
    (chat,) = spans[f"chat {MODEL}"]
    assert root.attributes is not None
    assert root.attributes["dspex.execution_id"] == result.execution_id
    assert root.attributes["dspex.program"] == "lookup"
    assert root.attributes["dspex.program_version"] == 1
    assert root.context is not None
    assert module.context is not None
    assert module.parent is not None
    assert module.parent.span_id == root.context.span_id
    assert chat.parent is not None
    assert chat.parent.span_id == module.context.span_id
    assert chat.kind is SpanKind.CLIENT
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.usage.input_tokens"] == attempt.prompt_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == attempt.completion_tokens > 0
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    # the messages are exported as recorded: redacted before they left the run
    exported = json.dumps(
        [str(v) for s in exporter.get_finished_spans() for v in (s.attributes or {}).values()]
    )
    assert SECRET not in exported
    assert REDACTED in str(attributes["gen_ai.input.messages"])
    assert json.loads(str(attributes["gen_ai.input.messages"])) == attempt.messages


async def test_failed_lm_attempts_are_error_spans_and_messages_stay_off_spans_by_default(
    server: OpenAIServer,
    exporter: InMemorySpanExporter,
    telemetry: Telemetry,
    request: pytest.FixtureRequest,
) -> None:
    server.script(status(503), status(500))
    retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
    async with (
        open_kind("sqlite", request, FakeClock()) as store,
        _runtime(store, server, telemetry, retry=retry) as rt,
    ):
        await _ready(rt)
        result = await rt.execute("lookup", {"question": "whose number?", "ssn": SECRET})
        assert result.status == "completed", result.error
        attempts = await store.list_attempts(result.execution_id)
    chats = sorted(_spans(exporter)[f"chat {MODEL}"], key=lambda s: s.start_time or 0)
    assert [s.status.status_code for s in chats] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [dict(s.attributes or {}).get("dspex.attempt") for s in chats] == [1, 2, 3]
    codes = [dict(s.attributes or {}).get("error.type") for s in chats]
    assert codes == [a.error_code for a in attempts]
    assert codes[0] is not None
    assert codes[1] is not None
    assert codes[2] is None
    # each attempt has its own time, recorded and exported alike
    assert all(a.started_at is not None and a.ended_at is not None for a in attempts)
    for span in chats:
        assert span.start_time is not None
        assert span.end_time is not None
        assert span.start_time <= span.end_time
        assert "gen_ai.input.messages" not in (span.attributes or {})
    assert chats[0].end_time is not None
    assert chats[1].start_time is not None
    assert chats[0].end_time <= chats[1].start_time


async def test_a_coordinator_groups_attempts_are_spans_of_their_own_backends(
    server: OpenAIServer,
    exporter: InMemorySpanExporter,
    telemetry: Telemetry,
    request: pytest.FixtureRequest,
    tmp_path: Any,
) -> None:
    from dspex.config import load_settings

    member = f'kind = "openai"\nbase_url = "{server.base_url}"\nmodel = "{MODEL}"\n'
    member += f'api_key_env = "{KEY_ENV}"\n'
    config = tmp_path / "dspex.toml"
    config.write_text(
        'default_backend = "main"\n'
        f"[backends.first]\n{member}[backends.second]\n{member}"
        '[coordinators.main]\nbackends = ["first", "second"]\n'
        "[coordinators.main.retry]\nmax_attempts = 2\ninitial_interval = 0\njitter = 0\n"
        "[capture]\nmessages = true\n"
    )
    server.script(status(500))
    async with (
        open_kind("memory", request, FakeClock()) as store,
        Runtime(load_settings(config), store, worker_id="w", telemetry=telemetry) as rt,
    ):
        await _ready(rt)
        result = await rt.execute("lookup", {"question": "whose number?", "ssn": SECRET})
        assert result.status == "completed", result.error
        attempts = await store.list_attempts(result.execution_id)
    assert [(a.backend, a.outcome.value) for a in attempts] == [
        ("first", "failed"),
        ("second", "succeeded"),
    ]
    assert attempts[0].messages is None  # a failed call reported no exchange
    assert attempts[1].messages is not None
    assert SECRET not in json.dumps(attempts[1].messages)
    chats = sorted(_spans(exporter)[f"chat {MODEL}"], key=lambda s: s.start_time or 0)
    assert [dict(c.attributes or {})["dspex.backend"] for c in chats] == ["first", "second"]
    assert [c.status.status_code for c in chats] == [StatusCode.ERROR, StatusCode.UNSET]
    second = dict(chats[1].attributes or {})
    assert second["gen_ai.usage.input_tokens"] == attempts[1].prompt_tokens > 0
    assert json.loads(str(second["gen_ai.input.messages"])) == attempts[1].messages


async def test_an_unsuccessful_last_attempt_fails_its_span(
    exporter: InMemorySpanExporter, telemetry: Telemetry, request: pytest.FixtureRequest
) -> None:
    async with (
        open_kind("memory", request, FakeClock()) as store,
        Runtime(
            Settings(defaults=DefaultsSettings(retry=RetryPolicy(max_attempts=1))),
            store,
            backends={"default": MockBackend("default", permanent_failure_rate=1.0)},
            worker_id="w",
            telemetry=telemetry,
        ) as rt,
    ):
        await _ready(rt)
        result = await rt.execute("lookup", {"question": "q", "ssn": SECRET})
    assert result.status == "failed"
    spans = _spans(exporter)
    (chat,) = [s for name, found in spans.items() if name.startswith("chat") for s in found]
    assert chat.status.status_code is StatusCode.ERROR
    assert result.error is not None
    assert dict(chat.attributes or {})["error.type"] == result.error.code
    (root,) = spans["dspex.execution"]
    assert dict(root.attributes or {})["error.type"] == result.error.code


async def test_each_batch_item_is_an_execution_span_with_its_module_and_lm_spans(
    server: OpenAIServer,
    exporter: InMemorySpanExporter,
    telemetry: Telemetry,
    request: pytest.FixtureRequest,
) -> None:
    items = [{"question": f"q{i}", "ssn": f"{SECRET}-{i}"} for i in range(3)]
    async with (
        open_kind("sqlite", request, FakeClock()) as store,
        _runtime(store, server, telemetry) as rt,
    ):
        await _ready(rt)
        batch = await rt.run_batch("lookup", items, max_concurrency=2)
    assert batch.results is not None
    spans = _spans(exporter)
    roots = spans["dspex.execution"]
    assert sorted(dict(r.attributes or {})["dspex.execution_id"] for r in roots) == sorted(
        r.execution_id for r in batch.results
    )
    assert all(r.status.status_code is StatusCode.OK for r in roots)
    root_ids = {r.context.span_id for r in roots if r.context is not None}
    modules = spans["dspex.module answer"]
    assert len(modules) == 3
    assert {m.parent.span_id for m in modules if m.parent is not None} == root_ids
    module_ids = {m.context.span_id for m in modules if m.context is not None}
    chats = spans[f"chat {MODEL}"]
    assert {c.parent.span_id for c in chats if c.parent is not None} == module_ids


async def test_a_failed_batch_item_is_an_error_execution_span(
    exporter: InMemorySpanExporter, telemetry: Telemetry, request: pytest.FixtureRequest
) -> None:
    async with (
        open_kind("memory", request, FakeClock()) as store,
        Runtime(
            Settings(defaults=DefaultsSettings(retry=RetryPolicy(max_attempts=1))),
            store,
            backends={"default": MockBackend("default", permanent_failure_rate=1.0)},
            worker_id="w",
            telemetry=telemetry,
        ) as rt,
    ):
        await _ready(rt)
        batch = await rt.run_batch("lookup", [{"question": "q", "ssn": SECRET}])
    assert batch.stats.failed == 1
    (root,) = _spans(exporter)["dspex.execution"]
    assert root.status.status_code is StatusCode.ERROR
    assert dict(root.attributes or {})["error.type"] == "backend_bad_request"


# -- spans exported through the OTEL_* environment ---------------------------------------------


def test_no_exporter_is_built_unless_the_environment_asks() -> None:
    assert tracer_provider_from_env({}) is None
    assert tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    disabled = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert tracer_provider_from_env(disabled) is None


def test_a_telemetry_that_built_its_provider_from_the_environment_shuts_it_down() -> None:
    telemetry = Telemetry(env={"OTEL_TRACES_EXPORTER": "console"})
    assert telemetry.tracing
    telemetry.close()
    telemetry.close()  # once is enough; again does nothing
    assert Telemetry(env={}).tracing  # the global provider's tracer (a no-op until one is set)


def test_an_exporter_that_is_not_installed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no span exporter 'zipkin_json'"):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin_json"})


def test_the_environment_s_exporter_gets_a_provider_of_its_own_never_the_global_one() -> None:
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider

    before = trace.get_tracer_provider()
    provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert isinstance(provider, SdkProvider)
        assert trace.get_tracer_provider() is before
        assert provider is not before
    finally:
        provider.shutdown()


def test_an_otlp_endpoint_without_the_otlp_exporter_installed_says_what_to_install() -> None:
    from importlib.metadata import entry_points

    installed = {e.name for e in entry_points(group="opentelemetry_traces_exporter")}
    if {"otlp", "otlp_proto_http"} & installed:
        pytest.skip("an OTLP exporter is installed here")
    with pytest.raises(ConfigError, match=r"opentelemetry-exporter-otlp-proto-http"):
        tracer_provider_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
