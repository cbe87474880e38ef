"""``dspex batches list|show`` and id prefixes wherever the CLI takes an id."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from pathlib import Path
from typing import Any

from cli_support import cli, register_ready, shared_prefix

import dspex
from dspex.records import BatchStatus


def _tickets(path: Path, n: int, *extra: str) -> Path:
    lines = [json.dumps({"ticket": f"ticket {i}", "priority": i % 3}) for i in range(n)]
    path.write_text("".join(line + "\n" for line in [*lines, *extra]))
    return path


def _batch(*args: str) -> dict[str, Any]:
    data: dict[str, Any] = cli("batch", "triage", "in.jsonl", *args, "--json").json()
    return data


def test_batches_are_listed_newest_first_with_their_counts(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 2)
    first = _batch()
    _tickets(workdir / "in.jsonl", 1, "[1]")
    second = _batch("--validate", "per_item")
    outcome = cli("batches", "list", "--json")
    assert outcome.code == 0
    items = outcome.json()["items"]
    assert [b["batch_id"] for b in items] == [second["batch_id"], first["batch_id"]]
    newest = items[0]
    assert (newest["program"], newest["status"], newest["total"]) == ("triage", "completed", 2)
    assert (newest["completed"], newest["failed"], newest["remaining"]) == (1, 1, 0)
    human = cli("batches", "list")
    assert human.code == 0
    assert first["batch_id"] in human.out
    assert "1/1" not in human.out
    assert "2/2" in human.out


def test_batches_are_filtered_by_program_status_and_limit(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 1)
    first = _batch()
    second = _batch()
    listed = cli("batches", "list", "--limit", "1", "--json").json()["items"]
    assert [b["batch_id"] for b in listed] == [second["batch_id"]]
    assert len(cli("batches", "list", "--program", "triage", "--json").json()["items"]) == 2
    assert cli("batches", "list", "--program", "other", "--json").json()["items"] == []
    completed = cli("batches", "list", "--status", "completed", "--json").json()["items"]
    assert {b["batch_id"] for b in completed} == {first["batch_id"], second["batch_id"]}
    assert cli("batches", "list", "--status", "running", "--json").json()["items"] == []
    assert "no batches" in cli("batches", "list", "--status", "failed").out


def test_an_unknown_status_is_a_usage_error(workdir: Path) -> None:
    outcome = cli("batches", "list", "--status", "done", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["errors"][0]["field"] == "status"


def test_show_takes_a_prefix_and_gives_counts_status_and_the_resume_command(
    workdir: Path,
) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 2, "[1]")
    batch_id = _batch("--validate", "per_item", "--out", "o.jsonl", "-c", "3")["batch_id"]
    outcome = cli("batches", "show", batch_id[:20], "--json")
    assert outcome.code == 0, outcome.err
    data = outcome.json()
    assert data["batch_id"] == batch_id
    assert (data["status"], data["total"], data["completed"], data["failed"]) == (
        "completed",
        3,
        2,
        1,
    )
    assert data["created_at"]
    assert data["resume_command"] == shlex.join(
        [
            "dspex",
            "batch",
            "triage",
            str(workdir / "in.jsonl"),
            "--resume",
            batch_id,
            "--out",
            str(workdir / "o.jsonl"),
            "--concurrency",
            "3",
            "--validate",
            "per_item",
        ]
    )
    human = cli("batches", "show", batch_id[:20])
    assert human.code == 0
    assert f"batch {batch_id}: completed" in human.out
    assert "completed: 2  failed: 1" in human.out
    assert f"resume: {data['resume_command']}" in human.out


def test_the_resume_command_of_show_works_from_another_directory(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 1, "[1]")
    batch_id = _batch("--validate", "per_item", "--out", "o.jsonl")["batch_id"]
    database = f"sqlite:///{workdir / '.dspex' / 'dspex.db'}"
    command = cli("batches", "show", batch_id, "--json").json()["resume_command"]
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    again = cli(*shlex.split(command)[1:], "--database-url", database, "--json")
    assert again.code == 1  # the bad line fails again
    assert again.json()["batch_id"] == batch_id
    assert again.json()["stats"]["skipped"] == 1
    assert len((workdir / "o.jsonl").read_text().splitlines()) == 2


def test_show_of_a_fully_completed_batch_has_no_resume_command(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 1)
    batch_id = _batch()["batch_id"]
    assert cli("batches", "show", batch_id, "--json").json()["resume_command"] is None
    assert "resume" not in cli("batches", "show", batch_id).out


def test_show_of_a_batch_run_from_python_says_how_to_resume_it(workdir: Path) -> None:
    register_ready()

    async def from_python() -> str:
        async with dspex.Runtime.open(cwd=workdir) as rt:
            items = [{"ticket": "t", "priority": 1}, {"nope": 1}]
            return (await rt.run_batch("triage", items, validate="per_item")).batch_id

    batch_id = asyncio.run(from_python())
    data = cli("batches", "show", batch_id, "--json").json()
    assert data["resume_command"] is None
    assert data["config"]["input"] == {"kind": "list"}
    assert "from Python" in cli("batches", "show", batch_id).out


def test_show_of_an_unknown_batch_is_a_usage_error(workdir: Path) -> None:
    outcome = cli("batches", "show", "0000", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "not_found"


def test_an_ambiguous_batch_prefix_lists_the_candidates(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 1)
    ids = sorted(_batch()["batch_id"] for _ in range(2))
    prefix = shared_prefix(ids)
    outcome = cli("batches", "show", prefix, "--json")
    assert outcome.code == 2
    error = outcome.json()["error"]
    assert error["code"] == "ambiguous_id"
    assert [e["message"] for e in error["errors"]] == ids
    human = cli("batches", "show", prefix)
    assert human.code == 2
    lines = human.err.splitlines()
    assert lines[0] == f"error: the id prefix {prefix!r} matches 2 batches; give more of the id:"
    assert [line.split()[1] for line in lines[1:]] == ids


def test_executions_show_takes_a_unique_prefix_and_names_the_batch(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 1)
    batch_id = _batch()["batch_id"]
    page = cli("executions", "list", "--json").json()
    execution_id = page["items"][0]["execution_id"]
    outcome = cli("executions", "show", execution_id[:24], "--json")
    assert outcome.code == 0, outcome.err
    assert outcome.json()["execution_id"] == execution_id
    assert outcome.json()["batch_id"] == batch_id
    assert f"batch: {batch_id}" in cli("executions", "show", execution_id[:24]).out


def test_an_ambiguous_execution_prefix_is_a_usage_error_listing_them(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 2)
    _batch()
    ids = sorted(e["execution_id"] for e in cli("executions", "list", "--json").json()["items"])
    prefix = shared_prefix(ids)
    outcome = cli("executions", "show", prefix, "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "ambiguous_id"
    assert [e["message"] for e in outcome.json()["error"]["errors"]] == ids


def test_show_gives_the_bound_on_backend_calls_per_predictor_call(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 1)
    batch_id = _batch("--max-retries", "3")["batch_id"]
    data = cli("batches", "show", batch_id, "--json").json()
    # no module declares a retry: the default three attempts per run, four runs at most
    assert data["config"]["calls_bound"] == {"summarize": 12, "route": 12, "flag": 12}
    human = cli("batches", "show", batch_id)
    assert "backend calls per predictor call, at most: summarize 12, route 12, flag 12" in human.out


def _open_batch(workdir: Path, *, driven: bool) -> str:
    """A running batch of two items, driven by a live process (``driven``) or by none."""

    async def make() -> str:
        async with dspex.Runtime.open(cwd=workdir) as rt:
            store = rt.store
            program = await store.get_program("triage", None)
            batch = await store.create_batch("triage", program.version, {}, total=2)
            if driven:
                await store.take_batch_driver(batch.id, "replica-1:abc", 3600)
            await store.set_batch_status(batch.id, BatchStatus.RUNNING)
            return batch.id

    return asyncio.run(make())


def test_cancel_records_the_request_for_the_process_driving_the_batch(workdir: Path) -> None:
    register_ready()
    batch_id = _open_batch(workdir, driven=True)
    outcome = cli("batches", "cancel", batch_id[:20], "--json")
    assert outcome.code == 0, outcome.err
    data = outcome.json()
    assert (data["batch_id"], data["status"], data["cancel_requested"]) == (
        batch_id,
        "running",
        True,
    )
    assert data["driver"] == "replica-1:abc"
    human = cli("batches", "cancel", batch_id)
    assert "cancel requested; replica-1:abc stops it" in human.out


def test_cancel_of_a_batch_nobody_runs_cancels_it_at_once(workdir: Path) -> None:
    register_ready()
    batch_id = _open_batch(workdir, driven=False)
    outcome = cli("batches", "cancel", batch_id)
    assert outcome.code == 0, outcome.err
    assert "cancelled" in outcome.out
    assert cli("batches", "show", batch_id, "--json").json()["status"] == "cancelled"


def test_cancel_of_a_finished_batch_is_an_error(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 1)
    batch_id = _batch()["batch_id"]
    outcome = cli("batches", "cancel", batch_id, "--json")
    assert outcome.code != 0
    assert outcome.json()["error"]["code"] == "batch_error"
    assert "already finished" in outcome.json()["error"]["message"]
