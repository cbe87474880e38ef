"""``Runtime.list_batches``: recorded batches, newest first, as public ``BatchInfo`` models."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspex import BatchInfo, MockBackend, Runtime
from dspex.errors import ValidationError

QA = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


async def ready(tmp_path: Path) -> Runtime:
    rt = await Runtime.open(
        "memory://", cwd=tmp_path, backends={"default": MockBackend("default")}
    ).start()
    info = await rt.register(QA)
    await rt.initialize(info.name, info.version)
    return rt


async def test_batches_are_listed_newest_first_with_their_counts(tmp_path: Path) -> None:
    rt = await ready(tmp_path)
    try:
        first = await rt.run_batch("qa", [{"question": "a"}])
        second = await rt.run_batch("qa", [{"question": "b"}, {"question": "c"}])
        batches = await rt.list_batches()
        recorded = await rt.get_batch(second.batch_id)
    finally:
        await rt.aclose()
    assert [b.batch_id for b in batches] == [second.batch_id, first.batch_id]
    assert all(isinstance(b, BatchInfo) for b in batches)
    newest = batches[0]
    assert (newest.program, newest.status, newest.total, newest.completed) == (
        "qa",
        "completed",
        2,
        2,
    )
    assert newest == recorded


async def test_the_limit_keeps_the_newest(tmp_path: Path) -> None:
    rt = await ready(tmp_path)
    try:
        await rt.run_batch("qa", [{"question": "a"}])
        newest = await rt.run_batch("qa", [{"question": "b"}])
        assert [b.batch_id for b in await rt.list_batches(limit=1)] == [newest.batch_id]
    finally:
        await rt.aclose()


async def test_a_status_filter_lists_only_that_status(tmp_path: Path) -> None:
    rt = await ready(tmp_path)
    try:
        done = await rt.run_batch("qa", [{"question": "a"}])
        assert [b.batch_id for b in await rt.list_batches(status="completed")] == [done.batch_id]
        assert await rt.list_batches(status="running") == []
    finally:
        await rt.aclose()


@pytest.mark.parametrize(
    ("options", "field"),
    [({"limit": 0}, "limit"), ({"limit": True}, "limit"), ({"status": "done"}, "status")],
)
async def test_bad_listing_options_are_validation_errors(
    tmp_path: Path, options: dict[str, object], field: str
) -> None:
    async with Runtime.open("memory://", cwd=tmp_path) as rt:
        with pytest.raises(ValidationError) as info:
            await rt.list_batches(**options)  # type: ignore[arg-type]
    assert [e.field for e in info.value.errors] == [field]
