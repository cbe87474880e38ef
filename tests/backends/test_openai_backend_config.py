"""``kind = "openai"`` in configuration, and the backend under the runtime, a batch and the CLI.

Batches run against the loopback server and are recorded in real SQLite (and PostgreSQL when it
is configured); the CLI runs in-process in a temporary working directory.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.runtime._support import QA, make_runtime
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind
from tests.support.openai_server import OpenAIServer, chat_adapter_content, ok, status
from tests.support.store_reads import batch_executions
from typer.testing import CliRunner

from dspex.backends.openai_backend import OpenAIBackend, OpenAIOptions
from dspex.cli import app
from dspex.config import BackendConfig, Settings, load_settings
from dspex.errors import ConfigError
from dspex.runtime import build_backends
from dspex.store import SqlStore

KEY_ENV = "DSPEX_TEST_OPENAI_CONFIG_KEY"


def _settings(**options: Any) -> Settings:
    table = {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m", **options}
    return Settings(backends={"default": BackendConfig(**table)})


# --- the table ----------------------------------------------------------------------------------


def test_a_backends_table_of_kind_openai_builds_an_openai_backend() -> None:
    built = build_backends(
        _settings(
            api_key_env=KEY_ENV,
            timeout=12.5,
            max_connections=8,
            headers={"X-Team": "search"},
            temperature=0.0,
            max_tokens=256,
            params={"top_k": 5},
            adapter="json",
        )
    )
    backend = built["default"]
    assert isinstance(backend, OpenAIBackend)
    assert (backend.name, backend.model, backend.timeout) == ("default", "m", 12.5)
    assert backend.params == {"top_k": 5, "temperature": 0.0, "max_tokens": 256}
    assert backend.adapter_name == "json"
    transport = backend.transport
    assert transport.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert (transport.api_key_env, transport.max_connections) == (KEY_ENV, 8)
    assert transport.headers == {"X-Team": "search"}


def test_the_table_is_read_from_dspex_toml(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text(
        """
default_backend = "ollama"

[backends.ollama]
kind = "openai"
base_url = "http://localhost:11434/v1"
model = "llama3.2"
temperature = 0.2

