"""The SQLite writer's bulk statements look rows up by key, whatever else the table holds."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dspex.records import ExecutionStatus, FinishRequest
from dspex.store import SqlStore
from dspex.store._sqlite_statements import statements


@pytest.fixture
async def lite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    async with SqlStore(f"sqlite:///{tmp_path}/dspex.db") as store:
        await store.put_program("qa", {}, "hash-1")
        yield store


async def _plan(store: SqlStore, sql: str) -> str:
    def explain(conn: sqlite3.Connection) -> str:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", [None] * sql.count("?")).fetchall()
        return " | ".join(str(row[-1]) for row in rows)

    assert store._writer is not None
    return await store._writer.run(explain)


async def test_finishing_finds_held_rows_by_id_not_by_status(lite_store: SqlStore) -> None:
    # Through the status index, each group would visit every running execution of the file.
    plan = await _plan(lite_store, statements().held_rows_json)
    assert "(id=?)" in plan
    assert "ix_executions_status_lease" not in plan


async def test_claiming_finds_candidates_by_batch_index(lite_store: SqlStore) -> None:
    plan = await _plan(lite_store, statements().claim_candidates)
    assert "ix_executions_batch (batch_id=? AND batch_index=?)" in plan


async def test_a_group_finishes_among_many_other_running_executions(lite_store: SqlStore) -> None:
    other = await lite_store.create_batch("qa", 1, {}, total=500)
    await lite_store.add_and_claim_batch_items(
        other.id, "qa", 1, [(i, {}) for i in range(500)], worker_id="w", lease_seconds=60
    )
    batch = await lite_store.create_batch("qa", 1, {}, total=3)
    claimed = await lite_store.add_and_claim_batch_items(
        batch.id, "qa", 1, [(i, {}) for i in range(3)], worker_id="w", lease_seconds=60
    )
    requests = [FinishRequest(*claimed[i], ExecutionStatus.COMPLETED) for i in range(3)]
    requests.append(FinishRequest(claimed[0][0], "not-the-token", ExecutionStatus.FAILED))
    assert await lite_store.finish_executions(requests) == [True, True, True, False]
    assert await lite_store.batch_item_states(batch.id) == {"completed": 3}
    assert await lite_store.batch_item_states(other.id) == {"running": 500}
    finished = await lite_store.get_execution(claimed[0][0])
    assert (finished.usage, finished.outputs, finished.lease_token) == ({}, None, None)
    assert (await lite_store.get_batch(batch.id)).completed == 3


async def test_groups_larger_than_one_statement_write_every_row(lite_store: SqlStore) -> None:
    # One multi-row statement takes up to 250 rows: 260 take two per table (250 + 10).
    from datetime import UTC, datetime

    from dspex.records import AttemptOutcome, AttemptRecord, StepRecord, StepStatus

    batch = await lite_store.create_batch("qa", 1, {}, total=260)
    claimed = await lite_store.add_and_claim_batch_items(
        batch.id, "qa", 1, [(i, {"q": f"{i}"}) for i in range(260)], worker_id="w", lease_seconds=60
    )
    assert len(claimed) == 260
    now = datetime.now(UTC)
    requests = [
        FinishRequest(
            *claimed[i],
            ExecutionStatus.COMPLETED,
            outputs={"answer": f"a{i}", "score": i / 4},
            usage={"m": {"prompt_tokens": i, "completion_tokens": 1}},
            duration_ms=float(i),
            backend="mock",
            steps=(StepRecord("answer", StepStatus.COMPLETED, now, now, 1.5, 1),),
            attempts=(AttemptRecord("answer", 1, "mock", AttemptOutcome.SUCCEEDED, now, now),),
        )
        for i in range(260)
    ]
    assert await lite_store.finish_executions(requests) == [True] * 260
    assert await lite_store.batch_item_states(batch.id) == {"completed": 260}
    for i in (0, 249, 250, 259):
        record = await lite_store.get_execution(claimed[i][0])
        assert record.outputs == {"answer": f"a{i}", "score": i / 4}
        assert record.usage == {"m": {"prompt_tokens": i, "completion_tokens": 1}}
        assert record.duration_ms == float(i)
        assert [s.module for s in await lite_store.list_steps(record.id)] == ["answer"]
        assert [a.attempt for a in await lite_store.list_attempts(record.id)] == [1]
    assert (await lite_store.get_batch(batch.id)).completed == 260
