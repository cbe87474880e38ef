"""Example programs bundled with dspex (used by ``dspex demo`` and the documentation)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RAG_DIR", "rag_program_path", "rag_questions_path"]

RAG_DIR = Path(__file__).parent / "rag"


def rag_program_path() -> Path:
    """The retrieval-augmented QA example program (``program.yaml``)."""
    return RAG_DIR / "program.yaml"


def rag_questions_path() -> Path:
    """The bundled question set for the QA example (JSONL, one ``{"question": …}`` per line)."""
    return RAG_DIR / "questions.jsonl"
