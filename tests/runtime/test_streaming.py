"""``Runtime.stream``: an execution's steps and its final module's answer token by token, from the
loopback LM server's streamed chunks, then the recorded result.

The server answers ``stream: true`` requests with server-sent chunks of a few words each, so the
tokens a test sees are the server's chunks read through the adapter's format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from tests.support.openai_server import (
    OpenAIServer,
    chat_adapter_content,
    ok,
    requested_output_fields,
    truncated,
)

import dspex
from dspex.errors import NotFoundError, ValidationError
from dspex.records import ExecutionStatus, StepStatus
from dspex.runtime import Runtime

REF = __name__  # the dspy modules below, allow-listed by the name this file was imported under

ANSWER = "The capital of France is Paris, on the Seine."
DRAFT = "Paris, I think."

TWO_STEPS: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {
        "draft": {"kind": "predict", "signature": "question: str -> draft: str"},
        "final": {
            "kind": "predict",
            "signature": "question: str, draft: str -> answer: str",
            "inputs": {"question": "$input.question", "draft": "draft.draft"},
        },
    },
    "outputs": {"answer": "final.answer"},
}


class StreamedQA(dspy.Module):
    """A DSPy module with one predictor, written the async way."""

    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict("question -> answer")

    async def aforward(self, question: str) -> Any:
        return await self.respond.acall(question=question)


class SyncStreamedQA(dspy.Module):
    """The same, written the sync way."""

    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        return self.respond(question=question)


def _respond(request: dict[str, Any]) -> str:
    values = {"answer": ANSWER, "draft": DRAFT, "reasoning": "Because it is."}
    return chat_adapter_content(
        {name: values.get(name, f"{name} value") for name, _ in requested_output_fields(request)}
    )


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(_respond) as running:
        yield running


async def _runtime(tmp_path: Path, server: OpenAIServer, extra: str = "") -> Runtime:
    config = tmp_path / "dspex.toml"
    config.write_text(
        f'allowed_imports = ["{REF}"]\n[backends.default]\nkind = "openai"\n'
        f'base_url = "{server.base_url}"\nmodel = "loopback-model"\n{extra}'
    )
    return await Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config).start()


@pytest.fixture
async def runtime(tmp_path: Path, server: OpenAIServer) -> AsyncIterator[Runtime]:
    rt = await _runtime(tmp_path, server)
    try:
        await rt.register(TWO_STEPS)
        await rt.initialize("qa")
        yield rt
    finally:
        await rt.aclose()


async def _events(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


def _tokens(events: list[Any], module: str = "final") -> str:
    return "".join(e.text for e in events if isinstance(e, dspex.TokenDelta) and e.module == module)


async def test_a_stream_reports_steps_then_the_final_answer_token_by_token(
    runtime: Runtime, server: OpenAIServer
) -> None:
    events = await _events(runtime.stream("qa", {"question": "Capital of France?"}))

    names = [e.event for e in events]
    assert names[0] == "started"
    assert names[-1] == "done"
    steps = [(e.event, e.module) for e in events if e.event.startswith("step_")]
    assert steps == [
        ("step_started", "draft"),
        ("step_finished", "draft"),
        ("step_started", "final"),
        ("step_finished", "final"),
    ]
    tokens = [e for e in events if isinstance(e, dspex.TokenDelta)]
    assert len(tokens) > 2  # the server sends a few words per chunk
    assert {(t.module, t.field) for t in tokens} == {("final", "answer")}
    assert _tokens(events) == ANSWER
    # the tokens come between the final module's start and finish
    final_start = names.index("step_started", names.index("step_finished"))
    assert final_start < names.index("token") < len(names) - 2
    # only the final module's request was streamed
    assert [r.json.get("stream", False) for r in server.requests] == [False, True]


async def test_the_done_event_carries_the_recorded_execution(runtime: Runtime) -> None:
    events = await _events(runtime.stream("qa", {"question": "Capital of France?"}))
    started, done = events[0], events[-1]
    assert isinstance(started, dspex.ExecutionStarted)
    assert isinstance(done, dspex.ExecutionDone)
    result = done.execution
    assert result.execution_id == started.execution_id
    assert result.status is ExecutionStatus.COMPLETED
    assert result.outputs == {"answer": ANSWER}
    recorded = await runtime.get_execution(result.execution_id)
    assert recorded.status is ExecutionStatus.COMPLETED
    assert recorded.outputs == {"answer": ANSWER}
    assert recorded.usage == result.usage
    assert result.usage["loopback-model"]["completion_tokens"] > 0  # usage of the stream too
    finished = [e for e in events if isinstance(e, dspex.StepFinished)]
    assert [f.status for f in finished] == [StepStatus.COMPLETED, StepStatus.COMPLETED]
    assert finished[-1].outputs == {"answer": ANSWER}


async def test_a_retry_after_tokens_were_sent_is_announced_and_the_tokens_start_again(
    tmp_path: Path, server: OpenAIServer
) -> None:
    rt = await _runtime(tmp_path, server)
    try:
        spec = {
            "name": "one",
            "signature": "question: str -> answer: str",
            "modules": {
                "answer": {
                    "kind": "predict",
                    "signature": "question: str -> answer: str",
                    "retry": {"max_attempts": 2, "initial_interval": 0.01, "jitter": 0},
                }
            },
        }
        await rt.register(spec)
        await rt.initialize("one")
        server.script(truncated())  # half the chunks, then the stream breaks off
        events = await _events(rt.stream("one", {"question": "Capital?"}))
    finally:
        await rt.aclose()

    retry = next(e for e in events if isinstance(e, dspex.StreamRetry))
    assert retry.module == "answer"
    assert retry.attempt == 2
    at = events.index(retry)
    before = _tokens(events[:at], "answer")
    after = _tokens(events[at:], "answer")
    assert before
    assert ANSWER.startswith(before)
    assert before != ANSWER
    assert after == ANSWER
    done = events[-1]
    assert isinstance(done, dspex.ExecutionDone)
    assert done.execution.status is ExecutionStatus.COMPLETED
    assert done.execution.steps[0].attempts == 2


async def test_a_consumer_that_leaves_early_does_not_lose_the_execution(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.chunk_delay = 0.05
    rt = await _runtime(tmp_path, server)
    try:
        await rt.register(TWO_STEPS)
        await rt.initialize("qa")
        stream = aiter(rt.stream("qa", {"question": "Capital of France?"}))
        seen: list[Any] = []
        async for event in stream:
            seen.append(event)
            if isinstance(event, dspex.TokenDelta):
                break  # the consumer goes away mid-answer
        await stream.aclose()  # type: ignore[attr-defined]
        execution_id = seen[0].execution_id
    finally:
        await rt.aclose()  # waits for the execution, which runs to its end
    rt = await _runtime(tmp_path, server)
    try:
        recorded = await rt.get_execution(execution_id)
    finally:
        await rt.aclose()
    assert recorded.status is ExecutionStatus.COMPLETED
    assert recorded.outputs == {"answer": ANSWER}
    assert [s.status for s in recorded.steps] == [StepStatus.COMPLETED] * 2


async def test_bad_requests_raise_from_the_first_iteration_and_record_nothing(
    runtime: Runtime,
) -> None:
    with pytest.raises(ValidationError):
        await _events(runtime.stream("qa", {"wrong": 1}))
    with pytest.raises(NotFoundError):
        await _events(runtime.stream("nope", {"question": "?"}))
    page = await runtime.list_executions()
    assert page.items == []


async def test_a_mock_backend_streams_steps_without_tokens(tmp_path: Path) -> None:
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}") as rt:
        await rt.register(TWO_STEPS)
        await rt.initialize("qa")
        events = await _events(rt.stream("qa", {"question": "?"}))
    assert [e.event for e in events] == [
        "started",
        "step_started",
        "step_finished",
        "step_started",
        "step_finished",
        "done",
    ]


@pytest.mark.parametrize("module", ["StreamedQA", "SyncStreamedQA"])
async def test_a_dspy_module_streams_through_dspys_stream_listeners(
    tmp_path: Path, server: OpenAIServer, module: str
) -> None:
    rt = await _runtime(tmp_path, server)
    try:
        spec = {
            "name": "native",
            "signature": "question: str -> answer: str",
            "modules": {
                "qa": {
                    "kind": "dspy",
                    "module": f"{REF}:{module}",
                    "signature": "question: str -> answer: str",
                }
            },
        }
        await rt.register(spec)
        await rt.initialize("native")
        events = await _events(rt.stream("native", {"question": "Capital of France?"}))
        plain = await rt.execute("native", {"question": "Capital of France?"})
        streamed = await rt.get_execution(events[-1].execution.execution_id)
    finally:
        await rt.aclose()
    # recorded as a plain run is: the predictor call inside as a child step, the same usage
    assert [s.module for s in streamed.steps] == ["qa", "qa.respond"]
    assert streamed.usage == plain.usage
    assert streamed.usage["loopback-model"]["completion_tokens"] > 0
    tokens = [e for e in events if isinstance(e, dspex.TokenDelta)]
    assert len(tokens) > 1
    assert {(t.module, t.field) for t in tokens} == {("qa", "answer")}
    assert _tokens(events, "qa") == ANSWER
    done = events[-1]
    assert isinstance(done, dspex.ExecutionDone)
    assert done.execution.outputs == {"answer": ANSWER}
    assert [r.json.get("stream", False) for r in server.requests] == [True, False]


async def test_the_dspy_backend_streams_through_dspys_stream_listeners(
    tmp_path: Path, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "k")
    config = tmp_path / "dspex.toml"
    config.write_text(
        f'[backends.default]\nkind = "dspy"\nmodel = "openai/loopback-model"\n'
        f'api_base = "{server.base_url}"\napi_key_env = "LOOPBACK_KEY"\n'
    )
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config) as rt:
        await rt.register(TWO_STEPS)
        await rt.initialize("qa")
        events = await _events(rt.stream("qa", {"question": "Capital of France?"}))
    tokens = [e for e in events if isinstance(e, dspex.TokenDelta)]
    assert len(tokens) > 1
    assert _tokens(events) == ANSWER
    done = events[-1]
    assert isinstance(done, dspex.ExecutionDone)
    assert done.execution.status is ExecutionStatus.COMPLETED
    assert done.execution.outputs == {"answer": ANSWER}


@pytest.fixture
def second() -> Iterator[OpenAIServer]:
    with OpenAIServer(_respond) as running:
        yield running


def _group_config(primary: OpenAIServer, secondary: OpenAIServer) -> str:
    return f"""
