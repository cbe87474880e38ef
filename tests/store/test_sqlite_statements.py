"""The SQLite writer's statements come from the tables: compiled by SQLAlchemy, checked, whole."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dspex.records import ExecutionRecord, ExecutionStatus, FinishRequest
from dspex.store import SqlStore
from dspex.store import _sqlite_jobs as jobs
from dspex.store import _sqlite_statements as s
from dspex.store.tables import attempts, executions, steps


@pytest.fixture
async def lite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    async with SqlStore(f"sqlite:///{tmp_path}/dspex.db") as store:
        await store.put_program("qa", {}, "hash-1")
        yield store


MULTI_ROW: dict[str, tuple[Callable[[int], sa.ClauseElement], tuple[str, ...]]] = {
    "finish_many": (s._finish_many, s.FINISH_COLUMNS),
    "insert_steps": (s._insert_rows(steps, s.STEP_COLUMNS), s.STEP_COLUMNS),
    "insert_attempts": (s._insert_rows(attempts, s.ATTEMPT_COLUMNS), s.ATTEMPT_COLUMNS),
    "add_running_items": (s._running_items, s.RUNNING_ITEM_COLUMNS),
}


@pytest.mark.parametrize("name", sorted(MULTI_ROW))
@pytest.mark.parametrize("rows", [1, 2, 3, 7])
def test_a_multi_row_statement_is_what_sqlalchemy_compiles_for_that_many_rows(
    name: str, rows: int
) -> None:
    build, columns = MULTI_ROW[name]
    compiled = s._compile(build(rows), s._names(columns, rows))
    assert getattr(s.statements(), name).sql(rows) == compiled


def test_a_statement_that_takes_its_parameters_in_another_order_is_refused() -> None:
    stmt = s._finish_one()
    moved = ["b_lease_token", *(f"b_{n}" for n in s.FINISH_COLUMNS[:-1])]
    with pytest.raises(RuntimeError, match="takes parameters"):
        s._compile(stmt, moved)


def test_the_writer_inserts_every_column_of_the_table_in_table_order() -> None:
    names = tuple(c.name for c in executions.columns)
    assert names == s.EXECUTION_COLUMNS
    assert s.statements().insert_execution.startswith(
        f"INSERT INTO executions ({', '.join(names)}) VALUES"
    )


def test_constants_are_written_into_the_sql_not_passed_as_parameters() -> None:
    sql = s.statements().add_running_items.sql(1)
    assert "'running'" in sql
    assert sql.count("?") == len(s.RUNNING_ITEM_COLUMNS)


async def test_an_execution_written_by_the_writer_reads_back_whole_through_sqlalchemy(
    lite_store: SqlStore,
) -> None:
    # Every column set (none left NULL), so each one's conversion is checked end to end.
    now = datetime(2026, 3, 1, 12, 30, 0, tzinfo=UTC)
    batch = await lite_store.create_batch("qa", 1, {}, total=1)
    record = ExecutionRecord(
        id="every-column",
        program="qa",
        program_version=1,
        status=ExecutionStatus.COMPLETED,
        inputs={"question": "où?", "n": [1, 2.5, None, True]},
        outputs={"answer": "là", "nested": {"k": "v"}},
        error_code="none",
        error_message="still a message",
        attempts=2,
        created_at=now,
        started_at=now + timedelta(microseconds=7),
        finished_at=now + timedelta(seconds=1),
        duration_ms=1000.5,
        usage={"m": {"prompt_tokens": 3, "completion_tokens": 4}},
        backend="mock",
        batch_id=batch.id,
        batch_index=0,
        worker_id="w-1",
        lease_token="token",
        lease_expires_at=now + timedelta(minutes=5),
    )
    job = jobs.start_job(record, require_ready=False, require_latest=False)
    assert lite_store._writer is not None
    assert await lite_store._writer.run(job) == 1
    assert await lite_store.get_execution(record.id) == record


async def test_a_group_finish_counts_the_rows_it_changed(lite_store: SqlStore) -> None:
    batch = await lite_store.create_batch("qa", 1, {}, total=3)
    claimed = await lite_store.add_and_claim_batch_items(
        batch.id, "qa", 1, [(i, {}) for i in range(3)], worker_id="w", lease_seconds=60
    )
    finished_at = jobs.ts(datetime.now(UTC))
    rows = [
        jobs.finish_params(FinishRequest(eid, token, ExecutionStatus.COMPLETED), finished_at)[0]
        for eid, token in claimed.values()
    ]
    rows.append(jobs.finish_params(FinishRequest("other", "t", ExecutionStatus.FAILED), None)[0])

    def finish(conn: sqlite3.Connection) -> int:
        return jobs._rows(conn, s.statements().finish_many, rows)

    assert lite_store._writer is not None
    assert await lite_store._writer.run(finish) == 3
    assert await lite_store.batch_item_states(batch.id) == {"completed": 3}
