"""Each public name means one thing: no internal class shares a name with a public one.

Public here is what users meet: the names of ``dspex.__all__``, the result models of
``dspex.actions.models`` (reached through them, e.g. ``ExecutionDetail.attempt_records``) and the
error tree of ``dspex.errors``, whose names must not shadow ``asyncio``'s or the builtins either.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
from collections import defaultdict
from pathlib import Path

import pytest

import dspex
import dspex.errors
from dspex.actions import models

SRC = Path(dspex.__file__).resolve().parent
PUBLIC = sorted(
    {n for n in dspex.__all__ if n[0].isupper()} | set(models.__all__) | set(dspex.errors.__all__)
)


def _classes() -> dict[str, list[str]]:
    """Every class defined in the package, by name → the modules defining one."""
    found: dict[str, list[str]] = defaultdict(list)
    for file in sorted(SRC.rglob("*.py")):
        rel = file.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                found[node.name].append(rel)
    return found


CLASSES = _classes()


@pytest.mark.parametrize("name", [n for n in PUBLIC if n in CLASSES])
def test_a_public_class_name_is_defined_once(name: str) -> None:
    assert len(CLASSES[name]) == 1, f"{name} is defined in {CLASSES[name]}"


@pytest.mark.parametrize("name", dspex.errors.__all__)
def test_no_error_name_shadows_asyncio_or_a_builtin(name: str) -> None:
    assert not hasattr(asyncio, name)
    assert not hasattr(builtins, name)


def test_cancellation_keeps_its_stable_code_under_its_own_name() -> None:
    assert dspex.errors.ExecutionCancelledError.code == "cancelled"
    assert not issubclass(dspex.errors.ExecutionCancelledError, asyncio.CancelledError)
    assert not hasattr(dspex.errors, "CancelledError")
