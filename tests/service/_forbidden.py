"""A module no test program may import (it is outside every allow-list)."""

from __future__ import annotations

IMPORTED = True


def answer(question: str) -> dict[str, str]:
    return {"answer": question}
