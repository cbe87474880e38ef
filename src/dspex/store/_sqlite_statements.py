"""The SQLite writer's statements, built from :mod:`dspex.store.tables` with SQLAlchemy Core.

The writer thread (:mod:`dspex.store._sqlite_writer`) runs its jobs on a stdlib
:mod:`sqlite3` connection, without SQLAlchemy's per-call cost. The SQL it runs is still written
once, as Core statements over the same ``Table`` objects every other query uses, and compiled
once (on first use) for SQLite with positional ``?`` parameters. Each compiled statement is
checked against the parameter order its job supplies values in, so a table change that moves a
parameter fails at the first use instead of writing a value into the wrong column; values are
converted as the column types say (see :mod:`dspex.store._sqlite_jobs`).

Statements whose ``VALUES`` list holds any number of rows (the multi-row inserts, the rows of a
group finish) are :class:`MultiRow`: compiled with one row and with two, the SQL for ``n`` rows
repeats the one row ``n`` times, and the two-row compilation proves that this repetition is what
SQLAlchemy itself renders. Compiling each row count instead costs about 0.4 ms per row (100 ms
for 250 rows), paid again for every group size a batch happens to produce.

:func:`guarded_start` is also what the SQLAlchemy path runs (on PostgreSQL), with the same
parameter names.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.compiler import SQLCompiler

from dspex.records import ExecutionRecord, ExecutionStatus, ProgramStatus
from dspex.store.tables import attempts as t_attempts
from dspex.store.tables import batches as t_batches
from dspex.store.tables import executions as t_exec
from dspex.store.tables import programs as t_programs
from dspex.store.tables import promotions as t_promotions
from dspex.store.tables import steps as t_steps

__all__ = [
    "ATTEMPT_COLUMNS",
    "EXECUTION_COLUMNS",
    "FINISH_COLUMNS",
    "RECORD_COLUMNS",
    "RUNNING_ITEM_COLUMNS",
    "STEP_COLUMNS",
    "MultiRow",
    "Statements",
    "guarded_start",
    "statements",
]

_DIALECT = sqlite.dialect(paramstyle="qmark")
_RUNNING = ExecutionStatus.RUNNING.value

EXECUTION_COLUMNS = tuple(c.name for c in t_exec.columns)
"""Every column of ``executions``, in table order: what a whole execution row is."""

RECORD_COLUMNS = tuple(f.name for f in dataclasses.fields(ExecutionRecord))
"""Every column of ``executions`` in the order of :class:`ExecutionRecord`'s fields: rows read in
this order make a record positionally."""
if sorted(RECORD_COLUMNS) != sorted(EXECUTION_COLUMNS):  # pragma: no cover - a schema bug
    raise RuntimeError(f"ExecutionRecord has {RECORD_COLUMNS}, the table {EXECUTION_COLUMNS}")

# What a finish writes, in table order (the order of SET clauses), then the row's key and lease.
_FINISHED = {"status", "outputs", "error_code", "error_message", "finished_at", "duration_ms"}
_FINISHED |= {"usage", "backend", "cost_usd"}
FINISH_COLUMNS = (*(c for c in EXECUTION_COLUMNS if c in _FINISHED), "id", "lease_token")
"""The values of one finish, in the order both finish statements take them."""

STEP_COLUMNS = tuple(c.name for c in t_steps.columns if c.name != "id")
ATTEMPT_COLUMNS = tuple(c.name for c in t_attempts.columns if c.name != "id")
# A batch item inserted already claimed: no results yet, and three constants written in the SQL.
_NOT_YET = {"outputs", "error_code", "error_message", "finished_at", "duration_ms", "backend"}
_NOT_YET |= {"cost_usd"}  # its server default, 0
_NOT_YET |= {"cancel_requested_at", "live_steps", "live_attempts"}  # NULL, 0, 0
_RUNNING_ITEM_CONSTANTS = {"status": _RUNNING, "attempts": 1, "usage": "{}"}
RUNNING_ITEM_COLUMNS = tuple(
    c for c in EXECUTION_COLUMNS if c not in _NOT_YET and c not in _RUNNING_ITEM_CONSTANTS
)
"""The values of one batch item inserted already running, in insert order."""


def _bind(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    # A value of None (not "required") lets render_postcompile inline the constants below.
    return sa.bindparam(name, type_=type_, required=False)


def _const(value: Any) -> sa.BindParameter[Any]:
    """A constant rendered into the SQL text (compiled with ``render_postcompile``)."""
    return sa.literal(value, literal_execute=True)


def _compile(stmt: sa.ClauseElement, params: Sequence[str]) -> str:
    """``stmt`` as SQLite SQL; its positional parameters must be exactly ``params``, in order.

    Raises:
        RuntimeError: the compiled statement takes other parameters (a bug, caught at first use).
    """
    compiled = stmt.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    assert isinstance(compiled, SQLCompiler)
    found = tuple(compiled.positiontup or ())
    if found != tuple(params):
        raise RuntimeError(f"statement takes parameters {found}, not {tuple(params)}:\n{compiled}")
    return str(compiled)


class MultiRow:
    """A statement with a ``VALUES`` list of any number of rows.

    Compiled once with one row; the SQL for ``n`` rows repeats that row ``n`` times (the test
    suite checks this against SQLAlchemy's own compilation of several row counts).

    Args:
        build: makes the Core statement for ``rows`` rows, naming row ``i``'s parameters
            ``f"{column}_{i}"`` for each of ``columns``.
        columns: the values of one row, in the order the statement takes them.
    """

    def __init__(self, build: Callable[[int], sa.ClauseElement], columns: Sequence[str]) -> None:
        one = _compile(build(1), _names(columns, 1))
        start = one.index("VALUES (") + len("VALUES ")
        end = _closing(one, start) + 1
        self._head, self._row, self._tail = one[:start], one[start:end], one[end:]
        if self._row.count("?") != len(columns):  # pragma: no cover - a bug, caught at first use
            raise RuntimeError(f"cannot find the one row of:\n{one}")
        self._sql = functools.lru_cache(maxsize=None)(self._render)

    def sql(self, rows: int) -> str:
        """The statement for ``rows`` rows (cached per row count)."""
        return self._sql(rows)

    def _render(self, rows: int) -> str:
        return self._head + ", ".join([self._row] * rows) + self._tail


def _closing(sql: str, start: int) -> int:
    """Where the parenthesis opened at ``sql[start]`` closes (quoted text skipped)."""
    depth = 0
    quoted = False
    for i in range(start, len(sql)):
        char = sql[i]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0:
                return i
    raise RuntimeError(f"unbalanced parentheses in:\n{sql}")  # pragma: no cover


def _names(columns: Sequence[str], rows: int) -> list[str]:
    return [f"{column}_{i}" for i in range(rows) for column in columns]


def _row_binds(table: sa.Table, columns: Sequence[str], i: int) -> dict[str, Any]:
    return {name: _bind(f"{name}_{i}", table.c[name].type) for name in columns}


# -- the statements ----------------------------------------------------------------------------


def guarded_start(ready: bool, latest: bool) -> sa.Insert:
    """``INSERT INTO executions … SELECT`` that inserts only while the program version allows it.

    The condition and the insert are one statement, so a version archived (or superseded) by
    another process a moment earlier can never gain a new execution. ``latest``: the version
    must be the program's default one, the version last promoted or, when none ever was, the
    newest. Parameters: every column of :data:`EXECUTION_COLUMNS` by its name, then
    ``p_name``, ``p_version`` and (``latest``) ``n_name``, ``m_name``, ``n_version``.
    """
    p = t_programs.c
    conditions = [p.name == _bind("p_name"), p.version == _bind("p_version")]
    if ready:
        conditions.append(p.status == _const(ProgramStatus.READY.value))
    if latest:
        newest = t_programs.alias("newest")
        last = t_promotions.alias("last")
        current = (
            sa.select(t_promotions.c.version)
            .where(
                t_promotions.c.id
                == sa.select(sa.func.max(last.c.id))
                .where(last.c.program == _bind("n_name"))
                .scalar_subquery()
            )
            .scalar_subquery()
        )
        newest_version = (
            sa.select(sa.func.max(newest.c.version))
            .where(newest.c.name == _bind("m_name"))
            .scalar_subquery()
        )
        conditions.append(sa.func.coalesce(current, newest_version) == _bind("n_version"))
    row = sa.select(*[_bind(c.name, c.type) for c in t_exec.columns])
    return t_exec.insert().from_select(
        list(EXECUTION_COLUMNS), row.select_from(t_programs).where(*conditions)
    )


def _finish_one() -> sa.ClauseElement:
    c = t_exec.c
    return (
        t_exec.update()
        .where(
            c.id == _bind("b_id"),
            c.lease_token == _bind("b_lease_token"),
            c.status == _const(_RUNNING),
        )
        .values(
            {name: _bind(f"b_{name}", c[name].type) for name in FINISH_COLUMNS[:-2]}
            | {"lease_token": sa.null(), "lease_expires_at": sa.null()}
        )
        .returning(*[t_exec.c[name] for name in RECORD_COLUMNS])
    )


def _finish_many(rows: int) -> sa.ClauseElement:
    """The rows of a group finish as a ``VALUES`` list joined to ``executions`` by id."""
    c = t_exec.c
    values = (
        sa.values(*[sa.column(name, c[name].type) for name in FINISH_COLUMNS], name="v")
        .data([tuple(_bind(f"{name}_{i}") for name in FINISH_COLUMNS) for i in range(rows)])
        .cte("v")
    )
    return (
        t_exec.update()
        .values(
            {name: values.c[name] for name in FINISH_COLUMNS[:-2]}
            | {"lease_token": sa.null(), "lease_expires_at": sa.null()}
        )
        .where(
            c.id == values.c.id,
            c.lease_token == values.c.lease_token,
            c.status == _const(_RUNNING),
        )
    )


def _insert_rows(table: sa.Table, columns: Sequence[str]) -> Callable[[int], sa.ClauseElement]:
    def build(rows: int) -> sa.ClauseElement:
        return table.insert().values([_row_binds(table, columns, i) for i in range(rows)])

    return build


def _running_items(rows: int) -> sa.ClauseElement:
    constants = {name: _const(value) for name, value in _RUNNING_ITEM_CONSTANTS.items()}
    return (
        sqlite.insert(t_exec)
        .values([_row_binds(t_exec, RUNNING_ITEM_COLUMNS, i) | constants for i in range(rows)])
        .on_conflict_do_nothing(index_elements=["batch_id", "batch_index"])
    )


def _json_each(name: str) -> sa.Select[Any]:
    """The values of a JSON array parameter: any number of keys in ONE static statement."""
    return sa.select(sa.func.json_each(_bind(name)).table_valued("value").c.value)


class Statements:
    """Every statement the writer's jobs run, each compiled on first use (about a millisecond
    each; a process compiles only the ones it runs). Get the one instance with
    :func:`statements`.

    Each attribute names the parameters it takes, in the order jobs supply them.
    """

    @functools.cached_property
    def insert_execution(self) -> str:
        """:data:`EXECUTION_COLUMNS`."""
        c = t_exec.c
        stmt = t_exec.insert().values({n: _bind(n, c[n].type) for n in EXECUTION_COLUMNS})
        return _compile(stmt, EXECUTION_COLUMNS)

    @functools.cache  # noqa: B019 - one instance for the life of the process
    def guarded(self, ready: bool, latest: bool) -> str:
        """:func:`guarded_start`'s parameters."""
        params = [*EXECUTION_COLUMNS, "p_name", "p_version"]
        extra = ["n_name", "m_name", "n_version"] if latest else []
        return _compile(guarded_start(ready, latest), params + extra)

    @functools.cached_property
    def finish_returning_row(self) -> str:
        """:data:`FINISH_COLUMNS`; returns the row in :data:`RECORD_COLUMNS` order."""
        return _compile(_finish_one(), [f"b_{n}" for n in FINISH_COLUMNS])

    @functools.cached_property
    def held_live_counts(self) -> str:
        """id, lease_token; returns ``(live_steps, live_attempts)`` while that lease holds it."""
        c = t_exec.c
        stmt = sa.select(c.live_steps, c.live_attempts).where(
            c.id == _bind("b_id"),
            c.lease_token == _bind("b_lease_token"),
            c.status == _const(_RUNNING),
        )
        return _compile(stmt, ["b_id", "b_lease_token"])

    @functools.cached_property
    def set_live_counts(self) -> str:
        """live_steps, live_attempts, id; returns the row in :data:`RECORD_COLUMNS` order."""
        c = t_exec.c
        stmt = (
            t_exec.update()
            .where(c.id == _bind("b_id"))
            .values(live_steps=_bind("b_live_steps"), live_attempts=_bind("b_live_attempts"))
            .returning(*[c[name] for name in RECORD_COLUMNS])
        )
        return _compile(stmt, ["b_live_steps", "b_live_attempts", "b_id"])

    @functools.cached_property
    def execution_exists(self) -> str:
        """The id."""
        return _compile(sa.select(_const(1)).where(t_exec.c.id == _bind("b_id")), ["b_id"])

    @functools.cached_property
    def held_rows_json(self) -> str:
        """A JSON array of ids; returns ONE row: a JSON array of ``[id, lease_token, program,
        program_version, batch_id]`` per running execution among them."""
        c = t_exec.c
        held = sa.select(
            sa.func.json_group_array(
                sa.func.json_array(c.id, c.lease_token, c.program, c.program_version, c.batch_id)
            )
        ).where(
            c.id.in_(_json_each("b_ids")),
            # ``status || ''`` keeps SQLite off the status index, which would visit every
            # running execution of the file; the rows are found by id.
            c.status.concat(_const("")) == _const(_RUNNING),
        )
        return _compile(held, ["b_ids"])

    @functools.cached_property
    def finish_many(self) -> MultiRow:
        """:data:`FINISH_COLUMNS` per row."""
        return MultiRow(_finish_many, FINISH_COLUMNS)

    @functools.cached_property
    def insert_steps(self) -> MultiRow:
        """:data:`STEP_COLUMNS` per row."""
        return MultiRow(_insert_rows(t_steps, STEP_COLUMNS), STEP_COLUMNS)

    @functools.cached_property
    def insert_attempts(self) -> MultiRow:
        """:data:`ATTEMPT_COLUMNS` per row."""
        return MultiRow(_insert_rows(t_attempts, ATTEMPT_COLUMNS), ATTEMPT_COLUMNS)

    @functools.cached_property
    def add_running_items(self) -> MultiRow:
        """:data:`RUNNING_ITEM_COLUMNS` per row."""
        return MultiRow(_running_items, RUNNING_ITEM_COLUMNS)

    @functools.cached_property
    def claim_candidates(self) -> str:
        """The batch id, a JSON array of batch indexes."""
        c = t_exec.c
        stmt = sa.select(c.id, c.batch_index, c.status, c.lease_expires_at).where(
            c.batch_id == _bind("b_batch_id"), c.batch_index.in_(_json_each("b_indexes"))
        )
        return _compile(stmt, ["b_batch_id", "b_indexes"])

    @functools.cached_property
    def claim_one(self) -> str:
        """started_at, worker_id, lease_token, lease_expires_at, id."""
        c = t_exec.c
        stmt = (
            t_exec.update()
            .where(c.id == _bind("b_id"))
            .values(
                status=_const(_RUNNING),
                attempts=c.attempts + _const(1),
                started_at=_bind("b_started_at", c.started_at.type),
                worker_id=_bind("b_worker_id"),
                lease_token=_bind("b_lease_token"),
                lease_expires_at=_bind("b_lease_expires_at", c.lease_expires_at.type),
            )
        )
        return _compile(
            stmt, ["b_started_at", "b_worker_id", "b_lease_token", "b_lease_expires_at", "b_id"]
        )

    @functools.cached_property
    def release_from_batch(self) -> str:
        """failed, cancelled, the batch id (the counts to take away)."""
        b = t_batches.c
        stmt = (
            t_batches.update()
            .where(b.id == _bind("b_id"))
            .values(
                failed=b.failed - _bind("b_failed"), cancelled=b.cancelled - _bind("b_cancelled")
            )
        )
        return _compile(stmt, ["b_failed", "b_cancelled", "b_id"])

    @functools.cached_property
    def heartbeat_lease(self) -> str:
        """lease_expires_at, lease_token."""
        c = t_exec.c
        stmt = (
            t_exec.update()
            .where(c.lease_token == _bind("b_lease_token"), c.status == _const(_RUNNING))
            .values(lease_expires_at=_bind("b_lease_expires_at", c.lease_expires_at.type))
        )
        return _compile(stmt, ["b_lease_expires_at", "b_lease_token"])

    @functools.cached_property
    def bump_program(self) -> str:
        """executions, successes, failures, duration_ms, name, version (the deltas, the key)."""
        p = t_programs.c
        stmt = (
            t_programs.update()
            .where(p.name == _bind("b_name"), p.version == _bind("b_version"))
            .values(
                execution_count=p.execution_count + _bind("b_executions"),
                success_count=p.success_count + _bind("b_successes"),
                failure_count=p.failure_count + _bind("b_failures"),
                total_duration_ms=p.total_duration_ms + _bind("b_duration_ms"),
            )
        )
        deltas = ["b_executions", "b_successes", "b_failures", "b_duration_ms"]
        return _compile(stmt, [*deltas, "b_name", "b_version"])

    @functools.cached_property
    def bump_batch(self) -> str:
        """completed, failed, cancelled, cost_usd, rate_limited_s, the batch id (the deltas,
        the key)."""
        b = t_batches.c
        counts = ("completed", "failed", "cancelled", "cost_usd", "rate_limited_s")
        stmt = (
            t_batches.update()
            .where(b.id == _bind("b_id"))
            .values({n: b[n] + _bind(f"b_{n}") for n in counts})
        )
        return _compile(stmt, [*(f"b_{n}" for n in counts), "b_id"])


_STATEMENTS = Statements()


def statements() -> Statements:
    """The writer's statements (each compiled on first use, once a process)."""
    return _STATEMENTS
