"""The CLI never prints a traceback: an unexpected exception is one line (its type, the batch or
execution, where the traceback was written) and exit 70. After a hard crash the batch id is on
stderr from the start, and ``dspex batches`` finds the batch and the command that resumes it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import cli, register_ready

import dspex

SLOW: dict[str, Any] = {
    "name": "slow",
    "signature": "question: str -> answer: str",
    "modules": {
        "answer": {
            "kind": "predict",
            "signature": "question: str -> answer: str",
            "config": {"mock_latency_ms": 60_000},
        }
    },
}


def _inputs(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text(json.dumps({"ticket": "t", "priority": 1}) + "\n")


def _fail_after_start(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``run_batch`` records a batch, announces it, then hits a bug."""
    started: list[str] = []

    async def broken(self: dspex.Runtime, program: str, items: Any, **options: Any) -> Any:
        batch = await self.store.create_batch(program, 1, {}, 1)
        options["on_start"](batch.id)
        started.append(batch.id)
        raise RuntimeError("disk on fire\nand a second line")

    monkeypatch.setattr(dspex.Runtime, "run_batch", broken)
    return started


def test_a_bug_during_a_batch_is_one_line_naming_the_batch_and_the_traceback_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_ready()
    _inputs(workdir)
    started = _fail_after_start(monkeypatch)
    outcome = cli("batch", "triage", "in.jsonl", "--out", "o.jsonl")
    assert outcome.code == 70
    (batch_id,) = started
    start, crash = outcome.err.splitlines()
    assert start.startswith(f"batch {batch_id} started")
    assert crash.startswith(
        f"error: internal error in batch {batch_id}: RuntimeError: disk on fire;"
    )
    assert crash.endswith(
        f"; resume it with: dspex batch triage in.jsonl --resume {batch_id} --out o.jsonl"
    )
    assert "Traceback" not in outcome.err
    log = Path(crash.split("full traceback in ")[1].split(";")[0])
    assert log.parent == workdir / ".dspex" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: disk on fire\nand a second line" in text
    assert f"batch: {batch_id}" in text
    assert "command: dspex batch triage in.jsonl --out o.jsonl" in text


def test_a_bug_with_json_output_is_also_a_json_error_on_stdout(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_ready()
    _inputs(workdir)
    started = _fail_after_start(monkeypatch)
    outcome = cli("batch", "triage", "in.jsonl", "--json")
    assert outcome.code == 70
    error = outcome.json()["error"]
    assert error["code"] == "internal_error"
    assert error["type"] == "RuntimeError"
    assert error["batch_id"] == started[0]
    assert error["resume_command"].endswith(f"--resume {started[0]}")
    assert Path(error["log"]).is_file()


def test_a_bug_in_another_command_names_no_batch(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: dspex.Runtime, **options: Any) -> Any:
        raise KeyError("missing")

    monkeypatch.setattr(dspex.Runtime, "list_batches", broken)
    outcome = cli("batches", "list")
    assert outcome.code == 70
    (line,) = outcome.err.splitlines()
    assert line.startswith("error: internal error: KeyError: 'missing'; full traceback in ")


def test_without_a_data_directory_the_traceback_goes_to_the_temporary_directory(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no such thing")

    monkeypatch.setattr(dspex.Runtime, "open", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(workdir / "tmp"))
    (workdir / "tmp").mkdir()
    outcome = cli("batches", "list")
    assert outcome.code == 70
    log = Path(outcome.err.strip().split("full traceback in ")[1])
    assert log.parent == workdir / "tmp" / "dspex-logs"
    assert not (workdir / ".dspex").exists()


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["TMPDIR"] = str(tmp)
    return env


def test_the_installed_entry_point_never_prints_a_traceback(workdir: Path) -> None:
    code = (
        "import sys, dspex\n"
        "async def broken(self, **options):\n"
        "    raise ZeroDivisionError('division by zero')\n"
        "dspex.Runtime.list_batches = broken\n"
        "from dspex.cli import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "batches", "list", "--json"],
        cwd=workdir,
        env=_env(workdir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 70
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert "ZeroDivisionError: division by zero" in done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "internal_error"
    assert "ZeroDivisionError" in Path(error["log"]).read_text()


class _Batch:
    """``dspex batch slow in.jsonl --out o.jsonl`` in a fresh process, its stderr read by line."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "slow.yaml").write_text(yaml.safe_dump(SLOW))
        assert cli("program", "register", "slow.yaml", "--init").code == 0
        (workdir / "in.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dspex", "batch", "slow", "in.jsonl", "--out", "o.jsonl"],
            cwd=workdir,
            env=_env(workdir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put("")

    def next_line(self) -> str:
        # waits on another process: real time, returned as soon as the line is there
        line = self.lines.get(timeout=120)
        assert line, f"dspex batch exited early ({self.process.poll()})"
        return line.rstrip("\n")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.mark.slow
def test_after_a_hard_kill_the_batch_is_found_by_the_id_printed_at_its_start(
    workdir: Path,
) -> None:
    job = _Batch(workdir)
    try:
        first = job.next_line()
        job.process.send_signal(signal.SIGKILL)
        job.process.wait(timeout=60)
    finally:
        job.stop()
    assert first.startswith("batch ")
    batch_id = first.split()[1]
    assert first.endswith(f"dspex batch slow in.jsonl --resume {batch_id} --out o.jsonl")
    running = cli("batches", "list", "--status", "running", "--json").json()["items"]
    assert [b["batch_id"] for b in running] == [batch_id]
    shown = cli("batches", "show", batch_id[:13], "--json").json()
    assert shown["resume_command"] == (
        f"dspex batch slow {workdir / 'in.jsonl'} --resume {batch_id} --out {workdir / 'o.jsonl'}"
    )


@pytest.mark.slow
def test_a_terminated_batch_prints_the_exact_resume_command(workdir: Path) -> None:
    job = _Batch(workdir)
    try:
        first = job.next_line()
        job.process.send_signal(signal.SIGTERM)
        job.process.wait(timeout=60)
        rest = [line.rstrip("\n") for line in iter(job.lines.get, "")]
    finally:
        job.stop()
    batch_id = first.split()[1]
    assert job.process.returncode == 143
    assert rest[-1] == (
        "terminated: running items were recorded as cancelled; resume it with: "
        f"dspex batch slow in.jsonl --resume {batch_id} --out o.jsonl"
    )
    assert cli("batches", "show", batch_id, "--json").json()["status"] == "cancelled"
