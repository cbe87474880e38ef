"""The SQLite writer's jobs: the hot writes of the SQL store, and their values converted up front.

The statements are :mod:`dspex.store._sqlite_statements` (Core, compiled from the tables); this
module turns records into their parameters, exactly as SQLAlchemy stores them for
:mod:`dspex.store.tables` (timestamps as naive UTC text with microseconds, JSON as text, ``None``
JSON as SQL NULL), so either side reads what the other wrote. Which conversion a whole execution
row needs comes from the column types; the hot statements of one finish build their rows by hand,
in the column order the statements check.

Each ``*_job`` function converts everything before it returns the job (so a bad payload fails
before any write); the job runs inside the writer thread, inside its own SAVEPOINT, and returns
plain data: deciding which error to raise happens back on the event loop.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import orjson
import sqlalchemy as sa

from dspex.errors import StorageError
from dspex.records import (
    AttemptRecord,
    ExecutionRecord,
    ExecutionStatus,
    FinishRequest,
    StepRecord,
)
from dspex.store._rules import claimable, counts_toward_program
from dspex.store._sqlite_statements import (
    EXECUTION_COLUMNS,
    RECORD_COLUMNS,
    MultiRow,
    statements,
)
from dspex.store.tables import UTCDateTime
from dspex.store.tables import executions as t_exec

__all__ = [
    "Job",
    "add_and_claim_job",
    "claim_items_job",
    "dumps",
    "execution_from_tuple",
    "execution_params",
    "finish_many_job",
    "finish_one_job",
    "heartbeat_lease_job",
    "parse_ts",
    "record_steps_job",
    "start_job",
    "ts",
]

Job = Callable[[sqlite3.Connection], Any]

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


# Which columns need a conversion comes from their types in tables.py.
def _timestamps(columns: Sequence[str]) -> list[int]:
    return [i for i, n in enumerate(columns) if isinstance(t_exec.c[n].type, UTCDateTime)]


def _jsons(columns: Sequence[str]) -> list[tuple[int, str]]:
    return [(i, n) for i, n in enumerate(columns) if isinstance(t_exec.c[n].type, sa.JSON)]


_EXECUTION_VALUES = operator.attrgetter(*EXECUTION_COLUMNS)
_WRITE_TIMESTAMPS, _WRITE_JSONS = _timestamps(EXECUTION_COLUMNS), _jsons(EXECUTION_COLUMNS)
_READ_TIMESTAMPS, _READ_JSONS = _timestamps(RECORD_COLUMNS), _jsons(RECORD_COLUMNS)
_READ_STATUS = RECORD_COLUMNS.index("status")
_READ_PROGRAM = RECORD_COLUMNS.index("program")
_READ_VERSION = RECORD_COLUMNS.index("program_version")
_READ_LIVE_STEPS = RECORD_COLUMNS.index("live_steps")
_READ_LIVE_ATTEMPTS = RECORD_COLUMNS.index("live_attempts")


def execution_params(record: ExecutionRecord) -> list[Any]:
    """Insert values for one execution: every column, in table order."""
    values = list(_EXECUTION_VALUES(record))
    for i in _WRITE_TIMESTAMPS:
        values[i] = ts(values[i])
    for i, name in _WRITE_JSONS:
        values[i] = dumps(values[i], name)
    return values


def execution_from_tuple(row: Sequence[Any]) -> ExecutionRecord:
    """An execution from a row of every column in :data:`RECORD_COLUMNS` order."""
    values = list(row)
    for i in _READ_TIMESTAMPS:
        values[i] = parse_ts(values[i])
    for i, _ in _READ_JSONS:
        values[i] = _loads(values[i])
    values[_READ_STATUS] = ExecutionStatus(values[_READ_STATUS])
    return ExecutionRecord(*values)


# The rows below are built by hand for speed, in the order of STEP_COLUMNS, ATTEMPT_COLUMNS and
# FINISH_COLUMNS (the statements check that order against the tables).


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
        s.cost_usd,
        s.cache_hit,
        s.cost_saved_usd,
        None if s.inputs is None else dumps(s.inputs, "step inputs"),
        None if s.outputs is None else dumps(s.outputs, "step outputs"),
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
        a.cost_usd,
        None if a.messages is None else dumps(a.messages, "attempt messages"),
        None if a.response is None else dumps(a.response, "attempt response"),
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
    """The finish values, step rows and attempt rows of one finish (all converted up front)."""
    eid = request.execution_id
    usage = dumps(request.usage, "usage") if request.usage else "{}"
    update = (
        request.status._value_,
        dumps(request.outputs, "outputs"),
        request.error_code,
        request.error_message,
        finished_at,
        request.duration_ms,
        usage,
        request.backend,
        request.cost_usd,
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

# Rows per multi-row statement: 250 rows of 12 values stay far below SQLite's variable limit
# (32,766), and a batch's group of finished items (200 by default) is one statement per table.
_ROWS_PER_STATEMENT = 250


def _rows(conn: sqlite3.Connection, statement: MultiRow, rows: Sequence[tuple[Any, ...]]) -> int:
    """Run ``statement`` with ``rows`` as its ``VALUES`` rows; returns the rows changed.

    ``executemany`` steps one statement per row, and the sqlite3 module releases the GIL around
    every step: under a busy event loop each row then waits for the interpreter's switch
    interval to get it back (hundreds of microseconds a row). One statement of up to
    :data:`_ROWS_PER_STATEMENT` rows is one step.
    """
    # Counted by the connection, not by ``cursor.rowcount``: the sqlite3 module leaves that at
    # -1 for a statement that starts with WITH (a group finish does).
    before = conn.total_changes
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        part = rows[start : start + _ROWS_PER_STATEMENT]
        conn.execute(statement.sql(len(part)), list(_chain(part)))
    return conn.total_changes - before


# -- jobs (run in the writer thread) --------------------------------------------------------


def start_job(record: ExecutionRecord, *, require_ready: bool, require_latest: bool) -> Job:
    """Insert one execution (only while its program version allows it, when ``require_*``).

    The job returns how many rows were inserted (0 when the program version refused it).
    """
    params = execution_params(record)
    if require_ready or require_latest:
        sql = statements().guarded(require_ready, require_latest)
        keys = [record.program, record.program_version]
        params += [*keys, record.program, *keys] if require_latest else keys
    else:
        sql = statements().insert_execution

    def job(conn: sqlite3.Connection) -> int:
        return conn.execute(sql, params).rowcount

    return job


def _children(
    conn: sqlite3.Connection, steps: list[tuple[Any, ...]], attempts: list[tuple[Any, ...]]
) -> None:
    if steps:
        _rows(conn, statements().insert_steps, steps)
    if attempts:
        _rows(conn, statements().insert_attempts, attempts)


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
    sql = statements()

    def job(conn: sqlite3.Connection) -> tuple[Any, ...] | bool | None:
        row = conn.execute(sql.finish_returning_row, update).fetchone()
        if row is None:
            exists = conn.execute(sql.execution_exists, (request.execution_id,)).fetchone()
            return None if exists else False
        live_steps, live_attempts = row[_READ_LIVE_STEPS], row[_READ_LIVE_ATTEMPTS]
        if live_steps or live_attempts:  # the first ones were recorded while it ran
            _children(conn, steps[live_steps:], attempts[live_attempts:])
        else:
            _children(conn, steps, attempts)
        if count:
            counted = (row[_READ_PROGRAM], row[_READ_VERSION])
            conn.execute(
                sql.bump_program, _counter_row(request.status, request.duration_ms, *counted)
            )
        return tuple(row)

    return job


def record_steps_job(
    execution_id: str,
    lease_token: str,
    steps: Sequence[StepRecord],
    attempts: Sequence[AttemptRecord],
) -> Job:
    """Record a running execution's first steps and attempts under its lease: the ones past
    those it holds already. The job returns its row as it now is, or ``None`` when the lease
    was lost, or ``False`` when the execution does not exist."""
    step_rows = step_params(execution_id, steps)
    attempt_rows = attempt_params(execution_id, attempts)
    sql = statements()

    def job(conn: sqlite3.Connection) -> tuple[Any, ...] | bool | None:
        live = conn.execute(sql.held_live_counts, (execution_id, lease_token)).fetchone()
        if live is None:
            exists = conn.execute(sql.execution_exists, (execution_id,)).fetchone()
            return None if exists else False
        live_steps, live_attempts = live
        _children(conn, step_rows[live_steps:], attempt_rows[live_attempts:])
        counts = (
            max(live_steps, len(step_rows)),
            max(live_attempts, len(attempt_rows)),
            execution_id,
        )
        return tuple(conn.execute(sql.set_live_counts, counts).fetchone())

    return job


def finish_many_job(requests: Sequence[FinishRequest], finished_at: str | None) -> Job:
    """End many executions, each under its own lease; the job returns which were written.

    One read finds which requests still hold their execution (the writer holds the write lock,
    so nothing changes between that read and the writes); then every write is a multi-row
    statement. Program counters and batch counts get one UPDATE per program version and per
    batch, with the summed deltas of the rows actually written.
    """
    prepared = [finish_params(r, finished_at) for r in requests]
    wanted = _orjson_dumps([r.execution_id for r in requests]).decode()
    sql = statements()

    def job(conn: sqlite3.Connection) -> list[bool]:
        # One row of JSON: a result row is a step of the statement, and every step lets go of
        # the GIL and must win it back (see _rows).
        found = conn.execute(sql.held_rows_json, (wanted,)).fetchone()[0]
        held = {row[0]: row for row in orjson.loads(found)}
        written: list[bool] = []
        updates: list[tuple[Any, ...]] = []
        steps: list[tuple[Any, ...]] = []
        attempts: list[tuple[Any, ...]] = []
        programs: dict[tuple[str, int], list[float]] = {}
        batches: dict[str, list[float]] = {}
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
                b = batches.setdefault(row[4], [0, 0, 0, 0.0, 0.0])
                b[0] += int(status is ExecutionStatus.COMPLETED)
                b[1] += int(status is ExecutionStatus.FAILED)
                b[2] += int(status is ExecutionStatus.CANCELLED)
                b[3] += request.cost_usd
                b[4] += request.rate_limited_ms / 1000.0
        if updates:
            _rows(conn, sql.finish_many, updates)
        _children(conn, steps, attempts)
        if programs:
            conn.executemany(sql.bump_program, [(*d, *key) for key, d in programs.items()])
        if batches:
            conn.executemany(sql.bump_batch, [(*d, bid) for bid, d in batches.items()])
        return written

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
    written. Only when some index already had an execution does one read sort ours from the
    others.
    """
    started, until = ts(now), ts(expires)
    # In the order of RUNNING_ITEM_COLUMNS.
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
    statement = statements().add_running_items

    def job(conn: sqlite3.Connection) -> dict[int, str]:
        if _rows(conn, statement, rows) == len(rows):
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
    sql = statements()
    claimed: dict[int, str] = {}
    taken: list[tuple[Any, ...]] = []
    failed = cancelled = 0
    for eid, index, status, lease_expires_at in conn.execute(
        sql.claim_candidates, (batch_id, wanted)
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
        conn.executemany(sql.claim_one, taken)
    if failed or cancelled:
        conn.execute(sql.release_from_batch, (failed, cancelled, batch_id))
    return claimed


def heartbeat_lease_job(lease_token: str, expires: datetime) -> Job:
    params = (ts(expires), lease_token)
    sql = statements().heartbeat_lease

    def job(conn: sqlite3.Connection) -> int:
        return conn.execute(sql, params).rowcount

    return job
