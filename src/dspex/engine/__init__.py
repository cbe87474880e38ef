"""The graph engine: program specs, graph validation and analysis, the scheduler and runner.

Public names (also on :mod:`dspex`): :class:`Program`, :class:`Plan`, :class:`Engine`,
:class:`RunResult`. Submodules are imported on first use so that ``import dspex.engine`` stays
cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Engine", "Plan", "Program", "RunResult", "StepResult"]

_LAZY = {
    "Engine": "dspex.engine.engine",
    "Plan": "dspex.engine.analysis",
    "Program": "dspex.engine.program",
    "RunResult": "dspex.engine.results",
    "StepResult": "dspex.engine.results",
}

if TYPE_CHECKING:
    from dspex.engine.analysis import Plan
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program
    from dspex.engine.results import RunResult, StepResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dspex.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
