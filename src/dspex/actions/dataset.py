"""export_dataset: recorded executions as JSONL examples, from production traffic to data.

Each line is one execution as a DSPy example: its inputs and, when it completed, its outputs,
under their field names (ready as a trainset or devset for ``dspex evaluate``), plus where it
came from under :data:`~dspex.metrics.EXAMPLE_METADATA_KEY` (execution id, version, status,
created, and the error code and message of a failure), which evaluation and optimization ignore.
A failed execution's line has no outputs: label it by adding them. Executions are read a page
at a time, newest first, and written as they are read, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from dspex.errors import ErrorDetail, ValidationError
from dspex.metrics import EXAMPLE_METADATA_KEY
from dspex.records import ExecutionFilter, ExecutionRecord, ExecutionStatus

if TYPE_CHECKING:
    from dspex.store.base import Store

__all__ = ["DatasetExport", "example_line", "export_dataset"]

_PAGE = 500


class DatasetExport(BaseModel):
    """What :meth:`dspex.Runtime.export_dataset` wrote.

    Attributes:
        program: the program.
        version: the only version exported, or ``None`` for every version.
        statuses: the execution statuses exported.
        count: lines written.
        with_outputs: lines that carry outputs (completed executions).
        out: the file written, or ``None`` when the lines went to the given stream.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    version: int | None
    statuses: list[str]
    count: int
    with_outputs: int
    out: str | None


def example_line(record: ExecutionRecord) -> dict[str, Any]:
    """One execution as a dataset line: inputs, outputs (when completed) and its metadata."""
    line: dict[str, Any] = dict(record.inputs)
    if record.status is ExecutionStatus.COMPLETED and record.outputs:
        line.update(record.outputs)
    meta: dict[str, Any] = {
        "execution_id": record.id,
        "version": record.program_version,
        "status": record.status.value,
        "created_at": record.created_at.isoformat(),
    }
    if record.error_code is not None:
        meta["error"] = {"code": record.error_code, "message": record.error_message}
    line[EXAMPLE_METADATA_KEY] = meta
    return line


def _statuses(status: str | None) -> tuple[ExecutionStatus, ...]:
    if status is None:
        return (ExecutionStatus.COMPLETED,)
    if status == "all":
        return (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED)
    try:
        chosen = ExecutionStatus(status)
    except ValueError:
        chosen = None
    if chosen not in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED):
        raise ValidationError(
            "invalid dataset export:",
            [
                ErrorDetail(
                    "status", "unknown_status", f"{status!r} is not completed, failed or all"
                )
            ],
        )
    assert chosen is not None
    return (chosen,)


async def export_dataset(
    store: Store,
    program: str,
    *,
    version: int | None = None,
    status: str | None = None,
    since: timedelta | None = None,
    limit: int | None = None,
    out: str | os.PathLike[str] | IO[str],
) -> DatasetExport:
    """Write a program's recorded executions to ``out`` as JSONL examples, newest first.

    See :meth:`dspex.Runtime.export_dataset` for the arguments.

    Raises:
        ValidationError: an unknown status, a ``limit`` below 1, or a file that cannot be
            written.
        NotFoundError: no such program (version).
    """
    statuses = _statuses(status)
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValidationError(
            "invalid dataset export:", [ErrorDetail("limit", "too_small", "must be >= 1")]
        )
    await store.get_program(program, version)
    filters = ExecutionFilter(
        program=program,
        program_version=version,
        statuses=statuses,
        created_after=None if since is None else store.clock() - since,
    )
    path = str(out) if isinstance(out, str | os.PathLike) else None
    count = outputs = 0
    with contextlib.ExitStack() as stack:
        handle: IO[str]
        if isinstance(out, str | os.PathLike):
            try:
                handle = stack.enter_context(Path(out).open("w", encoding="utf-8"))  # noqa: ASYNC230
            except OSError as exc:
                raise ValidationError(
                    f"cannot write {path!r}:", [ErrorDetail("out", "unwritable", str(exc))]
                ) from None
        else:
            handle = out
        cursor: str | None = None
        while limit is None or count < limit:
            size = _PAGE if limit is None else min(_PAGE, limit - count)
            page = await store.list_executions(filters, limit=size, cursor=cursor)
            for record in page.items:
                outputs += record.status is ExecutionStatus.COMPLETED and bool(record.outputs)
                handle.write(json.dumps(example_line(record), ensure_ascii=False, default=str))
                handle.write("\n")
                count += 1
            cursor = page.next_cursor
            if cursor is None or not page.items:
                break
    return DatasetExport(
        program=program,
        version=version,
        statuses=[s.value for s in statuses],
        count=count,
        with_outputs=outputs,
        out=path,
    )
