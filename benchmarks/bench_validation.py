"""Validation benchmark: dspex signature validation against a hand-built pydantic TypeAdapter.

Validates N input records (100,000; 10,000 with ``--quick``) of a 10-field signature with nested
list, dict, union and optional fields, once with ``Signature.validate_inputs`` and once with a
``TypeAdapter`` over a ``TypedDict`` written by hand that applies the same rules (strict str and
bool, ints that accept whole floats, finite floats, the same constraints, no extra keys).

Targets: dspex time ≤ 1.5× the pydantic time; signature parse + compile ≤ 1 ms (cold caches).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

from typing_extensions import TypedDict

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "src"))

from _common import Report, finish, parse_args
from pydantic import AfterValidator, ConfigDict, Field, Strict, StrictInt, TypeAdapter

from dspex.signatures import compile as sig_compile
from dspex.signatures.signature import Signature

SPEC = (
    "question: str 'the user question', context: list[str], k: int, temperature: float, "
    "tags: list[str], meta: dict[str, int | str], scores: dict[str, float], "
    "mode: Literal['fast', 'slow'], ids: list[int], extra: optional[list[dict[str, str]]] "
    "-> answer: str"
)
CONSTRAINTS = {
    "question": {"min_length": 1, "max_length": 2000},
    "k": {"minimum": 1, "maximum": 100},
    "temperature": {"minimum": 0, "maximum": 2},
    "tags": {"max_items": 10},
}


# --- the peer: the same rules written by hand with pydantic types --------------------------------


def _whole(value: float) -> int:
    if value.is_integer():
        return int(value)
    raise ValueError("Input should be a whole number")


Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
WholeInt = StrictInt | Annotated[Finite, AfterValidator(_whole)]
StrictStr = Annotated[str, Strict()]


class PeerRecord(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    question: Annotated[str, Strict(), Field(min_length=1, max_length=2000)]
    context: list[StrictStr]
    k: Annotated[WholeInt, Field(ge=1, le=100)]
    temperature: Annotated[float, Strict(), Field(ge=0, le=2, allow_inf_nan=False)]
    tags: Annotated[list[StrictStr], Field(max_length=10)]
    meta: dict[StrictStr, WholeInt | StrictStr]
    scores: dict[StrictStr, Finite]
    mode: Literal["fast", "slow"]
    ids: list[WholeInt]
    extra: NotRequired[list[dict[StrictStr, StrictStr]] | None]


# --- data -------------------------------------------------------------------------------------------


def make_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "north"]
    out = []
    for i in range(n):
        rec: dict[str, Any] = {
            "question": f"question {i} about {rng.choice(words)}?",
            "context": [rng.choice(words) * rng.randint(1, 3) for _ in range(rng.randint(1, 5))],
            "k": rng.randint(1, 100) if i % 7 else float(rng.randint(1, 100)),
            "temperature": rng.random() * 2 if i % 5 else 1,
            "tags": rng.sample(words, rng.randint(0, 4)),
            "meta": {"source": rng.choice(words), "rank": rng.randint(0, 9)},
            "scores": {w: rng.random() for w in rng.sample(words, 3)},
            "mode": rng.choice(["fast", "slow"]),
            "ids": [rng.randint(0, 10_000) for _ in range(rng.randint(0, 6))],
        }
        if i % 3 == 0:
            rec["extra"] = [{"k": rng.choice(words)}]
        out.append(rec)
    return out


def best_of(repeats: int, fn: Any) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cold_parse_compile_ms(rounds: int) -> tuple[float, float]:
    """Median ms of parse alone and of parse + compile, with every cache cleared each round."""
    parse_ms, total_ms = [], []
    for _ in range(rounds):
        sig_compile._cached_record_validator.cache_clear()
        sig_compile._cached_type_validator.cache_clear()
        start = time.perf_counter()
        sig = Signature.parse(SPEC, name="Bench", constraints=CONSTRAINTS)
        parsed = time.perf_counter()
        sig.compile()
        done = time.perf_counter()
        parse_ms.append((parsed - start) * 1000)
        total_ms.append((done - start) * 1000)
    return statistics.median(parse_ms), statistics.median(total_ms)


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 10_000 if args.quick else 100_000
    records = make_records(n)

    sig = Signature.parse(SPEC, name="Bench", constraints=CONSTRAINTS)
    sig.compile()
    peer = TypeAdapter(PeerRecord)

    # Same answers on the same data, or the comparison means nothing.
    for rec in records[:2000]:
        assert sig.validate_inputs(rec) == {"extra": None, **peer.validate_python(rec)}

    validate = sig.validate_inputs
    peer_validate = peer.validate_python

    def run_dspex() -> None:
        for rec in records:
            validate(rec)

    def run_peer() -> None:
        for rec in records:
            peer_validate(rec)

    run_dspex()
    run_peer()  # warm up both
    repeats = 3
    dspex_s = best_of(repeats, run_dspex)
    peer_s = best_of(repeats, run_peer)
    parse_ms, compile_ms = cold_parse_compile_ms(30)
    ratio = dspex_s / peer_s

    report = Report("bench_validation")
    report.metrics = {
        "records": n,
        "fields": len(sig.input_fields),
        "dspex_seconds": round(dspex_s, 4),
        "dspex_records_per_second": round(n / dspex_s),
        "dspex_us_per_record": round(dspex_s / n * 1e6, 3),
        "parse_ms": round(parse_ms, 4),
        "parse_compile_ms": round(compile_ms, 4),
    }
    report.peer = {
        "name": "pydantic TypeAdapter(TypedDict) built by hand",
        "seconds": round(peer_s, 4),
        "records_per_second": round(n / peer_s),
        "us_per_record": round(peer_s / n * 1e6, 3),
    }
    report.ratios = {"dspex_over_pydantic": round(ratio, 3)}
    report.row("records", f"{n:,}", "10-field signature, nested list/dict/union/optional")
    report.row("dspex validate_inputs", f"{dspex_s:.3f} s", f"{dspex_s / n * 1e6:.2f} µs/record")
    report.row("pydantic TypeAdapter", f"{peer_s:.3f} s", f"{peer_s / n * 1e6:.2f} µs/record")
    report.row("ratio dspex/pydantic", f"{ratio:.2f}×", "target ≤ 1.5×")
    report.row("parse (cold)", f"{parse_ms:.3f} ms", "median of 30")
    report.row("parse + compile (cold)", f"{compile_ms:.3f} ms", "target ≤ 1 ms")
    report.target("ratio_vs_pydantic", "<= 1.5", ratio, ratio <= 1.5)
    report.target("parse_compile_ms", "<= 1.0", compile_ms, compile_ms <= 1.0)
    return finish(report, args)


if __name__ == "__main__":
    raise SystemExit(main())
