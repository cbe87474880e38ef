"""Counters stay exact when many executions of one program finish at the same time."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.runtime._support import ready

from dspex.runtime import Runtime

CONCURRENT = 50


async def test_concurrent_executions_are_all_counted_exactly(sql_runtime: Runtime) -> None:
    await ready(sql_runtime)
    calls = [sql_runtime.execute("qa", {"question": f"q{i}"}) for i in range(CONCURRENT)]
    results: list[Any] = await asyncio.gather(*calls)
    assert {r.status for r in results} == {"completed"}
    assert len({r.execution_id for r in results}) == CONCURRENT
    info = await sql_runtime.get_program("qa")
    assert (info.execution_count, info.success_count, info.failure_count) == (
        CONCURRENT,
        CONCURRENT,
        0,
    )
    page = await sql_runtime.list_executions(program="qa", limit=CONCURRENT + 10)
    assert len(page.items) == CONCURRENT
