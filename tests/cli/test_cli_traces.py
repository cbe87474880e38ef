"""Traces on the command line: ``dspex run``/``executions show`` with recorded step inputs and
outputs (sensitive fields redacted), ``--capture-messages`` against the loopback LM server,
``config show`` listing ``[capture]``, and spans exported by a fresh ``dspex`` process through
the ``OTEL_*`` environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import cli
from tests.support.openai_server import OpenAIServer

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
KEY_ENV = "DSPEX_TEST_CLI_TRACES_KEY"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def lookup(workdir: Path, server: OpenAIServer) -> Path:
    """``lookup`` registered and ready, its LM the loopback server (``openai`` backend)."""
    (workdir / "dspex.toml").write_text(
        "[backends.default]\n"
        'kind = "openai"\n'
        f'base_url = "{server.base_url}"\n'
        'model = "loopback-model"\n'
        f'api_key_env = "{KEY_ENV}"\n'
        "[defaults.retry]\n"
        "max_attempts = 1\n"
    )
    (workdir / "lookup.yaml").write_text(json.dumps(LOOKUP))  # YAML without aliases
    outcome = cli("program", "register", "lookup.yaml", "--init")
    assert outcome.code == 0, outcome.out + outcome.err
    return workdir


def _run(*flags: str) -> dict[str, Any]:
    outcome = cli("run", "lookup", "-i", "question=whose?", "-i", f"ssn={SECRET}", "--json", *flags)
    assert outcome.code == 0, outcome.out + outcome.err
    data: dict[str, Any] = outcome.json()
    return data


def test_run_and_show_give_the_step_inputs_and_outputs_with_sensitive_fields_redacted(
    lookup: Path,
) -> None:
    result = _run()
    (step,) = result["steps"]
    assert step["inputs"] == {"question": "whose?", "ssn": "[redacted]"}
    assert set(step["outputs"]) == {"answer"}

    shown = cli("executions", "show", result["execution_id"], "--json")
    assert shown.code == 0, shown.err
    detail = shown.json()
    assert detail["steps"][0]["inputs"] == step["inputs"]
    (attempt,) = detail["attempt_records"]
    assert attempt["messages"] is None
    assert attempt["response"] is None

    text = cli("executions", "show", result["execution_id"])
    assert "Step inputs and outputs" in text.out
    assert "[redacted]" in text.out
    assert "LM exchange" not in text.out


def test_capture_messages_records_each_attempts_messages_and_response(
    lookup: Path, server: OpenAIServer
) -> None:
    result = _run("--capture-messages")
    detail = cli("executions", "show", result["execution_id"], "--json").json()
    (attempt,) = detail["attempt_records"]
    assert [m["role"] for m in attempt["messages"]] == ["system", "user"]
    assert attempt["response"]["choices"][0]["message"]["content"]
    assert SECRET in json.dumps(server.requests[-1].json)  # the LM got the value
    assert SECRET not in json.dumps(detail["steps"]) + json.dumps(detail["attempt_records"])

    text = cli("executions", "show", result["execution_id"])
    assert "LM exchange: answer attempt 1" in text.out
    assert SECRET not in text.out.split("Step inputs and outputs", 1)[1]


def test_config_show_lists_capture_settings_and_where_they_came_from(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPEX_CAPTURE_REDACT", "token, api_key")
    shown = cli("config", "show", "--json", "--capture-messages")
    assert shown.code == 0, shown.err
    settings = shown.json()["settings"]
    assert settings["capture.inputs_outputs"] == {
        "value": True,
        "source": "default",
        "origin": None,
    }
    assert settings["capture.messages"] == {
        "value": True,
        "source": "flag",
        "origin": "--capture-messages",
    }
    assert settings["capture.redact"] == {
        "value": ["token", "api_key"],
        "source": "environment",
        "origin": "DSPEX_CAPTURE_REDACT",
    }


def test_a_malformed_capture_setting_is_a_clear_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPEX_CAPTURE_MESSAGES", "sometimes")
    shown = cli("config", "show", "--json")
    assert shown.code == 2
    assert "DSPEX_CAPTURE_MESSAGES='sometimes' is not true or false" in shown.out + shown.err


def test_a_fresh_process_exports_spans_where_the_otel_environment_says(lookup: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "lookup-service"}
    done = subprocess.run(
        [sys.executable, "-m", "dspex", "run", "lookup", "-i", "question=q", "-i", f"ssn={SECRET}"],
        cwd=lookup,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"name": "dspex.execution"' in done.stdout
    assert '"name": "dspex.module answer"' in done.stdout
    assert '"name": "chat loopback-model"' in done.stdout
    assert '"gen_ai.operation.name": "chat"' in done.stdout
    assert '"service.name": "lookup-service"' in done.stdout
    assert SECRET not in done.stdout.split('"name": "dspex', 1)[1]
