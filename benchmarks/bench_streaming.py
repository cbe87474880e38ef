"""Streaming an execution: time to the first token and to the end, against DSPy's own streaming.

The loopback OpenAI-compatible server (``tests/support/openai_server.py``, a thread of this
process) answers ``stream: true`` requests with a 60-word answer in DSPy's ChatAdapter format,
three words per chunk, ``CHUNK_DELAY`` seconds apart, as a model generating text would.

- **dspex**: ``Runtime.stream`` of a one-predictor program on an ``openai`` backend pointed at the
  server, every execution recorded in SQLite; the first ``token`` event and the ``done`` event
  are timed.
- **peer**: what a DSPy user writes: ``dspy.streamify(dspy.Predict("question -> answer"))`` with a
  ``dspy.streaming.StreamListener`` on ``answer``, over a ``dspy.LM`` on the same server (cache
  off); the first ``StreamResponse`` and the final ``Prediction`` are timed.

Both run one request at a time, taking turns round by round; the medians are reported with the
ratios. Targets: dspex's first token comes before half of its whole answer's time (the answer
really streams), and no later than 1.5× DSPy's first token.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Report, finish, parse_args

CHUNK_DELAY = 0.005
WORDS = 60
ANSWER = " ".join(f"word{i}" for i in range(WORDS))
SPEC: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def _respond(request: dict[str, Any]) -> str:
    return f"[[ ## answer ## ]]\n{ANSWER}\n\n[[ ## completed ## ]]"


async def _dspex(rt: Any, question: str) -> tuple[float, float]:
    """Seconds to the first token and to the done event of one streamed execution."""
    import dspex

    started = time.perf_counter()
    first = 0.0
    async for event in rt.stream("qa", {"question": question}):
        if isinstance(event, dspex.TokenDelta) and not first:
            first = time.perf_counter() - started
        elif isinstance(event, dspex.ExecutionDone) and event.execution.outputs != {
            "answer": ANSWER
        }:
            raise RuntimeError(f"unexpected result: {event.execution}")
    return first, time.perf_counter() - started


async def _peer(program: Any, question: str) -> tuple[float, float]:
    """Seconds to the first chunk and to the prediction of DSPy's own streaming."""
    import dspy

    started = time.perf_counter()
    first = 0.0
    async for value in program(question=question):
        if isinstance(value, dspy.streaming.StreamResponse) and not first:
            first = time.perf_counter() - started
        elif isinstance(value, dspy.Prediction) and value.answer != ANSWER:
            raise RuntimeError(f"unexpected prediction: {value}")
    return first, time.perf_counter() - started


async def bench(report: Report, *, n: int, rounds: int) -> None:
    import dspy
    from tests.support.openai_server import OpenAIServer

    from dspex.runtime import Runtime

    with (
        OpenAIServer(_respond, chunk_delay=CHUNK_DELAY) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = Path(tmp) / "dspex.toml"
        config.write_text(
            f'[backends.default]\nkind = "openai"\nbase_url = "{server.base_url}"\n'
            'model = "bench-model"\n'
        )
        lm = dspy.LM(
            "openai/bench-model", api_base=server.base_url, api_key="k", cache=False, num_retries=0
        )
        predict = dspy.Predict("question -> answer")
        listener = dspy.streaming.StreamListener(signature_field_name="answer", allow_reuse=True)
        peer = dspy.streamify(predict, stream_listeners=[listener], is_async_program=True)
        async with Runtime.open(f"sqlite:///{Path(tmp) / 'dspex.db'}", config=config) as rt:
            await rt.register(SPEC)
            await rt.initialize("qa")
            runs: dict[str, list[tuple[float, float]]] = {"dspex": [], "dspy": []}
            with dspy.context(lm=lm):
                for i in range(max(2, n // 5)):  # warm-up: imports, connections, caches
                    await _dspex(rt, f"warm {i}")
                    await _peer(peer, f"warm {i}")
                for r in range(rounds):
                    for i in range(n):
                        runs["dspex"].append(await _dspex(rt, f"q {r} {i}"))
                        runs["dspy"].append(await _peer(peer, f"q {r} {i}"))
    first = {k: statistics.median(f for f, _ in v) * 1000 for k, v in runs.items()}
    whole = {k: statistics.median(w for _, w in v) * 1000 for k, v in runs.items()}
    report.metrics.update(
        {
            "requests": n * rounds,
            "chunk_delay_ms": CHUNK_DELAY * 1000,
            "dspex_first_token_ms_p50": round(first["dspex"], 3),
            "dspex_done_ms_p50": round(whole["dspex"], 3),
        }
    )
    report.peer.update(
        {
            "dspy_streamify_first_token_ms_p50": round(first["dspy"], 3),
            "dspy_streamify_done_ms_p50": round(whole["dspy"], 3),
        }
    )
    report.ratios["first_token_dspex_over_dspy"] = round(first["dspex"] / first["dspy"], 3)
    report.ratios["done_dspex_over_dspy"] = round(whole["dspex"] / whole["dspy"], 3)
    report.row(
        "dspex first token", f"{first['dspex']:.2f} ms", "Runtime.stream, recorded in SQLite"
    )
    report.row("dspex done", f"{whole['dspex']:.2f} ms", "the done event, record written")
    report.row("dspy first token", f"{first['dspy']:.2f} ms", "dspy.streamify + StreamListener")
    report.row("dspy done", f"{whole['dspy']:.2f} ms", "the final Prediction, nothing recorded")
    report.row(
        "ratios",
        f"{first['dspex'] / first['dspy']:.2f}x",
        f"first token; done {whole['dspex'] / whole['dspy']:.2f}x",
    )
    share = first["dspex"] / whole["dspex"]
    report.target("first_token_share_of_done", "<= 0.5", share, share <= 0.5)
    ratio = first["dspex"] / first["dspy"]
    report.target("first_token_over_dspy", "<= 1.5", ratio, ratio <= 1.5)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "streaming benchmark")
    report = Report("streaming")
    if args.quick:
        asyncio.run(bench(report, n=10, rounds=3))
    else:
        asyncio.run(bench(report, n=30, rounds=5))
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(main())
