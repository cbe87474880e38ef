"""Pre-written SQLite statements and write jobs for the dedicated writer (no SQLAlchemy here).

The hot writes of the SQL store on SQLite skip SQLAlchemy's statement compilation: these strings
and value conversions produce exactly what SQLAlchemy stores for :mod:`dspex.store.tables`
(timestamps as naive UTC text with microseconds, JSON as ``json.dumps`` text, ``None`` JSON as
SQL NULL), so either side reads what the other wrote. The store's contract suite runs every
statement here against the migrated schema.

Each ``*_job`` function runs inside the writer thread, inside its own SAVEPOINT, and returns
plain data; deciding which error to raise happens back on the event loop.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import orjson

from dspex.errors import StorageError
from dspex.records import (
    AttemptRecord,
    ExecutionRecord,
    ExecutionStatus,
    FinishRequest,
    StepRecord,
)
from dspex.store.base import claimable, counts_toward_program

__all__ = [
    "EXECUTION_COLUMNS",
    "MULTI_ROW_STATEMENTS",
    "add_and_claim_job",
    "add_items_job",
    "claim_items_job",
    "dumps",
    "execution_from_tuple",
    "execution_params",
    "finish_many_job",
    "finish_one_job",
    "heartbeat_lease_job",
    "start_job",
    "ts",
]

Job = Callable[[sqlite3.Connection], Any]

# The executions table's columns in table order (a test checks them against tables.py).
EXECUTION_COLUMNS = (
    "id",
    "program",
    "program_version",
    "batch_id",
    "batch_index",
    "status",
    "inputs",
    "outputs",
    "error_code",
    "error_message",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "usage",
    "backend",
    "worker_id",
    "lease_token",
    "lease_expires_at",
)
_COLS = ", ".join(EXECUTION_COLUMNS)
_MARKS = ", ".join("?" * len(EXECUTION_COLUMNS))
_RUNNING = ExecutionStatus.RUNNING.value

INSERT_EXECUTION = f"INSERT INTO executions ({_COLS}) VALUES ({_MARKS})"
_GUARDED_INSERT = f"INSERT INTO executions ({_COLS}) SELECT {_MARKS} FROM programs p"
_FINISH_SET = (
    "UPDATE executions SET status = ?, outputs = ?, error_code = ?, error_message = ?,"
    " usage = ?, duration_ms = ?, backend = ?, finished_at = ?, lease_token = NULL,"
    " lease_expires_at = NULL WHERE id = ? AND lease_token = ? AND status = 'running'"
)
FINISH_RETURNING_ROW = f"{_FINISH_SET} RETURNING {_COLS}"
# The executions a finish group still holds, as ONE row of JSON: a result row is a step of the
# statement, and every step lets go of the GIL and must win it back (see _rows below). Found by
# id (``+status`` keeps SQLite off the status index, which would visit every running row).
HELD_ROWS_JSON = (
    "SELECT json_group_array(json_array(id, lease_token, program, program_version, batch_id))"
    " FROM executions WHERE id IN (SELECT value FROM json_each(?)) AND +status = 'running'"
)
_FINISH_FROM_VALUES = (
    "UPDATE executions SET status = v.column1, outputs = v.column2, error_code = v.column3,"
    " error_message = v.column4, usage = v.column5, duration_ms = v.column6,"
    " backend = v.column7, finished_at = v.column8, lease_token = NULL,"
    " lease_expires_at = NULL FROM (VALUES {rows}) AS v WHERE executions.id = v.column9"
    " AND executions.lease_token = v.column10 AND executions.status = 'running'"
)
_INSERT_STEPS = (
    "INSERT INTO steps (execution_id, module, status, started_at, ended_at, duration_ms,"
    " attempts, error_code, error_message, usage) VALUES {rows}"
)
_INSERT_ATTEMPTS = (
    "INSERT INTO attempts (execution_id, module, attempt, backend, outcome, started_at,"
    " ended_at, error_code, http_status, retry_after, prompt_tokens, completion_tokens)"
    " VALUES {rows}"
)
_ADD_RUNNING_ITEMS = (
    "INSERT INTO executions (id, program, program_version, batch_id, batch_index, status,"
    " inputs, attempts, created_at, started_at, usage, worker_id, lease_token, lease_expires_at)"
    " VALUES {rows} ON CONFLICT (batch_id, batch_index) DO NOTHING"
)
_RUNNING_ITEM_ROW = "(?, ?, ?, ?, ?, 'running', ?, 1, ?, ?, '{}', ?, ?, ?)"
# Rows per multi-row statement: 250 rows of 12 values stay far below SQLite's variable limit
# (32,766), and a batch's group of finished items (200 by default) is one statement per table.
_ROWS_PER_STATEMENT = 250
# Each multi-row template with the shape of one of its rows (the schema test compiles them).
MULTI_ROW_STATEMENTS = {
    _FINISH_FROM_VALUES: "(" + ", ".join("?" * 10) + ")",
    _INSERT_STEPS: "(" + ", ".join("?" * 10) + ")",
    _INSERT_ATTEMPTS: "(" + ", ".join("?" * 12) + ")",
    _ADD_RUNNING_ITEMS: _RUNNING_ITEM_ROW,
}
EXECUTION_EXISTS = "SELECT 1 FROM executions WHERE id = ?"
BUMP_PROGRAM = (
    "UPDATE programs SET execution_count = execution_count + ?,"
    " success_count = success_count + ?, failure_count = failure_count + ?,"
    " total_duration_ms = total_duration_ms + ? WHERE name = ? AND version = ?"
)
BUMP_BATCH = (
    "UPDATE batches SET completed = completed + ?, failed = failed + ?,"
    " cancelled = cancelled + ? WHERE id = ?"
)
ADD_ITEM = (
    "INSERT INTO executions (id, program, program_version, batch_id, batch_index, status,"
    " inputs, attempts, created_at, usage) VALUES (?, ?, ?, ?, ?, 'pending', ?, 0, ?, '{}')"
    " ON CONFLICT (batch_id, batch_index) DO NOTHING"
)
# One static statement for any number of indexes: they travel as one JSON array.
CLAIM_CANDIDATES = (
    "SELECT id, batch_index, status, lease_expires_at FROM executions"
    " WHERE batch_id = ? AND batch_index IN (SELECT value FROM json_each(?))"
)
CLAIM_ONE = (
    "UPDATE executions SET status = 'running', started_at = ?, attempts = attempts + 1,"
    " worker_id = ?, lease_token = ?, lease_expires_at = ? WHERE id = ?"
)
RELEASE_FROM_BATCH = (
    "UPDATE batches SET failed = failed - ?, cancelled = cancelled - ? WHERE id = ?"
)
HEARTBEAT_LEASE = (
    "UPDATE executions SET lease_expires_at = ? WHERE lease_token = ? AND status = 'running'"
)


def guarded_insert(ready: bool, latest: bool) -> str:
    """``INSERT … SELECT`` that inserts only while the program version allows it."""
    sql = f"{_GUARDED_INSERT} WHERE p.name = ? AND p.version = ?"
    if ready:
        sql += " AND p.status = 'ready'"
    if latest:
        sql += " AND NOT EXISTS (SELECT 1 FROM programs n WHERE n.name = ? AND n.version > ?)"
    return sql


# -- values ---------------------------------------------------------------------------------


def ts(value: datetime | None) -> str | None:
    """A timestamp as SQLAlchemy stores it on SQLite: naive UTC text with microseconds."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise StorageError("naive datetimes are ambiguous; pass a timezone-aware one")
        value = value.astimezone(UTC)
    # isoformat is several times faster than strftime; it drops a zero microsecond part. Cutting
    # the "+00:00" off the text is cheaper than building a naive copy of the datetime first.
    text = value.isoformat(" ")[:-6]
    return text if value.microsecond else text + ".000000"


def parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


# Exactly ``json.dumps`` with its defaults, without re-reading its keyword arguments per call.
_encode = json.JSONEncoder().encode
# orjson writes the same JSON about ten times faster (compact, and a non-finite float becomes
# null, as PostgreSQL's JSON would refuse it anyway); the stdlib encoder is the fallback.
_orjson_dumps = orjson.dumps
_chain = chain.from_iterable


def dumps(value: Any, what: str) -> str | None:
    """JSON text as SQLAlchemy writes it (``None`` stays SQL NULL).

    Raises:
        StorageError: the value is not JSON-serialisable.
    """
    if value is None:
        return None
    try:
        return _orjson_dumps(value).decode()
    except TypeError:
        pass  # keys that are not strings, integers beyond 64 bits: the stdlib encoder takes them
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{what} is not JSON-serialisable: {exc}") from exc


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def execution_params(record: ExecutionRecord) -> tuple[Any, ...]:
    """Insert values for one execution, in :data:`EXECUTION_COLUMNS` order."""
    return (
        record.id,
        record.program,
        record.program_version,
        record.batch_id,
        record.batch_index,
        record.status.value,
        dumps(record.inputs, "inputs"),
        dumps(record.outputs, "outputs"),
        record.error_code,
        record.error_message,
        record.attempts,
        ts(record.created_at),
        ts(record.started_at),
        ts(record.finished_at),
        record.duration_ms,
        dumps(record.usage, "usage"),
        record.backend,
        record.worker_id,
        record.lease_token,
        ts(record.lease_expires_at),
    )


