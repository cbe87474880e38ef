"""Plain-Python modules of the QA example (allow-listed by ``dspex demo`` as ``dspex.examples``)."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "how",
        "does",
        "do",
        "did",
    }
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def confidence_check(
    question: str, answer: str, passages: list[str], confidence: float, threshold: float = 0.5
) -> dict[str, object]:
    """Blend the model's own confidence with how well the passages support the question.

    Support is the share of the question's content words found in the best passage. The result
    is ``accepted`` when the blended confidence reaches ``threshold``.
    """
    q = _words(question)
    support = max((len(q & _words(p)) / len(q) for p in passages), default=0.0) if q else 0.0
    grounded = bool(answer.strip()) and support > 0.0
    checked = round(0.5 * confidence + 0.5 * support, 4)
    return {
        "checked_confidence": checked,
        "accepted": grounded and checked >= threshold,
        "support": round(support, 4),
    }
