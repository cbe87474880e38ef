"""DSPy modules written the DSPy way (sync ``forward``, constructor arguments), for the tests of
the ``dspy`` kind and ``Program.from_dspy``.

The tests allow-list this module by its import path, ``tests.engine.dspy_native_modules``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import dspy
from dspy.utils import DummyLM

REF = "tests.engine.dspy_native_modules"


class QA(dspy.Module):
    """Every DSPy tutorial's shape: ``forward`` only, a predictor built from constructor
    arguments."""

    def __init__(self, prefix: str = "", reasoning: bool = True) -> None:
        super().__init__()
        self.prefix = prefix
        self.answer = (
            dspy.ChainOfThought("question -> answer")
            if reasoning
            else dspy.Predict("question -> answer")
        )

    def forward(self, question: str) -> Any:
        return self.answer(question=self.prefix + question)


class Echo(dspy.Module):
    """No LM: answers with its input and constructor arguments (``k`` has a default)."""

    def __init__(self, suffix: str) -> None:
        super().__init__()
        self.suffix = suffix

    def forward(self, question: str, k: int = 3) -> Any:
        return dspy.Prediction(answer=f"{question}{self.suffix} k={k}")


class Lookup(dspy.Module):
    """One predictor whose inputs are not ``forward``'s: it finds ``context`` itself."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question, context: list[str] -> answer")

    def forward(self, question: str, k: int = 2) -> Any:
        return self.answer(question=question, context=[question] * k)


class TwoSteps(dspy.Module):
    """Two predictors: its signature cannot be derived."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.polish = dspy.Predict("draft -> answer")

    def forward(self, question: str) -> Any:
        return self.polish(draft=self.draft(question=question).draft)


class ThreadLocalNotes(dspy.Module):
    """Keeps per-call state on ``self``: two calls sharing one instance would mix it up.

    Both calls stop at :data:`MEETING` after writing ``self.question``, so they overlap for
    certain; each must still read back its own question.
    """

    def forward(self, question: str) -> Any:
        self.question = question
        MEETING.wait()
        return dspy.Prediction(answer=self.question)


class AsyncNotes(dspy.Module):
    """The ``aforward`` twin of :class:`ThreadLocalNotes` (an ``await`` between write and read)."""

    async def aforward(self, question: str) -> Any:
        self.question = question
        await ASYNC_MEETING.get().wait()
        return dspy.Prediction(answer=self.question)


class ShoutingCoT(dspy.ChainOfThought):
    """Overrides only ``forward``: the inherited ``aforward`` would skip it."""

    def __init__(self) -> None:
        super().__init__("question -> answer")

    def forward(self, **kwargs: Any) -> Any:
        return dspy.Prediction(answer=str(kwargs["question"]).upper(), reasoning="")


class CallsLM(dspy.Module):
    """A forward-only module with a predictor and no constructor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.think = dspy.ChainOfThought("question -> answer")

    def forward(self, question: str) -> Any:
        return self.think(question=question)


def bootstrapped_qa(prefix: str = "Q: ") -> dspy.Module:
    """``QA(prefix=…)`` optimized by BootstrapFewShot on DummyLM: two demos on its predictor."""
    trainset = [
        dspy.Example(question=f"train question {i}", answer=f"train answer {i}").with_inputs(
            "question"
        )
        for i in range(2)
    ]
    teacher_lm = DummyLM(
        {
            f"train question {i}": {"reasoning": f"because {i}", "answer": f"train answer {i}"}
            for i in range(2)
        }
    )
    optimizer = dspy.BootstrapFewShot(
        metric=lambda example, prediction, trace=None: prediction.answer == example.answer,
        max_bootstrapped_demos=2,
        max_labeled_demos=0,
    )
    with dspy.context(lm=teacher_lm):
        return optimizer.compile(QA(prefix=prefix), trainset=trainset)


# two parties, so two overlapping calls must both arrive; the timeout only ends a broken test
MEETING = threading.Barrier(2, timeout=30)


class _AsyncMeeting:
    """An ``asyncio.Barrier`` per event loop (each test has its own loop)."""

    def __init__(self) -> None:
        self._barrier: asyncio.Barrier | None = None

    def reset(self, parties: int) -> None:
        self._barrier = asyncio.Barrier(parties)

    def get(self) -> asyncio.Barrier:
        assert self._barrier is not None, "reset() the meeting first"
        return self._barrier


ASYNC_MEETING = _AsyncMeeting()