def execution_from_tuple(row: Sequence[Any]) -> ExecutionRecord:
    """An execution from a row of :data:`EXECUTION_COLUMNS`."""
    return ExecutionRecord(
        id=row[0],
        program=row[1],
        program_version=row[2],
        batch_id=row[3],
        batch_index=row[4],
        status=ExecutionStatus(row[5]),
        inputs=_loads(row[6]),
        outputs=_loads(row[7]),
        error_code=row[8],
        error_message=row[9],
        attempts=row[10],
        created_at=parse_ts(row[11]),  # type: ignore[arg-type]  # NOT NULL column
        started_at=parse_ts(row[12]),
        finished_at=parse_ts(row[13]),
        duration_ms=row[14],
        usage=_loads(row[15]),
        backend=row[16],
        worker_id=row[17],
        lease_token=row[18],
        lease_expires_at=parse_ts(row[19]),
    )


def _step_row(
    execution_id: str, s: StepRecord, started: str | None, ended: str | None, usage: str | None
) -> tuple[Any, ...]:
    return (
        execution_id,
        s.module,
        s.status._value_,
        started,
        ended,
        s.duration_ms,
        s.attempts,
        s.error_code,
        s.error_message,
        usage,
    )


def _attempt_row(
    execution_id: str, a: AttemptRecord, started: str | None, ended: str | None
) -> tuple[Any, ...]:
    return (
        execution_id,
        a.module,
        a.attempt,
        a.backend,
        a.outcome._value_,
        started,
        ended,
        a.error_code,
        a.http_status,
        a.retry_after,
        a.prompt_tokens,
        a.completion_tokens,
    )


def step_params(execution_id: str, steps: Iterable[StepRecord]) -> list[tuple[Any, ...]]:
    return [
        _step_row(execution_id, s, ts(s.started_at), ts(s.ended_at), dumps(s.usage, "step usage"))
        for s in steps
    ]


def attempt_params(execution_id: str, attempts: Iterable[AttemptRecord]) -> list[tuple[Any, ...]]:
    return [_attempt_row(execution_id, a, ts(a.started_at), ts(a.ended_at)) for a in attempts]