default_backend = "main"
allowed_imports = ["{REF}"]

[backends.first]
kind = "openai"
base_url = "{primary.base_url}"
model = "loopback-model"

[backends.second]
kind = "openai"
base_url = "{secondary.base_url}"
model = "loopback-model"

[coordinators.main]
backends = ["first", "second"]
strategy = "failover"

[coordinators.main.retry]
max_attempts = 2
initial_interval = 0
jitter = 0
"""


async def test_a_failover_after_tokens_were_sent_is_announced_as_a_retry(
    tmp_path: Path, server: OpenAIServer, second: OpenAIServer
) -> None:
    config = tmp_path / "dspex.toml"
    config.write_text(_group_config(server, second))
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config) as rt:
        await rt.register(TWO_STEPS)
        await rt.initialize("qa")
        server.reset()
        server.script(ok(), truncated())  # the draft answers; the final answer breaks off
        events = await _events(rt.stream("qa", {"question": "Capital of France?"}))
    retry = next(e for e in events if isinstance(e, dspex.StreamRetry))
    assert (retry.module, retry.attempt) == ("final", 2)
    assert _tokens(events[events.index(retry) :]) == ANSWER
    done = events[-1]
    assert isinstance(done, dspex.ExecutionDone)
    assert done.execution.status is ExecutionStatus.COMPLETED
    assert done.execution.outputs == {"answer": ANSWER}
    assert second.requests[-1].json["stream"] is True


async def test_a_dspy_module_on_a_group_streams_its_steps_but_not_its_tokens(
    tmp_path: Path, server: OpenAIServer, second: OpenAIServer
) -> None:
    config = tmp_path / "dspex.toml"
    config.write_text(_group_config(server, second))
    spec = {
        "name": "native",
        "signature": "question: str -> answer: str",
        "modules": {
            "qa": {
                "kind": "dspy",
                "module": f"{REF}:StreamedQA",
                "signature": "question: str -> answer: str",
            }
        },
    }
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config) as rt:
        await rt.register(spec)
        await rt.initialize("native")
        events = await _events(rt.stream("native", {"question": "Capital of France?"}))
    assert [e.event for e in events] == [
        "started",
        "step_started",
        "step_finished",
        "done",
    ]
    assert events[-1].execution.outputs == {"answer": ANSWER}
