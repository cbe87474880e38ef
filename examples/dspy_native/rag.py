"""A classic multi-predictor RAG module, written the DSPy way: constructor arguments, a sync
``forward``, two predictors. Nothing in it knows about dspex.

dspex runs it as a ``dspy`` module: built once with its constructor arguments (``init``), its
optimized state loaded, ``forward`` called in a worker thread with the backend's LM.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dspy

HERE = Path(__file__).resolve().parent


class RAG(dspy.Module):
    """Rewrite the question into a search query, retrieve passages, answer from them.

    Args:
        k: how many passages the answer sees.
        corpus: the passages, one per line (relative to this file).
    """

    def __init__(self, k: int = 2, corpus: str = "corpus.txt") -> None:
        super().__init__()
        self.k = k
        self.passages = (HERE / corpus).read_text(encoding="utf-8").splitlines()
        self.rewrite = dspy.Predict("question -> search_query")
        self.generate = dspy.ChainOfThought("context: list[str], question -> answer")

    def retrieve(self, query: str) -> list[str]:
        """The ``k`` passages sharing the most words with ``query``."""
        words = set(re.findall(r"\w+", query.lower()))

        def overlap(passage: str) -> int:
            return len(words & set(re.findall(r"\w+", passage.lower())))

        return sorted(self.passages, key=overlap, reverse=True)[: self.k]

    def forward(self, question: str) -> Any:
        query = self.rewrite(question=question).search_query
        return self.generate(context=self.retrieve(query), question=question)
