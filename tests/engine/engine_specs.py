"""Helpers shared by the engine tests: small program specs built in one line."""

from __future__ import annotations

from typing import Any


def predict(signature: str, /, **fields: Any) -> dict[str, Any]:
    """A predict module spec."""
    return {"kind": "predict", "signature": signature, **fields}


def program(
    modules: dict[str, Any], signature: str = "q: str -> y: str", **extra: Any
) -> dict[str, Any]:
    """A program spec named ``p``."""
    return {"name": "p", "signature": signature, "modules": modules, **extra}
