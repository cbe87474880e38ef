"""Coordinator groups from ``dspex.toml``, run by the runtime over the real DSPy path.

Backends are ``dspy`` backends talking HTTP to loopback OpenAI servers scripted to fail; the
runtime records every backend attempt on SQLite. Waits are configured to zero
(``initial_interval = 0``, ``max_retry_after = 0``), so nothing sleeps.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.openai_server import OpenAIServer, status

from dspex.records import AttemptOutcome
from dspex.resilience import Coordinator
from dspex.runtime import Runtime

KEY_ENV = "DSPEX_TEST_COORDINATOR_KEY"
MODEL = "openai/loopback-model"


def _config(
    primary: OpenAIServer, secondary: OpenAIServer, *, allowed: str = "", minimum_calls: int = 10
) -> str:
    return f"""
default_backend = "main"
allowed_imports = [{allowed!r}]

[backends.openai]
kind = "dspy"
model = "{MODEL}"
api_base = "{primary.base_url}"
api_key_env = "{KEY_ENV}"

[backends.anthropic]
kind = "dspy"
model = "{MODEL}"
api_base = "{secondary.base_url}"
api_key_env = "{KEY_ENV}"

[coordinators.main]
backends = ["openai", "anthropic"]
strategy = "failover"

[coordinators.main.retry]
max_attempts = 4
initial_interval = 0
jitter = 0
max_retry_after = 0

[breaker]
failure_rate_threshold = 0.5
minimum_calls = {minimum_calls}
window_size = 10
open_seconds = 600
"""


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as primary, OpenAIServer() as secondary:
        yield primary, secondary


@pytest.fixture
async def runtime(
    tmp_path: Path, servers: tuple[OpenAIServer, OpenAIServer]
) -> AsyncIterator[Runtime]:
    config = tmp_path / "dspex.toml"
    config.write_text(_config(*servers, allowed="rtcoord_modules"))
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config) as rt:
        yield rt


QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {
        "answer": {
            "kind": "predict",
            "signature": "question: str -> answer: str",
            "backend": "main",
        }
    },
}


async def _run(rt: Runtime, spec: dict[str, Any]) -> Any:
    await rt.register(spec)
    await rt.initialize(spec["name"])
    return await rt.execute(spec["name"], {"question": "What is 6 * 7?"})


async def test_a_group_in_configuration_is_a_backend_modules_can_name(runtime: Runtime) -> None:
    group = runtime._backends["main"]
    assert isinstance(group, Coordinator)
    assert [b.name for b in group.backends] == ["openai", "anthropic"]
    assert group.policy.max_attempts == 4
    assert runtime._backends["default"] is group


async def test_every_provider_call_of_a_predict_module_is_one_recorded_attempt(
    runtime: Runtime, servers: tuple[OpenAIServer, OpenAIServer]
) -> None:
    primary, secondary = servers
    primary.script(status(429, retry_after=2), status(500))
    result = await _run(runtime, QA)
    assert result.status == "completed"
    rows = await runtime.store.list_attempts(result.execution_id)
    assert [(r.attempt, r.backend, r.outcome) for r in rows] == [
        (1, "openai", AttemptOutcome.FAILED),
        (2, "anthropic", AttemptOutcome.SUCCEEDED),
    ]
    assert (rows[0].error_code, rows[0].http_status, rows[0].retry_after) == (
        "rate_limited",
        429,
        2.0,
    )
    assert primary.request_count + secondary.request_count == len(rows) == result.attempts
    assert rows[1].prompt_tokens > 0
    assert rows[1].completion_tokens > 0
    assert rows[0].prompt_tokens == rows[0].completion_tokens == 0


async def test_retries_on_one_backend_record_codes_status_and_retry_after(
    tmp_path: Path, servers: tuple[OpenAIServer, OpenAIServer]
) -> None:
    primary, secondary = servers
    config = tmp_path / "dspex.toml"
    # the secondary is not in the group: every attempt goes to the primary
    config.write_text(
        _config(primary, secondary).replace(
            'backends = ["openai", "anthropic"]', 'backends = ["openai"]'
        )
    )
    primary.script(status(429, retry_after=2), status(500))
    async with Runtime.open(f"sqlite:///{tmp_path / 'db.sqlite'}", config=config) as rt:
        result = await _run(rt, QA)
        rows = await rt.store.list_attempts(result.execution_id)
        step = (await rt.get_execution(result.execution_id)).steps[0]
    assert result.status == "completed"
    assert [(r.outcome, r.error_code, r.http_status, r.retry_after) for r in rows] == [
        (AttemptOutcome.FAILED, "rate_limited", 429, 2.0),
        (AttemptOutcome.FAILED, "backend_unavailable", 500, None),
        (AttemptOutcome.SUCCEEDED, None, None, None),
    ]
    assert primary.request_count == len(rows) == 3 == result.attempts == step.attempts
    assert secondary.request_count == 0
    # the answering attempt's tokens are the run's usage: counted once
    usage = result.usage[next(iter(result.usage))]
    assert (rows[2].prompt_tokens, rows[2].completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert all(r.started_at is not None and r.ended_at is not None for r in rows)


async def test_a_failed_group_call_records_every_attempt(
    runtime: Runtime, servers: tuple[OpenAIServer, OpenAIServer]
) -> None:
    primary, secondary = servers
    primary.script(*[status(503)] * 4)
    secondary.script(status(401))
    result = await _run(runtime, QA)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.code == "all_backends_failed"
    rows = await runtime.store.list_attempts(result.execution_id)
    assert [(r.backend, r.error_code, r.http_status) for r in rows] == [
        ("openai", "backend_unavailable", 503),
        ("anthropic", "backend_auth", 401),
        ("openai", "backend_unavailable", 503),
        ("openai", "backend_unavailable", 503),
    ]
    assert primary.request_count + secondary.request_count == len(rows) == result.attempts


async def test_breaker_transitions_are_kept_in_the_runtime_store(
    tmp_path: Path, servers: tuple[OpenAIServer, OpenAIServer]
) -> None:
    primary, secondary = servers
    config = tmp_path / "dspex.toml"
    config.write_text(_config(primary, secondary, minimum_calls=1))
    primary.script(status(500))
    async with Runtime.open(f"sqlite:///{tmp_path / 'db.sqlite'}", config=config) as rt:
        result = await _run(rt, QA)
        states = {r.backend: r.state for r in await rt.store.list_breakers()}
    assert result.status == "completed"
    # minimum_calls = 1: one server error opens the primary's circuit, for every process
    assert states == {"openai": "open"}


DSPY_MODULE = """
import dspy


