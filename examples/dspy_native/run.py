"""Bring your DSPy program to dspex: optimize it, save it, import it, run it as a batch.

    python examples/dspy_native/run.py                                # offline, no API key
    python examples/dspy_native/run.py --model openai/gpt-4o-mini     # a real model

1. Optimize :class:`rag.RAG` with ``BootstrapFewShot`` and save it with ``.save("rag.json")``,
   exactly as a DSPy user does. Offline, the teacher is DSPy's ``DummyLM`` (scripted answers).
2. ``dspex program import rag:RAG --name rag --state rag.json --init-json '{"k": 2}' --init``:
   a program version around the class, with the optimized demos stored inline.
3. Run ``questions.jsonl`` as a recorded batch: ``dspex batch`` on the model; offline, through
   the Python API with the ``DummyLM`` as the default backend's LM (a ``dspex.toml`` backend
   names a provider model, which the offline run does not have).

Everything is written to ``--workdir`` (default: a new temporary directory): ``dspex.toml``
(``allowed_imports = ["rag"]``), ``rag.json``, the database and ``answers.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import dspy
from dspy.utils import DummyLM

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # this script imports rag; so does dspex, through PYTHONPATH

from rag import RAG  # noqa: E402 - after the path is set

TRAIN = {
    "Where was the Eiffel Tower built?": ("Eiffel Tower Paris", "Paris"),
    "What is the highest mountain above sea level?": ("highest mountain", "Mount Everest"),
    "Which Nobel Prizes did Marie Curie win?": ("Marie Curie Nobel", "physics and chemistry"),
}
QUESTIONS = [json.loads(line) for line in (HERE / "questions.jsonl").read_text().splitlines()]
OFFLINE_ANSWERS = [
    "Paris",
    "Mount Everest",
    "sugar and oxygen",
    "the Pacific",
    "physics and chemistry",
    "no",
]


def scripted_lm() -> DummyLM:
    """Answers every predictor of RAG for the training and the batch questions, offline."""
    answers: dict[str, dict[str, Any]] = {}
    for question, (query, answer) in TRAIN.items():
        answers[question] = {
            "search_query": query,
            "reasoning": "From the context.",
            "answer": answer,
        }
    for item, answer in zip(QUESTIONS, OFFLINE_ANSWERS, strict=True):
        question = item["question"]
        answers[question] = {
            "search_query": question,
            "reasoning": "From the context.",
            "answer": answer,
        }
    return DummyLM(answers)


def optimize(teacher: Any, out: Path) -> None:
    trainset = [
        dspy.Example(question=q, answer=a).with_inputs("question") for q, (_, a) in TRAIN.items()
    ]
    optimizer = dspy.BootstrapFewShot(
        metric=lambda example, prediction, trace=None: example.answer in prediction.answer,
        max_bootstrapped_demos=2,
        max_labeled_demos=0,
    )
    with dspy.context(lm=teacher):
        optimized = optimizer.compile(RAG(k=2), trainset=trainset)
    optimized.save(str(out))
    demos = {name: len(p.demos) for name, p in optimized.named_predictors()}
    print(f"optimized with BootstrapFewShot, saved {out.name}: demos per predictor {demos}")


def dspex_cli(workdir: Path, *args: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "dspex", *args]
    print("$ dspex " + " ".join(args))
    subprocess.run(command, cwd=workdir, env=env, check=True)


async def offline_batch(workdir: Path) -> None:
    import dspex

    backends = {"default": dspex.DspyBackend("default", lm=scripted_lm())}
    async with dspex.Runtime.open(
        config=workdir / "dspex.toml", backends=backends, cwd=workdir
    ) as rt:
        batch = await rt.run_batch("rag", QUESTIONS, out=workdir / "answers.jsonl")
    print(f"batch {batch.batch_id}: {batch.stats.completed} completed, {batch.stats.failed} failed")
    for item, result in zip(QUESTIONS, batch.results or [], strict=True):
        print(f"  {item['question']:<40} -> {(result.outputs or {}).get('answer')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a DSPy model string (default: offline, DummyLM)")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="dspex-dspy-native-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = 'allowed_imports = ["rag"]\n'
    if args.model:
        config += f'\n[backends.default]\nkind = "dspy"\nmodel = "{args.model}"\n'
    (workdir / "dspex.toml").write_text(config)
    print(f"working in {workdir}")

    optimize(dspy.LM(args.model) if args.model else scripted_lm(), workdir / "rag.json")
    dspex_cli(
        workdir, "program", "import", "rag:RAG", "--name", "rag", "--state", "rag.json",
        "--init-json", '{"k": 2}', "--signature", "question: str -> answer: str", "--init",
    )  # fmt: skip
    if args.model:
        dspex_cli(workdir, "batch", "rag", str(HERE / "questions.jsonl"), "--out", "answers.jsonl")
    else:
        asyncio.run(offline_batch(workdir))
    print(f"results in {workdir / 'answers.jsonl'}")
    print(f"look at the stored version: cd {workdir} && dspex program show rag --json")


if __name__ == "__main__":
    main()
