"""No secret (a provider key, a bearer key) ever appears in a response, a log line or a row."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service._support import ADMIN_KEY, KEYS, READ_KEY, ready_program

from dspex.service import create_app

SENTINEL = "sk-sentinel-provider-key-5f1e2d3c4b5a"

CONFIG = """
[backends.default]
kind = "mock"

[backends.llm]
kind = "dspy"
model = "openai/gpt-4o-mini"
api_base = "http://127.0.0.1:9/v1"
api_key_env = "DSPEX_TEST_PROVIDER_KEY"
num_retries = 0
"""

LLM_PROGRAM = {
    "name": "llm",
    "signature": "question: str -> answer: str",
    "modules": {
        "answer": {
            "kind": "predict",
            "backend": "llm",
            "signature": "question: str -> answer: str",
            "retry": {"max_attempts": 1},
        }
    },
}


def _rows(database: Path) -> str:
    with sqlite3.connect(database) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return "\n".join(
            repr(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')
        )


def test_no_secret_reaches_responses_logs_or_the_database(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DSPEX_TEST_PROVIDER_KEY", SENTINEL)
    (workdir / "dspex.toml").write_text(CONFIG, encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    app = create_app(f"sqlite:///{workdir / 'dspex.db'}", cwd=workdir, api_keys=KEYS)
    bodies: list[str] = []
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        ready_program(client)
        ready_program(client, LLM_PROGRAM)
        ran = client.post("/programs/qa/executions", json={"inputs": {"question": "q?"}})
        failed = client.post(
            "/programs/llm/executions", json={"inputs": {"question": "q?"}, "timeout": 10}
        )
        assert failed.json()["status"] == "failed"
        batch = client.post("/programs/qa/batches", json=[{"question": "b?"}]).json()["batch_id"]
        execution = ran.json()["execution_id"]
        paths = [
            "/healthz",
            "/readyz",
            "/health",
            "/health?level=comprehensive",
            "/metrics",
            "/programs",
            "/programs/qa",
            "/programs/llm",
            "/programs/llm/graph",
            "/executions",
            f"/executions/{execution}",
            f"/executions/{failed.json()['execution_id']}",
            f"/batches/{batch}/events",
            f"/batches/{batch}",
            f"/batches/{batch}/results",
            "/openapi.json",
        ]
        for path in paths:
            response = client.get(path)
            assert response.status_code in (200, 503), path
            bodies.append(response.text)
            bodies.append(repr(dict(response.headers)))
        bodies.append(client.post("/maintenance/cleanup").text)
        bodies.append(failed.text)
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    stored = _rows(workdir / "dspex.db")
    for secret in (SENTINEL, ADMIN_KEY, READ_KEY):
        for where, text in (("responses", "\n".join(bodies)), ("logs", logs), ("rows", stored)):
            assert secret not in text, f"{secret[:8]}… found in {where}"
