"""``dspex demo`` with no configuration: results, statistics, critical path and files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cli_support import cli

from dspex.backends.base import PredictRequest
from dspex.cli.demo import extractive_answer
from dspex.signatures.signature import Signature


@pytest.mark.slow
@pytest.mark.embed
def test_demo_runs_the_example_and_writes_results_and_report(workdir: Path) -> None:
    started = time.perf_counter()
    outcome = cli("demo")
    assert outcome.code == 0, outcome.err
    assert time.perf_counter() - started < 60
    assert "extractive MOCK" in outcome.out
    assert "critical path: retrieve" in outcome.out
    assert "dspy" in outcome.out  # how to point it at a real model
    lines = (workdir / "dspex-demo-results.jsonl").read_text().splitlines()
    assert len(lines) == 30
    assert all(json.loads(x)["status"] == "completed" for x in lines)
    assert "<html" in (workdir / "dspex-demo-report.html").read_text().lower()
    assert not (workdir / "dspex.toml").exists()  # the allow-list is for this run only


def test_extractive_mock_quotes_the_best_matching_passage() -> None:
    request = PredictRequest(
        signature=Signature.parse("question: str, passages: list[str] -> answer: str"),
        inputs={
            "question": "Which planet is the hottest?",
            "passages": ["Mars is red. It is cold.", "Venus is the hottest planet. It is bright."],
        },
    )
    out = extractive_answer(request)
    assert out["answer"] == "Venus is the hottest planet."
    assert 0.5 <= out["confidence"] <= 0.95


def test_extractive_mock_says_it_does_not_know_without_passages() -> None:
    request = PredictRequest(
        signature=Signature.parse("question: str, passages: list[str] -> answer: str"),
        inputs={"question": "Anything?", "passages": []},
    )
    out = extractive_answer(request)
    assert out["answer"] == "I do not know."
    assert out["confidence"] == 0.05