def finish_params(
    request: FinishRequest, finished_at: str | None
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The UPDATE values, step rows and attempt rows of one finish (all converted up front)."""
    eid = request.execution_id
    usage = dumps(request.usage, "usage") if request.usage else "{}"
    update = (
        request.status._value_,
        dumps(request.outputs, "outputs"),
        request.error_code,
        request.error_message,
        usage,
        request.duration_ms,
        request.backend,
        finished_at,
        eid,
        request.lease_token,
    )
    steps = request.steps
    attempts = request.attempts
    if len(steps) != 1 or len(attempts) > 1:
        return update, step_params(eid, steps), attempt_params(eid, attempts)
    # One step and at most one backend call (every one-module run without retries): the step
    # and its attempt share their timestamps, and a step's usage is usually the execution's.
    s = steps[0]
    started = ts(s.started_at)
    ended = ts(s.ended_at)
    step_usage = usage if s.usage is request.usage else dumps(s.usage, "step usage")
    step_rows = [_step_row(eid, s, started, ended, step_usage)]
    if not attempts:
        return update, step_rows, []
    a = attempts[0]
    attempt_started = started if a.started_at is s.started_at else ts(a.started_at)
    attempt_ended = ended if a.ended_at is s.ended_at else ts(a.ended_at)
    return update, step_rows, [_attempt_row(eid, a, attempt_started, attempt_ended)]


# -- multi-row statements ---------------------------------------------------------------------


@functools.cache
def _statement(template: str, row: str, count: int) -> str:
    return template.format(rows=", ".join([row] * count))


def _placeholders(width: int) -> str:
    return "(" + ", ".join("?" * width) + ")"


def _rows(
    conn: sqlite3.Connection, template: str, rows: Sequence[tuple[Any, ...]], row: str = ""
) -> int:
    """Run ``template`` with its ``{rows}`` as ``VALUES`` rows; returns the rows changed.

    ``executemany`` steps one statement per row, and the sqlite3 module releases the GIL around
    every step: under a busy event loop each row then waits for the interpreter's switch
    interval to get it back (hundreds of microseconds a row). One statement of up to
    :data:`_ROWS_PER_STATEMENT` rows is one step.
    """
    if not rows:
        return 0
    row = row or _placeholders(len(rows[0]))
    changed = 0
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        part = rows[start : start + _ROWS_PER_STATEMENT]
        sql = _statement(template, row, len(part))
        changed += conn.execute(sql, list(_chain(part))).rowcount
    return changed


# -- jobs (run in the writer thread) --------------------------------------------------------


def start_job(sql: str, params: tuple[Any, ...]) -> Job:
    """Insert one execution; the job returns how many rows were inserted (0 when refused)."""

    def job(conn: sqlite3.Connection) -> int:
        return conn.execute(sql, params).rowcount

    return job


def _children(
    conn: sqlite3.Connection, steps: list[tuple[Any, ...]], attempts: list[tuple[Any, ...]]
) -> None:
    _rows(conn, _INSERT_STEPS, steps)
    _rows(conn, _INSERT_ATTEMPTS, attempts)


def _counter_row(
    status: ExecutionStatus, duration_ms: float | None, program: str, version: int
) -> tuple[Any, ...]:
    return (
        1,
        int(status is ExecutionStatus.COMPLETED),
        int(status is ExecutionStatus.FAILED),
        duration_ms or 0.0,
        program,
        version,
    )


def finish_one_job(request: FinishRequest, finished_at: str | None) -> Job:
    """End one execution under its lease. The job returns the finished row, or ``None`` when
    the lease was lost, or ``False`` when the execution does not exist."""
    update, steps, attempts = finish_params(request, finished_at)
    count = counts_toward_program(request.status, request.bump_counters)

    def job(conn: sqlite3.Connection) -> tuple[Any, ...] | bool | None:
        row = conn.execute(FINISH_RETURNING_ROW, update).fetchone()
        if row is None:
            exists = conn.execute(EXECUTION_EXISTS, (request.execution_id,)).fetchone()
            return None if exists else False
        _children(conn, steps, attempts)
        if count:
            conn.execute(BUMP_PROGRAM, _counter_row(request.status, request.duration_ms, *row[1:3]))
        return tuple(row)

    return job


def finish_many_job(requests: Sequence[FinishRequest], finished_at: str | None) -> Job:
    """End many executions, each under its own lease; the job returns which were written.

    One read finds which requests still hold their execution (the writer holds the write lock,
    so nothing changes between that read and the writes); then every write is a multi-row
    statement.
    Program counters and batch counts get one UPDATE per program version and per batch, with
    the summed deltas of the rows actually written.
    """
    prepared = [finish_params(r, finished_at) for r in requests]
    wanted = _orjson_dumps([r.execution_id for r in requests]).decode()

    def job(conn: sqlite3.Connection) -> list[bool]:
        found = conn.execute(HELD_ROWS_JSON, (wanted,)).fetchone()[0]
        held = {row[0]: row for row in orjson.loads(found)}
        written: list[bool] = []
        updates: list[tuple[Any, ...]] = []
        steps: list[tuple[Any, ...]] = []
        attempts: list[tuple[Any, ...]] = []
        programs: dict[tuple[str, int], list[float]] = {}
        batches: dict[str, list[int]] = {}
        for request, (update, step_rows, attempt_rows) in zip(requests, prepared, strict=True):
            row = held.get(request.execution_id)
            if row is None or row[1] != request.lease_token:
                written.append(False)
                continue
            del held[request.execution_id]  # the same execution twice: the first one wins
            written.append(True)
            updates.append(update)
            steps.extend(step_rows)
            attempts.extend(attempt_rows)
            status = request.status
            if counts_toward_program(status, request.bump_counters):
                p = programs.setdefault((row[2], row[3]), [0, 0, 0, 0.0])
                p[0] += 1
                p[1] += int(status is ExecutionStatus.COMPLETED)
                p[2] += int(status is ExecutionStatus.FAILED)
                p[3] += request.duration_ms or 0.0
            if row[4] is not None:
                b = batches.setdefault(row[4], [0, 0, 0])
                b[0] += int(status is ExecutionStatus.COMPLETED)
                b[1] += int(status is ExecutionStatus.FAILED)
                b[2] += int(status is ExecutionStatus.CANCELLED)
        _rows(conn, _FINISH_FROM_VALUES, updates)
        _children(conn, steps, attempts)
        if programs:
            conn.executemany(BUMP_PROGRAM, [(*d, *key) for key, d in programs.items()])
        if batches:
            conn.executemany(BUMP_BATCH, [(*d, bid) for bid, d in batches.items()])
        return written

    return job


def add_items_job(
    batch_id: str,
    program: str,
    version: int,
    items: Sequence[tuple[int, Mapping[str, Any]]],
    new_id: Callable[[], str],
    created_at: str | None,
) -> Job:
    """Insert pending batch items, leaving indexes that already have an execution alone."""
    rows = [
        (new_id(), program, version, batch_id, index, dumps(inputs, "inputs"), created_at)
        for index, inputs in items
    ]

    def job(conn: sqlite3.Connection) -> None:
        conn.executemany(ADD_ITEM, rows)

    return job


def add_and_claim_job(
    batch_id: str,
    program: str,
    version: int,
    items: Sequence[tuple[int, Mapping[str, Any]]],
    new_id: Callable[[], str],
    *,
    worker_id: str,
    token: str,
    now: datetime,
    expires: datetime,
    retry_failed: bool,
) -> Job:
    """Insert new batch items already ``running`` under ``token``, and claim the claimable ones
    that existed; the job returns ``{index: execution_id}`` of every item claimed.

    A new batch costs one multi-row INSERT: when every row goes in, nothing else is read or
    written.
    Only when some index already had an execution does one read sort ours from the others.
    """
    started, until = ts(now), ts(expires)
    rows = [
        (
            new_id(),
            program,
            version,
            batch_id,
            index,
            dumps(inputs, "inputs"),
            started,
            started,
            worker_id,
            token,
            until,
        )
        for index, inputs in items
    ]

    def job(conn: sqlite3.Connection) -> dict[int, str]:
        if _rows(conn, _ADD_RUNNING_ITEMS, rows, _RUNNING_ITEM_ROW) == len(rows):
            return {row[4]: row[0] for row in rows}
        ours = {row[0] for row in rows}
        wanted = json.dumps(sorted({row[4] for row in rows}))
        return _claim(
            conn, batch_id, wanted, ours, worker_id, token, now, started, until, retry_failed
        )

    return job


def claim_items_job(
    batch_id: str,
    indexes: Sequence[int],
    *,
    worker_id: str,
    token: str,
    now: datetime,
    expires: datetime,
    retry_failed: bool,
) -> Job:
    """Claim the claimable items at ``indexes``; the job returns ``{index: execution_id}``."""
    wanted = json.dumps(sorted(set(indexes)))
    started, until = ts(now), ts(expires)

    def job(conn: sqlite3.Connection) -> dict[int, str]:
        return _claim(
            conn, batch_id, wanted, frozenset(), worker_id, token, now, started, until, retry_failed
        )

    return job


def _claim(
    conn: sqlite3.Connection,
    batch_id: str,
    wanted: str,
    ours: Set[str],
    worker_id: str,
    token: str,
    now: datetime,
    started: str | None,
    until: str | None,
    retry_failed: bool,
) -> dict[int, str]:
    """Claim the claimable items at the ``wanted`` indexes (a JSON array) under ``token``.

    Executions whose id is in ``ours`` were just inserted running under ``token``: they count
    as claimed as they are. A claimed failed or cancelled item leaves that count of its batch.
    """
    claimed: dict[int, str] = {}
    taken: list[tuple[Any, ...]] = []
    failed = cancelled = 0
    for eid, index, status, lease_expires_at in conn.execute(
        CLAIM_CANDIDATES, (batch_id, wanted)
    ).fetchall():
        if eid in ours:
            claimed[index] = eid
            continue
        state = ExecutionStatus(status)
        if not claimable(state, parse_ts(lease_expires_at), now, retry_failed):
            continue
        claimed[index] = eid
        taken.append((started, worker_id, token, until, eid))
        failed += int(state is ExecutionStatus.FAILED)
        cancelled += int(state is ExecutionStatus.CANCELLED)
    if taken:
        conn.executemany(CLAIM_ONE, taken)
    if failed or cancelled:
        conn.execute(RELEASE_FROM_BATCH, (failed, cancelled, batch_id))
    return claimed


def heartbeat_lease_job(lease_token: str, expires: datetime) -> Job:
    params = (ts(expires), lease_token)

    def job(conn: sqlite3.Connection) -> int:
        return conn.execute(HEARTBEAT_LEASE, params).rowcount

    return job
