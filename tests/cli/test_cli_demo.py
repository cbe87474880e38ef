"""``dspex demo`` with no configuration: results, statistics, critical path and files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cli_support import cli

from dspex.backends.base import PredictRequest
from dspex.cli.demo import extractive_answer
from dspex.examples.rag.checks import confidence_check
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
    rows = {json.loads(x)["index"]: json.loads(x)["outputs"] for x in lines}
    # the corpus covers every bundled question: each answer reads as correct and is accepted
    assert all(row["accepted"] for row in rows.values()), rows
    assert "Phobos" in rows[20]["answer"]  # "What are the moons of Mars called?"


def test_extractive_mock_quotes_the_top_retrieved_passage() -> None:
    request = PredictRequest(
        signature=Signature.parse("question: str, passages: list[str] -> answer: str"),
        inputs={
            "question": "What are the moons of Mars called?",
            # ranked by the retriever; the second shares as many words with the question
            "passages": [
                "Mars has two small moons, Phobos and Deimos. They are tiny.",
                "Mars is called the Red Planet because of iron oxide dust.",
            ],
        },
    )
    out = extractive_answer(request)
    assert out["answer"] == "Mars has two small moons, Phobos and Deimos."
    assert 0.5 <= out["confidence"] <= 0.95


def test_confidence_check_accepts_a_grounded_answer_in_other_words() -> None:
    passages = ["Light from the Sun takes about 8 minutes and 20 seconds to reach Earth."]
    out = confidence_check(
        "How long does sunlight take to reach Earth?", passages[0], passages, confidence=0.6
    )
    assert out["accepted"] is True
    assert out["support"] == 0.8  # long, sunlight (light), take (takes), reach, earth: 4 of 5


def test_confidence_check_rejects_an_answer_no_passage_backs() -> None:
    passages = ["Mars has two small moons, Phobos and Deimos."]
    out = confidence_check(
        "What are the moons of Mars called?", "Jupiter has 95 moons.", passages, confidence=0.9
    )
    assert out["accepted"] is False


def test_confidence_check_judges_the_passage_the_answer_comes_from() -> None:
    passages = [
        "Mars has two small moons, Phobos and Deimos.",
        "Venus is the hottest planet.",
    ]
    # a short answer, as a real model gives, backed by the first passage
    short = confidence_check(
        "What are the moons of Mars called?", "Phobos and Deimos", passages, confidence=0.7
    )
    assert short["accepted"] is True
    # an answer quoting a passage that does not address the question scores low support
    off = confidence_check(
        "What are the moons of Mars called?", passages[1], passages, confidence=0.3
    )
    assert off["accepted"] is False
    assert off["support"] == 0.0


def test_extractive_mock_says_it_does_not_know_without_passages() -> None:
    request = PredictRequest(
        signature=Signature.parse("question: str, passages: list[str] -> answer: str"),
        inputs={"question": "Anything?", "passages": []},
    )
    out = extractive_answer(request)
    assert out["answer"] == "I do not know."
    assert out["confidence"] == 0.05
