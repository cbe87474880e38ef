"""``dspex demo``: the bundled QA program as a batch, end to end, with no configuration.

Registers the retrieval-augmented example (:mod:`dspex.examples`), runs it as a batch over the
bundled questions on the default backend, and prints a results table, the statistics and the
critical path; writes the results (JSONL) and the HTML graph report. With no real LM configured
the default backend is an *extractive mock*: it answers with the first sentence of the top
retrieved passage and a confidence from word overlap — clearly labelled, no LM involved.

The example's python module is allow-listed for this run only (the user's configuration is not
changed), and model-loading noise (progress bars, log lines) is kept off the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dspex.cli._common import (
    EXIT_FAILED,
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    console,
    err_console,
    fail,
    format_ms,
    handle_errors,
    print_json,
)

if TYPE_CHECKING:
    from dspex import BatchResult, GraphInfo, PredictRequest

__all__ = ["demo", "extractive_answer"]

_EXAMPLES = "dspex.examples"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_QUIET_LOGGERS = ("sentence_transformers", "transformers", "huggingface_hub", "torch", "filelock")
_REAL_MODEL_HINT = """\
to run it on a real model, add a dspex.toml here (the API key stays in the environment):

    [backends.default]
    kind = "dspy"
    model = "openai/gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"
"""


def extractive_answer(request: PredictRequest) -> dict[str, Any]:
    """The demo's mock: the first sentence of the top retrieved passage.

    The retriever ranks the passages, so the first one is the best for the question. Confidence
    is the share of the question's content words that passage covers (0.05 to 0.95).
    """
    from dspex.examples.rag.checks import content_words, coverage

    question = str(request.inputs.get("question", ""))
    passages = [str(p) for p in request.inputs.get("passages") or [] if str(p).strip()]
    best = passages[0].strip() if passages else ""
    sentence = _SENTENCE.split(best, maxsplit=1)[0] if best else ""
    answer = (sentence or "I do not know.")[:400]
    support = coverage(content_words(question), best) if best else 0.0
    confidence = round(min(0.95, max(0.05, support)), 3)
    return {
        "reasoning": "Extractive mock: quoting the top retrieved passage.",
        "answer": answer,
        "confidence": confidence,
    }


def _quiet() -> None:
    """Keep model loading (transformers, sentence-transformers) off the terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def demo(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="where the results and the HTML report go")
    ] = Path("."),
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="questions answered at once")
    ] = 8,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Run the bundled QA example as a batch and show what dspex records."""
    _quiet()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail("bad_arguments", f"cannot create {str(out_dir)!r}: {exc}", as_json=as_json)
    results_path = out_dir / "dspex-demo-results.jsonl"
    report_path = out_dir / "dspex-demo-report.html"
    started = time.perf_counter()
    say = _no_progress if as_json else _progress
    with handle_errors(as_json=as_json):
        outcome = asyncio.run(_run(database_url, config, concurrency, results_path, say))
    result, info, mock, rows = outcome
    from dspex.cli.graph import graph_report
    from dspex.reports.html import render_graph_html

    report_path.write_text(render_graph_html(graph_report(info)), encoding="utf-8")
    elapsed = time.perf_counter() - started
    critical = list(info.plan.get("critical_path", []))
    if as_json:
        print_json(
            {
                "batch": result.model_dump(mode="json", exclude={"results"}),
                "backend": "extractive mock" if mock else "configured",
                "critical_path": critical,
                "results_file": str(results_path),
                "report_file": str(report_path),
                "seconds": round(elapsed, 3),
            }
        )
    else:
        _render(result, info, mock, rows, critical, results_path, report_path, elapsed)
    if result.stats.completed != result.stats.total:
        raise typer.Exit(EXIT_FAILED)


def _progress(message: str) -> None:
    """One line on stderr saying what the demo is doing (the results go to stdout)."""
    err_console.print(f"[dim]… {message}[/]", soft_wrap=True)


def _no_progress(message: str) -> None:
    """``--json`` prints one object and nothing else."""


async def _run(
    database_url: str | None,
    config: Path | None,
    concurrency: int,
    results_path: Path,
    say: Callable[[str], None],
) -> tuple[BatchResult, GraphInfo, bool, list[tuple[str, dict[str, Any] | None, str]]]:
    import json

    import dspex
    from dspex.config import load_settings
    from dspex.examples import rag_program_path, rag_questions_path

    settings = load_settings(config)
    allowed = tuple(dict.fromkeys((*settings.allowed_imports, _EXAMPLES)))
    settings = settings.model_copy(update={"allowed_imports": allowed})
    default = settings.backends[settings.default_backend]
    mock = default.kind == "mock"
    backends = (
        {"default": dspex.MockBackend("extractive-mock", handler=extractive_answer)}
        if mock
        else None
    )
    questions = [
        json.loads(line)
        for line in rag_questions_path().read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    # the embedding model prints while it loads: swallow it
    sink = io.StringIO()
    say("opening the store and registering the example program")
    async with dspex.Runtime.open(database_url, settings=settings, backends=backends) as rt:
        info = await rt.register(rag_program_path())
        say(
            "loading the local embedding model (all-MiniLM-L6-v2) and indexing the corpus;"
            " this takes a few seconds"
        )
        with contextlib.redirect_stderr(sink):
            await rt.initialize(info.name, info.version)
        say(f"answering {len(questions)} questions as a batch (concurrency {concurrency})")
        with contextlib.redirect_stderr(sink):
            result = await rt.run_batch(
                info.name, questions, max_concurrency=concurrency, out=results_path
            )
        graph = await rt.graph(info.name, info.version, batch_id=result.batch_id)
    rows = [
        (q["question"], item.outputs, item.error.code if item.error else "")
        for q, item in zip(questions, result.results or [], strict=False)
    ]
    return result, graph, mock, rows


def _render(
    result: BatchResult,
    info: GraphInfo,
    mock: bool,
    rows: list[tuple[str, dict[str, Any] | None, str]],
    critical: list[str],
    results_path: Path,
    report_path: Path,
    elapsed: float,
) -> None:
    from dspex.cli.batch import render_stats

    label = (
        "[bold yellow]backend: extractive MOCK[/] (no LM: answers quote the top retrieved passage)"
        if mock
        else "backend: the configured default"
    )
    console.print(f"[bold]dspex demo[/] — {info.program} v{info.version}, {len(rows)} questions")
    console.print(label)
    table = Table(title="Results" + (" (mock answers)" if mock else ""))
    table.add_column("#", justify="right")
    table.add_column("question", overflow="fold")
    table.add_column("answer", overflow="fold")
    table.add_column("confidence", justify="right")
    table.add_column("accepted")
    for number, (question, outputs, error) in enumerate(rows):
        if outputs is None:
            table.add_row(str(number), question, f"[red]failed: {error}[/]", "-", "-")
            continue
        table.add_row(
            str(number),
            question,
            str(outputs.get("answer", "")),
            f"{float(outputs.get('confidence', 0.0)):.2f}",
            "yes" if outputs.get("accepted") else "no",
        )
    console.print(table)
    console.print(render_stats(result.stats))
    plan = info.plan
    durations: dict[str, Any] = plan.get("durations_ms", {})
    path = " → ".join(f"{m} ({format_ms(durations.get(m))})" for m in critical) or "-"
    console.print(f"critical path: {path}", soft_wrap=True)
    console.print(f"batch: {result.batch_id}  ({elapsed:.1f} s in all)", soft_wrap=True)
    console.print(f"results: {results_path}", soft_wrap=True)
    console.print(f"graph report: {report_path}", soft_wrap=True)
    if mock:
        console.print(_REAL_MODEL_HINT, soft_wrap=True, markup=False)