class Answer(dspy.Module):
    def __init__(self):
        super().__init__()
        self.think = dspy.ChainOfThought("question -> answer")

    async def aforward(self, question):
        return await self.think.acall(question=question)
"""


@pytest.fixture
def dspy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "rtcoord_modules.py").write_text(DSPY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rtcoord_modules:Answer"
    sys.modules.pop("rtcoord_modules", None)


async def test_an_opaque_dspy_module_fails_over_through_the_group(
    runtime: Runtime, servers: tuple[OpenAIServer, OpenAIServer], dspy_module: str
) -> None:
    primary, secondary = servers
    primary.script(status(401))
    spec = {
        "name": "opaque",
        "signature": "question: str -> answer: str",
        "modules": {
            "answer": {
                "kind": "dspy",
                "module": dspy_module,
                "signature": "question: str -> answer: str",
                "backend": "main",
            }
        },
    }
    result = await _run(runtime, spec)
    assert result.status == "completed", result.error
    assert result.outputs == {"answer": "answer answer"}
    rows = await runtime.store.list_attempts(result.execution_id)
    assert [(r.backend, r.outcome, r.http_status) for r in rows] == [
        ("openai", AttemptOutcome.FAILED, 401),
        ("anthropic", AttemptOutcome.SUCCEEDED, None),
    ]
    assert (primary.request_count, secondary.request_count) == (1, 1)
    # usage is the server's count for the one answered request, once, under the group's LM
    assert list(result.usage) == ["dspex/main"]
    totals = result.usage["dspex/main"]
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (
        rows[1].prompt_tokens,
        rows[1].completion_tokens,
    )
    assert totals["prompt_tokens"] > 0
