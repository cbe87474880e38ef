"""Strategies are listed once (``dspex._strategies``) and every surface takes exactly that list."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError as PydanticValidationError

import dspex
from dspex._strategies import COORDINATOR_STRATEGIES, STRATEGIES
from dspex.config import CoordinatorSettings
from dspex.engine.spec import parse_spec
from dspex.service.schemas import ExecuteRequest

SRC = Path(dspex.__file__).resolve().parent
HOME = "_strategies.py"


def _string_lists(tree: ast.AST) -> list[tuple[int, set[str]]]:
    """Every tuple, list, set or ``Literal[...]`` of string constants, with its line."""
    found: list[tuple[int, set[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = node.elts
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple):
            items = node.slice.elts
        else:
            continue
        values = [e.value for e in items if isinstance(e, ast.Constant)]
        if values and len(values) == len(items) and all(isinstance(v, str) for v in values):
            found.append((node.lineno, set(values)))
    return found


@pytest.mark.parametrize(
    "names", [STRATEGIES, COORDINATOR_STRATEGIES], ids=["execution", "coordinator"]
)
def test_no_module_but_the_strategies_module_lists_the_strategies(names: tuple[str, ...]) -> None:
    offenders = []
    for file in sorted(SRC.rglob("*.py")):
        rel = file.relative_to(SRC).as_posix()
        if rel == HOME:
            continue
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for line, values in _string_lists(tree):
            if len(values & set(names)) >= 2:
                offenders.append(f"{rel}:{line}")
    assert offenders == []


def test_the_public_strategy_type_is_the_one_the_spec_uses() -> None:
    assert get_args(dspex.Strategy) == STRATEGIES
    assert STRATEGIES == ("sequential", "parallel", "optimized", "resource_aware")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_accepted_by_the_spec_and_the_service(strategy: str) -> None:
    spec = parse_spec(
        {
            "name": "qa",
            "signature": "question: str -> answer: str",
            "strategy": strategy,
            "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
        }
    )
    assert spec.strategy == strategy
    assert ExecuteRequest(inputs={}, strategy=strategy).strategy == strategy  # type: ignore[arg-type]


def test_the_service_refuses_a_strategy_that_is_not_listed() -> None:
    with pytest.raises(PydanticValidationError, match="sequential"):
        ExecuteRequest(inputs={}, strategy="fastest")  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", COORDINATOR_STRATEGIES)
def test_every_coordinator_strategy_is_accepted_by_the_settings(strategy: str) -> None:
    settings = CoordinatorSettings(backends=("a",), strategy=strategy)  # type: ignore[arg-type]
    assert settings.strategy == strategy
