"""Statuses are the enums of ``dspex.records``: no parallel ``Literal[...]`` of the same values.

The result models carry the enums themselves (StrEnums: they still compare equal to their text
and dump to the same JSON), so ``result.status.is_terminal`` works and a typo is a type error.
"""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

import pytest
from tests.runtime._support import make_runtime, ready

import dspex
from dspex.backends.mock import MockBackend
from dspex.records import (
    AttemptOutcome,
    BatchStatus,
    ExecutionStatus,
    ProgramStatus,
    StepStatus,
)
from dspex.store import MemoryStore

SRC = Path(dspex.__file__).resolve().parent
STATUS_ENUMS: list[type[StrEnum]] = [
    AttemptOutcome,
    BatchStatus,
    ExecutionStatus,
    ProgramStatus,
    StepStatus,
]
HEALTH = {"healthy", "degraded", "unhealthy"}


def _literals() -> list[tuple[str, set[str]]]:
    """Every ``Literal[...]`` of strings in the package, with where it is."""
    found: list[tuple[str, set[str]]] = []
    for file in sorted(SRC.rglob("*.py")):
        rel = file.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Subscript) and ast.unparse(node.value) == "Literal"):
                continue
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            values = {e.value for e in items if isinstance(e, ast.Constant)}
            found.append((f"{rel}:{node.lineno}", {v for v in values if isinstance(v, str)}))
    return found


@pytest.mark.parametrize("enum", STATUS_ENUMS, ids=lambda e: e.__name__)
def test_no_literal_repeats_the_values_of_a_status_enum(enum: type[StrEnum]) -> None:
    values = {member.value for member in enum}
    assert [where for where, literal in _literals() if literal == values] == []


def test_the_health_statuses_are_written_once() -> None:
    places = [where.split(":")[0] for where, literal in _literals() if literal == HEALTH]
    assert places == ["backends/base.py"]


def test_the_statuses_of_result_models_are_public() -> None:
    assert dspex.ExecutionStatus is ExecutionStatus
    assert dspex.ProgramStatus is ProgramStatus
    assert dspex.StepStatus is StepStatus


async def test_results_carry_status_enums_that_still_read_and_dump_as_text() -> None:
    async with make_runtime(MemoryStore(), {"default": MockBackend("default")}) as rt:
        await ready(rt)
        result = await rt.execute("qa", {"question": "q?"})
        detail = await rt.get_execution(result.execution_id)
        page = await rt.list_executions(program="qa")
        program = await rt.get_program("qa")
    assert result.status is ExecutionStatus.COMPLETED
    assert result.status.is_terminal
    assert result.status == "completed"
    assert result.model_dump(mode="json")["status"] == "completed"
    assert page.items[0].status is ExecutionStatus.COMPLETED
    assert program.status is ProgramStatus.READY
    assert detail.steps[0].status is StepStatus.COMPLETED
    assert detail.attempt_records[0].outcome is AttemptOutcome.SUCCEEDED
    dumped = detail.model_dump(mode="json")
    assert (dumped["steps"][0]["status"], dumped["attempt_records"][0]["outcome"]) == (
        "completed",
        "succeeded",
    )