[backends.ollama.params]
num_ctx = 8192
"""
    )
    settings = load_settings(env={}, cwd=tmp_path)
    backend = build_backends(settings)["ollama"]
    assert isinstance(backend, OpenAIBackend)
    assert backend.params == {"num_ctx": 8192, "temperature": 0.2}
    assert backend.transport.api_key_env is None


def test_api_base_is_read_as_base_url() -> None:
    table = {"kind": "openai", "api_base": "http://h/v1", "model": "m"}
    backend = build_backends(Settings(backends={"x": BackendConfig(**table)}))["x"]
    assert isinstance(backend, OpenAIBackend)
    assert backend.base_url == "http://h/v1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_conections": 8}, r"unknown openai options \['max_conections'\].*params"),
        ({"api_key": "sk-123"}, "api_key_env"),
        ({"params": {"api_key": "sk-123"}}, "api_key_env"),
        ({"params": {"model": "other"}}, r"params may not set \['model'\]"),
        ({"params": {"stream": True}}, r"params may not set \['stream'\]"),
        ({"base_url": "localhost:8000"}, "base_url must be an http"),
        ({"max_connections": 0}, "max_connections"),
        ({"timeout": -1}, "timeout"),
        ({"adapter": "xml"}, "adapter"),
        ({"json_mode": "schema"}, "json_mode"),
        ({"api_base": "http://other/v1"}, "base_url or api_base"),
        ({"model": None}, "model"),
    ],
)
def test_a_wrong_table_is_a_config_error_that_says_what_is_wrong(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_backends(_settings(**options))


def test_options_validate_without_building_a_backend() -> None:
    options = OpenAIOptions.from_table("x", {"base_url": "http://h/v1", "model": "m", "seed": 1})
    assert options.params == {"seed": 1}
    assert options.timeout == 60.0
    assert options.json_mode == "json_object"


# --- recorded batches ---------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.mark.parametrize("kind", ["sqlite", POSTGRES])
async def test_a_batch_over_the_openai_backend_records_every_item_with_its_usage(
    request: pytest.FixtureRequest, server: OpenAIServer, kind: str
) -> None:
    backend = OpenAIBackend("gpt", base_url=server.base_url, model="loopback-model")
    items = [{"question": f"question {i}?"} for i in range(40)]
    async with (
        open_kind(kind, request, FakeClock()) as store,
        make_runtime(store, {"default": backend}) as rt,
    ):
        info = await rt.register(QA)
        await rt.initialize(info.name, info.version)
        result = await rt.run_batch("qa", items, max_concurrency=8)
        assert result.stats.completed == 40
        detail = await rt.get_execution(result.results[7].execution_id)
    await backend.aclose()
    assert server.request_count == 40
    assert detail.outputs == {"answer": "answer answer"}
    assert detail.inputs == {"question": "question 7?"}
    usage = detail.usage["loopback-model"]
    completion = len(chat_adapter_content({"answer": "answer answer"}).split())
    assert usage["completion_tokens"] == completion
    assert usage["prompt_tokens"] > 0
    assert detail.backend == "default"
    (attempt,) = detail.attempt_records
    assert (attempt.outcome.value, attempt.completion_tokens) == ("succeeded", completion)


def test_a_backend_pickles_as_its_options_without_its_connections_or_caches() -> None:
    backend = OpenAIBackend(
        "gpt",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        api_key_env=KEY_ENV,
        api_key_header="api-key",
        timeout=7.5,
        max_connections=3,
        headers={"X-Team": "a"},
        params={"temperature": 0.25},
        adapter="json",
        json_mode="off",
        stream_usage=False,
    )
    assert backend.lm is not None  # built and cached: not part of the copy
    copy = pickle.loads(pickle.dumps(backend))
    assert isinstance(copy, OpenAIBackend)
    assert copy is not backend
    assert copy.transport is not backend.transport
    assert (copy.name, copy.model, copy.timeout) == ("gpt", "m", 7.5)
    assert copy.base_url == backend.base_url
    assert (copy.adapter_name, copy.json_mode, copy.stream_usage) == ("json", "off", False)
    assert copy.params == {"temperature": 0.25}
    transport = copy.transport
    assert (transport.api_key_env, transport.api_key_header) == (KEY_ENV, "api-key")
    assert (transport.headers, transport.max_connections) == ({"X-Team": "a"}, 3)
    assert copy._lm is None


@pytest.mark.slow
async def test_two_worker_processes_run_a_batch_over_an_openai_backend_object(
    tmp_path: Path, server: OpenAIServer
) -> None:
    backend = OpenAIBackend("gpt", base_url=server.base_url, model="loopback-model")
    items = [{"question": f"question {i}?"} for i in range(300)]
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": backend}) as rt:
        info = await rt.register(QA)
        await rt.initialize(info.name, info.version)
        result = await rt.run_batch("qa", items, max_concurrency=8, workers=2)
        assert result.stats.completed == 300
        detail = await rt.get_execution(result.results[123].execution_id)
        rows = await batch_executions(store, result.batch_id)
    await backend.aclose()
    assert server.request_count == 300  # every item answered once, by the worker processes
    assert detail.inputs == {"question": "question 123?"}
    assert detail.outputs == {"answer": "answer answer"}
    assert detail.usage["loopback-model"]["prompt_tokens"] > 0
    assert {row.worker_id.rsplit("/", 1)[-1].split("@")[0] for row in rows} <= {"0", "1"}


async def test_a_refused_call_is_recorded_as_failed_with_the_code_of_its_status(
    request: pytest.FixtureRequest, server: OpenAIServer
) -> None:
    server.script(status(401))
    backend = OpenAIBackend("gpt", base_url=server.base_url, model="loopback-model")
    async with (
        open_kind("sqlite", request, FakeClock()) as store,
        make_runtime(store, {"default": backend}) as rt,
    ):
        info = await rt.register(QA)
        await rt.initialize(info.name, info.version)
        result = await rt.execute("qa", {"question": "q?"})
        detail = await rt.get_execution(result.execution_id)
    await backend.aclose()
    assert result.error is not None
    assert result.error.code == "backend_auth"
    assert [(a.outcome.value, a.error_code) for a in detail.attempt_records] == [
        ("failed", "backend_auth")
    ]
    assert server.request_count == 1


# --- the command line ---------------------------------------------------------------------------

runner = CliRunner()


def _cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DSPEX_CONFIG", "DSPEX_DATABASE_URL", "DSPEX_DEFAULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(QA))
    return tmp_path


def test_dspex_batch_over_an_openai_backend_records_every_item(
    workdir: Path, server: OpenAIServer
) -> None:
    (workdir / "dspex.toml").write_text(
        f'[backends.default]\nkind = "openai"\nbase_url = "{server.base_url}"\n'
        'model = "loopback-model"\ntemperature = 0.0\n'
    )
    with (workdir / "in.jsonl").open("w") as handle:
        for i in range(12):
            handle.write(json.dumps({"question": f"q{i}?"}) + "\n")
    assert _cli("program", "register", "qa.yaml", "--init").exit_code == 0
    outcome = _cli("batch", "qa", "in.jsonl", "--out", "out.jsonl", "--concurrency", "4", "--json")
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout)["stats"]["completed"] == 12
    lines = (workdir / "out.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert server.request_count == 12
    assert all(r.json["temperature"] == 0.0 for r in server.requests)


def test_a_wrong_openai_table_exits_two_with_the_reason_and_no_traceback(
    workdir: Path,
) -> None:
    (workdir / "dspex.toml").write_text(
        '[backends.default]\nkind = "openai"\nbase_url = "http://h/v1"\nmodel = "m"\n'
        "max_conections = 3\n"
    )
    outcome = _cli("run", "qa", "-i", "question=q")
    assert outcome.exit_code == 2
    assert "max_conections" in outcome.stderr
    assert "Traceback" not in outcome.output


def test_an_answer_with_ok_content_runs_through_dspex_run(
    workdir: Path, server: OpenAIServer
) -> None:
    server.script(ok(chat_adapter_content({"answer": "Paris"})))
    (workdir / "dspex.toml").write_text(
        f'[backends.default]\nkind = "openai"\nbase_url = "{server.base_url}"\nmodel = "m"\n'
    )
    assert _cli("program", "register", "qa.yaml", "--init").exit_code == 0
    outcome = _cli("run", "qa", "-i", "question=Capital of France?", "--json")
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout)["outputs"] == {"answer": "Paris"}


EXAMPLES = {
    "gpt": """
[backends.gpt]
kind = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
temperature = 0.0
max_connections = 64
""",
    "vllm": """
[backends.vllm]
kind = "openai"
base_url = "http://localhost:8000/v1"
model = "Qwen/Qwen2.5-7B-Instruct"
timeout = 120
params = { top_k = 20, repetition_penalty = 1.05 }
""",
    "ollama": """
[backends.ollama]
kind = "openai"
base_url = "http://localhost:11434/v1"
model = "llama3.2"
""",
    "azure": """
[backends.azure]
kind = "openai"
base_url = "https://example.openai.azure.com/openai/deployments/gpt-4o-mini?api-version=2024-10-21"
model = "gpt-4o-mini"
api_key_env = "AZURE_OPENAI_API_KEY"
api_key_header = "api-key"
""",
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_documented_examples_build_backends(tmp_path: Path, name: str) -> None:
    (tmp_path / "dspex.toml").write_text(EXAMPLES[name])
    settings = load_settings(env={"DSPEX_DEFAULT_BACKEND": name}, cwd=tmp_path)
    built = build_backends(settings)[name]
    assert isinstance(built, OpenAIBackend)
    assert built.transport.url.split("?")[0].endswith("/chat/completions")
