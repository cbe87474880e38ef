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


def _stem(word: str) -> str:
    """A light stemmer: enough for "moons"/"moon", "takes"/"take", "returned"/"return"."""
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: len(word) - len(suffix)] + keep
    return word


def content_words(text: str) -> set[str]:
    """The stemmed content words of ``text`` (stop words and single letters left out)."""
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def coverage(words: set[str], text: str) -> float:
    """Share of ``words`` (content words) found in ``text``.

    A word counts when ``text`` has it, or when it is a compound of one of ``text``'s words
    ("sunlight" is covered by "light").
    """
    if not words:
        return 0.0
    found = content_words(text)
    hits = sum(1 for w in words if w in found or any(len(f) >= 4 and f in w for f in found))
    return hits / len(words)


def confidence_check(
    question: str, answer: str, passages: list[str], confidence: float, threshold: float = 0.5
) -> dict[str, object]:
    """Blend the model's own confidence with how well the passages back the answer.

    The supporting passage is the one that covers most of the answer's content words; the answer
    is grounded when that passage covers at least half of them. Support is the share of the
    question's content words that passage covers. The result is ``accepted`` when the answer is
    grounded and the blend of confidence and support reaches ``threshold``.
    """
    said = content_words(answer)
    grounding, passage = max(((coverage(said, p), p) for p in passages), default=(0.0, ""))
    support = coverage(content_words(question), passage) if passage else 0.0
    grounded = grounding >= 0.5 and support > 0.0
    checked = round(0.5 * confidence + 0.5 * support, 4)
    return {
        "checked_confidence": checked,
        "accepted": grounded and checked >= threshold,
        "support": round(support, 4),
    }
