"""``dspex run --stream``: step lines and the answer token by token from the loopback LM server,
then the usual result; with ``--json``, one JSON event per line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import cli
from tests.support.openai_server import (
    OpenAIServer,
    chat_adapter_content,
    held,
    ok,
    requested_output_fields,
    status,
    truncated,
)

ANSWER = "The capital of France is Paris, on the Seine."

PROGRAM: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {
        "draft": {"kind": "predict", "signature": "question: str -> draft: str"},
        "final": {
            "kind": "predict",
            "signature": "question: str, draft: str -> answer: str",
            "inputs": {"question": "$input.question", "draft": "draft.draft"},
            "retry": {"max_attempts": 2, "initial_interval": 0, "jitter": 0},
        },
    },
    "outputs": {"answer": "final.answer"},
}


def _respond(request: dict[str, Any]) -> str:
    values = {"answer": ANSWER, "draft": "Paris, I think."}
    return chat_adapter_content(
        {name: values.get(name, "x") for name, _ in requested_output_fields(request)}
    )


@pytest.fixture
def server(workdir: Path) -> Iterator[OpenAIServer]:
    with OpenAIServer(_respond) as running:
        (workdir / "dspex.toml").write_text(
            f'[backends.default]\nkind = "openai"\nbase_url = "{running.base_url}"\n'
            'model = "loopback-model"\n'
        )
        (workdir / "qa.yaml").write_text(yaml.safe_dump(PROGRAM, sort_keys=False))
        assert cli("program", "register", "qa.yaml", "--init").code == 0
        yield running


def test_run_stream_prints_steps_and_the_answer_as_it_comes_then_the_result(
    server: OpenAIServer,
) -> None:
    outcome = cli("run", "qa", "--stream", "-i", "question=Capital of France?")
    assert outcome.code == 0, outcome.err
    lines = outcome.out.splitlines()
    assert lines[0] == "step draft (predict) started"
    assert lines[1].startswith("step draft completed in ")
    assert lines[2] == "step final (predict) started"
    assert lines[3] == f"answer: {ANSWER}"
    assert lines[4].startswith("step final completed in ")
    rest = "\n".join(lines[5:])
    for text in ("Outputs", "completed", "execution:"):
        assert text in rest
    assert server.requests[-1].json["stream"] is True


def test_run_stream_json_prints_one_event_per_line_ending_with_the_record(
    server: OpenAIServer,
) -> None:
    outcome = cli("run", "qa", "--stream", "--json", "-i", "question=Capital of France?")
    assert outcome.code == 0, outcome.err
    events = [json.loads(line) for line in outcome.out.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "started"
    assert names[-1] == "done"
    assert names.count("token") > 2
    assert "".join(e["text"] for e in events if e["event"] == "token") == ANSWER
    record = events[-1]["execution"]
    assert record["execution_id"] == events[0]["execution_id"]
    assert record["status"] == "completed"
    assert record["outputs"] == {"answer": ANSWER}
    shown = cli("executions", "show", record["execution_id"], "--json").json()
    assert shown["status"] == "completed"


def test_run_stream_of_a_failing_run_exits_one(server: OpenAIServer) -> None:
    server.script(status(400))
    outcome = cli("run", "qa", "--stream", "-i", "question=?")
    assert outcome.code == 1
    assert "step draft failed in " in outcome.out
    assert "bad_request" in outcome.out


def test_run_stream_of_an_unknown_program_is_a_clean_error(server: OpenAIServer) -> None:
    outcome = cli("run", "nope", "--stream", "--json", "-i", "question=?")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "not_found"
    assert "Traceback" not in outcome.err


def test_run_stream_says_when_a_retry_voids_the_text_shown(server: OpenAIServer) -> None:
    server.script(ok(), truncated())  # the final module's first answer breaks off
    outcome = cli("run", "qa", "--stream", "-i", "question=Capital of France?")
    assert outcome.code == 0, outcome.err
    lines = outcome.out.splitlines()
    at = lines.index("step final: attempt 2, the text above is void")
    assert lines[at - 1].startswith("answer: ")
    assert lines[at - 1] != f"answer: {ANSWER}"
    assert lines[at + 1] == f"answer: {ANSWER}"


@pytest.mark.slow
def test_run_stream_writes_the_first_token_while_the_answer_is_still_coming(
    workdir: Path, server: OpenAIServer
) -> None:
    gate = threading.Event()
    server.script(ok(), held(gate))  # the final answer stops after its first words
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "dspex", "run", "qa", "--stream", "-i", "question=Capital?"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # without flushing the read below would wait for the whole answer: the gate then opens on
    # its own, so that such a failure ends (the process exits) instead of hanging the suite
    release = threading.Timer(90, gate.set)
    release.daemon = True
    release.start()
    try:
        assert process.stdout is not None
        seen = b""
        while b"answer: The" not in seen:
            byte = os.read(process.stdout.fileno(), 1)
            assert byte, f"dspex run ended before its first token: {seen!r}"
            seen += byte
        # the server still holds the rest of the answer: the token was written on its own
        assert process.poll() is None
        gate.set()
        out, err = process.communicate(timeout=120)
    finally:
        release.cancel()
        gate.set()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err.decode()
    assert f"answer: {ANSWER}" in (seen + out).decode()
