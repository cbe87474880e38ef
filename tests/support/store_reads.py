"""Reading a store the way tests check it, through the store's own listing."""

from __future__ import annotations

from dspex.records import ExecutionFilter, ExecutionRecord
from dspex.store.base import Store

__all__ = ["batch_executions"]


async def batch_executions(store: Store, batch_id: str) -> list[ExecutionRecord]:
    """Every execution of a batch, by batch index (then creation), read with ``list_executions``."""
    page = await store.list_executions(ExecutionFilter(batch_id=batch_id), limit=1_000_000)
    return sorted(
        page.items,
        key=lambda e: (e.batch_index is None, e.batch_index or 0, e.created_at, e.id),
    )
