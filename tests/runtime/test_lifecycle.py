"""Programs through their lifecycle and executions recorded end to end, on every store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.runtime._support import QA, changed, make_runtime, ready

from dspex.actions.programs import PROGRAM_DIR_KEY
from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.config import Settings
from dspex.errors import (
    BadRequestError,
    ConfigError,
    GraphError,
    NotFoundError,
    ProgramStateError,
    SpecError,
    ValidationError,
)
from dspex.records import ProgramStatus
from dspex.runtime import Runtime
from dspex.store import MemoryStore

# -- register / initialize / archive -----------------------------------------------------------


async def test_register_stores_a_new_program_as_draft_version_one(runtime: Runtime) -> None:
    info = await runtime.register(QA)
    assert (info.name, info.version, info.status) == ("qa", 1, "draft")
    assert info.modules == 1
    assert info.signature == "question: str -> answer: str"
    assert len(info.spec_hash) == 64


async def test_registering_an_unchanged_spec_returns_the_same_version(runtime: Runtime) -> None:
    first = await runtime.register(QA)
    again = await runtime.register(changed(QA))
    assert (again.version, again.spec_hash) == (first.version, first.spec_hash)


async def test_registering_a_changed_spec_creates_the_next_version(runtime: Runtime) -> None:
    await runtime.register(QA)
    second = await runtime.register(changed(QA, description="now documented"))
    assert (second.version, second.status) == (2, "draft")
    versions = await runtime.list_programs(all_versions=True)
    assert [(p.name, p.version) for p in versions] == [("qa", 1), ("qa", 2)]
    assert [p.version for p in await runtime.list_programs()] == [2]


async def test_register_rejects_a_malformed_spec_and_stores_nothing(runtime: Runtime) -> None:
    with pytest.raises(SpecError):
        await runtime.register({"name": "qa", "modules": {}})
    assert await runtime.list_programs() == []


async def test_register_rejects_a_broken_graph(runtime: Runtime) -> None:
    broken = changed(QA, outputs={"answer": "nowhere.answer"})
    with pytest.raises(GraphError):
        await runtime.register(broken)


async def test_register_reads_a_yaml_file(runtime: Runtime, tmp_path: Any) -> None:
    path = tmp_path / "qa.yaml"
    path.write_text(
        "name: qa\nsignature: 'question: str -> answer: str'\nmodules:\n"
        "  answer: {kind: predict, signature: 'question: str -> answer: str'}\n"
    )
    info = await runtime.register(str(path))
    assert (info.name, info.version) == ("qa", 1)
    assert (await runtime.load_program("qa")).name == "qa"


@pytest.mark.parametrize("file_first", [True, False], ids=["file-first", "mapping-first"])
async def test_the_same_spec_from_a_file_or_as_a_mapping_is_one_version(
    runtime: Runtime, tmp_path: Path, file_first: bool
) -> None:
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(QA, sort_keys=False))
    sources: list[Any] = [str(path), yaml.safe_load(path.read_text())]
    if not file_first:
        sources.reverse()
    first = await runtime.register(sources[0])
    again = await runtime.register(sources[1])
    assert (
        (again.version, again.spec_hash) == (first.version, first.spec_hash) == (1, again.spec_hash)
    )
    assert [p.version for p in await runtime.list_programs(all_versions=True)] == [1]
    assert "metadata" not in (await runtime.load_program("qa")).to_dict()


def _rag(corpus: str) -> dict[str, Any]:
    return {
        "name": "rag",
        "signature": "q: str -> passages: list[str]",
        "modules": {"r": {"kind": "retrieve", "corpus": corpus, "inputs": {"query": "$input.q"}}},
    }


async def test_a_relative_corpus_in_corpus_dirs_is_stored_alike_from_a_file_or_a_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    (corpora / "facts.txt").write_text("Paris is the capital of France.\n")
    path = tmp_path / "rag.yaml"
    path.write_text(yaml.safe_dump(_rag("corpora/facts.txt")))
    monkeypatch.chdir(tmp_path)  # a mapping's relative corpus is read from the working directory
    runtime = Runtime(
        Settings(corpus_dirs=(str(corpora),)),
        MemoryStore(),
        backends={"default": MockBackend("default")},
    )
    async with runtime as rt:
        from_file = await rt.register(path)
        from_mapping = await rt.register(_rag("corpora/facts.txt"))
        spec = (await rt.load_program("rag")).to_dict()
    assert from_mapping.version == from_file.version == 1
    assert spec["modules"]["r"]["corpus"] == str((corpora / "facts.txt").resolve())
    assert "metadata" not in spec


async def test_a_corpus_only_its_program_directory_allows_keeps_that_directory(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "facts.txt").write_text("Paris is the capital of France.\n")
    path = app / "rag.yaml"
    path.write_text(yaml.safe_dump(_rag("facts.txt")))
    async with make_runtime(MemoryStore()) as rt:
        await rt.register(path)
        program = await rt.load_program("rag")
    assert program.to_dict()["metadata"] == {PROGRAM_DIR_KEY: str(app.resolve())}
    assert program.base_dir == app.resolve()


async def test_initialize_makes_a_draft_ready(runtime: Runtime) -> None:
    await runtime.register(QA)
    info = await runtime.initialize("qa")
    assert (info.status, info.error) == ("ready", None)
    assert (await runtime.get_program("qa")).status == "ready"


async def test_initialize_records_why_a_program_cannot_run(runtime: Runtime) -> None:
    spec = changed(QA)
    spec["modules"]["answer"]["backend"] = "missing"
    await runtime.register(spec)
    info = await runtime.initialize("qa")
    assert info.status == "error"
    assert info.error is not None
    assert "missing" in info.error


async def test_initialize_refuses_an_archived_program(runtime: Runtime) -> None:
    await runtime.register(QA)
    await runtime.archive("qa")
    with pytest.raises(ProgramStateError, match="archived"):
        await runtime.initialize("qa")


async def test_archive_makes_a_program_final(runtime: Runtime) -> None:
    await ready(runtime)
    info = await runtime.archive("qa")
    assert info.status == "archived"
    with pytest.raises(ProgramStateError, match="archived"):
        await runtime.execute("qa", {"question": "why?"})


async def test_unknown_program_raises_not_found(runtime: Runtime) -> None:
    with pytest.raises(NotFoundError):
        await runtime.get_program("nope")
    with pytest.raises(NotFoundError):
        await runtime.execute("nope", {})


# -- execute -------------------------------------------------------------------------------------


async def test_execution_completes_and_is_recorded(runtime: Runtime) -> None:
    await ready(runtime)
    result = await runtime.execute("qa", {"question": "What is DSPy?"})
    assert result.status == "completed"
    assert result.ok
    assert isinstance(result.outputs, dict)
    assert isinstance(result.outputs["answer"], str)
    assert [s.module for s in result.steps] == ["answer"]
    assert result.attempts == 1
    assert result.usage["mock"]["total_tokens"] > 0

    detail = await runtime.get_execution(result.execution_id)
    assert detail.status == "completed"
    assert detail.outputs == result.outputs
    assert detail.inputs == {"question": "What is DSPy?"}
    assert detail.worker_id == "worker-1"
    assert detail.backend == "default"
    assert detail.usage == result.usage
    assert [(s.module, s.status, s.backend) for s in detail.steps] == [
        ("answer", "completed", "default")
    ]
    assert [(a.module, a.attempt, a.outcome) for a in detail.attempt_records] == [
        ("answer", 1, "succeeded")
    ]


async def test_execution_bumps_the_program_counters(runtime: Runtime) -> None:
    await ready(runtime)
    for _ in range(3):
        await runtime.execute("qa", {"question": "why?"})
    info = await runtime.get_program("qa")
    assert (info.execution_count, info.success_count, info.failure_count) == (3, 3, 0)
    assert info.success_rate == 1.0


async def test_executing_a_draft_names_its_status_and_how_to_fix_it(runtime: Runtime) -> None:
    await runtime.register(QA)
    with pytest.raises(ProgramStateError, match=r"draft.*dspex program init qa") as caught:
        await runtime.execute("qa", {"question": "why?"})
    assert caught.value.status == "draft"
    assert (await runtime.list_executions()).items == []


async def test_execute_runs_the_latest_version_only_when_it_is_ready(runtime: Runtime) -> None:
    await ready(runtime)
    await runtime.register(changed(QA, description="v2"))
    with pytest.raises(ProgramStateError, match="v2 is draft"):
        await runtime.execute("qa", {"question": "why?"})
    pinned = await runtime.execute("qa", {"question": "why?"}, version=1)
    assert (pinned.status, pinned.program_version) == ("completed", 1)


async def test_bad_inputs_raise_every_error_and_record_nothing(runtime: Runtime) -> None:
    await ready(runtime, changed(QA, signature="question: str, n: int -> answer: str"))
    with pytest.raises(ValidationError) as caught:
        await runtime.execute("qa", {"n": "many"})
    assert {e.field for e in caught.value.errors} >= {"question", "n"}
    assert (await runtime.list_executions()).items == []
    assert (await runtime.get_program("qa")).execution_count == 0


async def test_unknown_backend_override_is_a_config_error(runtime: Runtime) -> None:
    await ready(runtime)
    with pytest.raises(ConfigError, match="nope"):
        await runtime.execute("qa", {"question": "why?"}, backend="nope")


async def test_unknown_strategy_is_a_config_error_before_recording(runtime: Runtime) -> None:
    await ready(runtime)
    with pytest.raises(ConfigError, match="fastest"):
        await runtime.execute("qa", {"question": "why?"}, strategy="fastest")
    assert (await runtime.list_executions()).items == []


async def test_non_positive_timeout_is_refused(runtime: Runtime) -> None:
    await ready(runtime)
    with pytest.raises(ValidationError, match="timeout"):
        await runtime.execute("qa", {"question": "why?"}, timeout=0)


async def test_a_failing_module_is_recorded_with_its_code_and_message() -> None:
    async def refuse(request: PredictRequest) -> dict[str, Any]:
        raise BadRequestError("the prompt is malformed")

    backends = {"default": MockBackend("default", handler=refuse)}
    async with make_runtime(MemoryStore(), backends) as rt:
        await ready(rt)
        result = await rt.execute("qa", {"question": "why?"})
        assert result.status == "failed"
        assert result.outputs is None
        assert result.error is not None
        assert (result.error.code, result.error.module) == ("backend_bad_request", "answer")
        assert "malformed" in result.error.message
        detail = await rt.get_execution(result.execution_id)
        assert (detail.status, detail.error) == ("failed", result.error)
        assert [a.outcome for a in detail.attempt_records] == ["failed"]
        assert detail.attempt_records[0].error_code == "backend_bad_request"
        info = await rt.get_program("qa")
        assert (info.execution_count, info.failure_count) == (1, 1)


async def test_outputs_breaking_a_constraint_fail_the_execution() -> None:
    constrained = changed(
        QA,
        signature={
            "signature": "question: str -> answer: str",
            "constraints": {"answer": {"max_length": 3}},
        },
    )

    def wordy(request: PredictRequest) -> dict[str, Any]:
        return {"answer": "far too long an answer"}

    async with make_runtime(MemoryStore(), {"default": MockBackend(handler=wordy)}) as rt:
        await ready(rt, constrained)
        result = await rt.execute("qa", {"question": "why?"})
        assert result.status == "failed"
        assert result.error is not None
        assert result.error.code == "validation_error"
        assert "answer" in result.error.message
        detail = await rt.get_execution(result.execution_id)
        assert detail.error is not None
        assert detail.error.code == "validation_error"


async def test_backend_override_runs_every_predict_module_on_that_backend() -> None:
    backends = {"default": MockBackend("default"), "other": MockBackend("other")}
    async with make_runtime(MemoryStore(), backends) as rt:
        await ready(rt)
        result = await rt.execute("qa", {"question": "why?"}, backend="other")
        assert [s.backend for s in result.steps] == ["other"]
        assert (await rt.get_execution(result.execution_id)).backend == "other"
        assert backends["other"].calls == 1
        assert backends["default"].calls == 0


async def test_after_execution_hooks_see_the_recorded_result() -> None:
    seen: list[str] = []

    class Recorder:
        async def after_execution(self, *, result: Any) -> None:
            seen.append(result.status)

    async with make_runtime(MemoryStore(), hooks=[Recorder()]) as rt:
        await ready(rt)
        await rt.execute("qa", {"question": "why?"})
    assert seen == ["completed"]


async def test_initialize_then_execute_after_a_program_error_is_fixed() -> None:
    backends = {"default": MockBackend("default")}
    async with make_runtime(MemoryStore(), backends) as rt:
        spec = changed(QA)
        spec["modules"]["answer"]["backend"] = "later"
        await rt.register(spec)
        assert (await rt.initialize("qa")).status == "error"
        assert (await rt.store.get_program("qa")).status is ProgramStatus.ERROR


# -- queries -------------------------------------------------------------------------------------


async def test_list_executions_filters_and_pages(runtime: Runtime) -> None:
    await ready(runtime)
    ids = [(await runtime.execute("qa", {"question": str(i)})).execution_id for i in range(3)]
    first = await runtime.list_executions(program="qa", limit=2)
    assert len(first.items) == 2
    assert first.next_cursor is not None
    rest = await runtime.list_executions(program="qa", limit=2, cursor=first.next_cursor)
    listed = [i.execution_id for i in (*first.items, *rest.items)]
    assert listed == list(reversed(ids))
    assert (await runtime.list_executions(status="failed")).items == []
    assert len((await runtime.list_executions(status="completed")).items) == 3


async def test_list_executions_rejects_an_unknown_status(runtime: Runtime) -> None:
    with pytest.raises(ValidationError, match="status"):
        await runtime.list_executions(status="done")


async def test_unknown_execution_raises_not_found(runtime: Runtime) -> None:
    with pytest.raises(NotFoundError):
        await runtime.get_execution("no-such-id")


async def test_graph_shows_the_plan_modules_and_last_run(runtime: Runtime) -> None:
    await ready(runtime)
    empty = await runtime.graph("qa")
    assert empty.last_run is None
    result = await runtime.execute("qa", {"question": "why?"})
    info = await runtime.graph("qa")
    assert info.plan["order"] == ["answer"]
    assert [(m.name, m.kind, m.depends_on, m.backend) for m in info.modules] == [
        ("answer", "predict", [], "default")
    ]
    assert info.last_run is not None
    assert info.last_run.execution_id == result.execution_id


async def test_results_dump_to_json_with_stable_keys(runtime: Runtime) -> None:
    await ready(runtime)
    result = await runtime.execute("qa", {"question": "why?"})
    dumped = result.model_dump(mode="json")
    assert list(dumped) == [
        "execution_id",
        "program",
        "program_version",
        "status",
        "outputs",
        "error",
        "duration_ms",
        "usage",
        "steps",
        "attempts",
        "cost_usd",
    ]
    detail = (await runtime.get_execution(result.execution_id)).model_dump(mode="json")
    assert {"inputs", "created_at", "attempt_records", "worker_id"} <= set(detail)


async def test_a_program_archived_after_running_refuses_new_executions(runtime: Runtime) -> None:
    await ready(runtime)
    await runtime.execute("qa", {"question": "why?"})  # the ready record is now cached
    await runtime.archive("qa")
    with pytest.raises(ProgramStateError, match="archived") as caught:
        await runtime.execute("qa", {"question": "why?"})
    assert caught.value.status == "archived"
    assert len((await runtime.list_executions()).items) == 1


async def test_a_newer_version_registered_after_running_is_the_one_executed(
    runtime: Runtime,
) -> None:
    await ready(runtime)
    await runtime.execute("qa", {"question": "why?"})
    await runtime.register(changed(QA, description="v2"))
    with pytest.raises(ProgramStateError, match="v2 is draft"):
        await runtime.execute("qa", {"question": "why?"})
    await runtime.initialize("qa")
    assert (await runtime.execute("qa", {"question": "why?"})).program_version == 2
