from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from dspex.backends.base import Backend, PredictRequest
from dspex.backends.mock import MockBackend
from dspex.errors import (
    BackendError,
    BackendUnavailableError,
    BadRequestError,
    DspexTimeoutError,
    RateLimitError,
    is_retryable,
)
from dspex.signatures.signature import Signature

pytestmark = pytest.mark.looptime

RICH = Signature.parse(
    "question: str, k: int -> answer: str, count: int, confidence: probability, "
    "label: Literal['yes', 'no'], vector: embedding[8], steps: reasoning_chain, "
    "tags: list[str], scores: dict[str, float], maybe: optional[int], code: str",
    constraints={
        "count": {"minimum": 1, "maximum": 5},
        "answer": {"min_length": 3, "max_length": 40},
        "tags": {"min_items": 1, "max_items": 3, "unique_items": True},
        "code": {"pattern": r"^[A-Z]{3}-\d{3}$"},
    },
)
QA = Signature.parse("question: str -> answer: str")
COT = Signature.parse("question: str -> reasoning: str, answer: str")


def _request(
    signature: Signature = RICH,
    inputs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> PredictRequest:
    if inputs is None:
        inputs = {"question": "What is the capital of France?", "k": 3}
        if signature is not RICH:
            inputs = {"question": "What is the capital of France?"}
    return PredictRequest(signature=signature, inputs=inputs, **kwargs)


# ---------------------------------------------------------------------------- outputs


def test_the_mock_backend_is_a_backend() -> None:
    assert isinstance(MockBackend(), Backend)


async def test_outputs_pass_the_signatures_own_validation() -> None:
    backend = MockBackend()
    for i in range(30):
        result = await backend.complete(_request(inputs={"question": f"q{i}", "k": i}))
        assert RICH.validate_outputs(result.outputs)
        assert set(result.outputs) == set(RICH.output_names)


async def test_the_same_request_gets_the_same_outputs_from_another_instance() -> None:
    first = await MockBackend(seed=5).complete(_request(module="m"))
    second = await MockBackend(seed=5).complete(_request(module="m"))
    assert first.outputs == second.outputs


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 6},
        {"module": "other"},
        {"inputs": {"question": "What is the capital of Spain?", "k": 3}},
    ],
)
async def test_changing_seed_module_or_inputs_changes_the_outputs(change: dict[str, Any]) -> None:
    base = await MockBackend(seed=5).complete(_request(module="m"))
    seed = change.get("seed", 5)
    request = _request(module=change.get("module", "m"), inputs=change.get("inputs"))
    changed = await MockBackend(seed=seed).complete(request)
    assert changed.outputs != base.outputs


async def test_input_key_order_does_not_change_the_outputs() -> None:
    backend = MockBackend()
    a = await backend.complete(_request(inputs={"question": "q", "k": 1}))
    b = await backend.complete(_request(inputs={"k": 1, "question": "q"}))
    assert a.outputs == b.outputs


_CHILD = """
import asyncio, json
from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.signatures.signature import Signature
sig = Signature.parse("question: str -> answer: str, n: int, p: probability")
req = PredictRequest(signature=sig, inputs={"question": "why?"}, module="m")
print(json.dumps(asyncio.run(MockBackend(seed=3).complete(req)).outputs, sort_keys=True))
"""


def test_outputs_are_the_same_in_processes_with_different_hash_seeds() -> None:
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(json.loads(proc.stdout))
    assert outputs[0] == outputs[1]


async def test_chain_of_thought_fills_a_declared_reasoning_field_with_reasoning() -> None:
    result = await MockBackend().complete(_request(COT, kind="chain_of_thought"))
    assert result.outputs["reasoning"].startswith("Looking at question")
    assert COT.validate_outputs(result.outputs)


async def test_chain_of_thought_puts_undeclared_reasoning_beside_the_outputs() -> None:
    result = await MockBackend().complete(_request(QA, kind="chain_of_thought"))
    assert set(result.outputs) == {"answer"}
    assert result.extras["reasoning"].startswith("Looking at question")


async def test_plain_predict_calls_carry_no_reasoning() -> None:
    result = await MockBackend().complete(_request(QA))
    assert result.extras == {}


async def test_usage_reports_plausible_token_counts_under_the_mock_model() -> None:
    result = await MockBackend().complete(_request(QA, inputs={"question": "one two three"}))
    assert result.model == "mock"
    usage = result.usage["mock"]
    # Three words plus the field's name, at 0.75 words per token.
    assert usage.prompt_tokens == int((3 + 1) / 0.75) + 1
    words = len(result.outputs["answer"].split()) + 1
    assert usage.completion_tokens == int(words / 0.75) + 1


# ---------------------------------------------------------------------------- latency


async def test_latency_is_spent_on_the_event_loop_clock() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await MockBackend(latency_ms=250).complete(_request(QA))
    assert loop.time() - start == pytest.approx(0.25)
    assert result.latency_ms == pytest.approx(250)


async def test_a_request_can_override_the_latency_for_its_module() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await MockBackend(latency_ms=250).complete(_request(QA, config={"mock_latency_ms": 40}))
    assert loop.time() - start == pytest.approx(0.04)


async def test_jitter_adds_at_most_its_bound_and_repeats_by_seed() -> None:
    async def latencies(seed: int) -> list[float]:
        backend = MockBackend(latency_ms=100, latency_jitter_ms=50, seed=seed)
        return [(await backend.complete(_request(QA))).latency_ms for _ in range(20)]

    first = await latencies(1)
    assert all(100 <= ms <= 150 for ms in first)
    assert len(set(first)) > 1
    assert first == pytest.approx(await latencies(1))


# ---------------------------------------------------------------------------- faults


async def _outcomes(backend: MockBackend, n: int) -> list[str]:
    out = []
    for _ in range(n):
        try:
            await backend.complete(_request(QA))
        except BackendError as exc:
            out.append(exc.code)
        else:
            out.append("ok")
    return out


async def test_injected_failures_are_retryable_and_counted() -> None:
    backend = MockBackend(failure_rate=1.0)
    outcomes = await _outcomes(backend, 40)
    assert set(outcomes) == {RateLimitError.code, BackendUnavailableError.code}
    assert backend.failures == backend.calls == 40


async def test_injected_retryable_errors_say_they_are_retryable() -> None:
    with pytest.raises(BackendError) as info:
        await MockBackend(failure_rate=1.0, name="m1").complete(_request(QA))
    assert is_retryable(info.value)
    assert info.value.backend == "m1"


async def test_injected_permanent_failures_are_bad_requests() -> None:
    with pytest.raises(BadRequestError) as info:
        await MockBackend(permanent_failure_rate=1.0).complete(_request(QA))
    assert not is_retryable(info.value)
    assert info.value.status == 400


async def test_fault_rates_are_roughly_honoured() -> None:
    backend = MockBackend(failure_rate=0.2, permanent_failure_rate=0.1)
    outcomes = await _outcomes(backend, 2000)
    retryable = sum(o in (RateLimitError.code, BackendUnavailableError.code) for o in outcomes)
    assert 0.17 < retryable / 2000 < 0.23
    assert 0.08 < outcomes.count(BadRequestError.code) / 2000 < 0.12


async def test_fault_injection_repeats_for_the_same_seed() -> None:
    first = await _outcomes(MockBackend(failure_rate=0.3, seed=9), 100)
    again = await _outcomes(MockBackend(failure_rate=0.3, seed=9), 100)
    other = await _outcomes(MockBackend(failure_rate=0.3, seed=10), 100)
    assert first == again
    assert first != other


async def test_a_hang_lasts_until_cancelled() -> None:
    backend = MockBackend(hang_rate=1.0)
    task = asyncio.create_task(backend.complete(_request(QA)))
    await asyncio.sleep(3600)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.hangs == 1


async def test_a_hang_with_a_timeout_raises_a_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    backend = MockBackend(hang_rate=1.0)
    with pytest.raises(DspexTimeoutError, match="within 2s"):
        await backend.complete(_request(QA, timeout=2))
    assert loop.time() - start == pytest.approx(2)
    assert backend.failures == 1


async def test_a_call_within_its_timeout_answers() -> None:
    result = await MockBackend(latency_ms=10).complete(_request(QA, timeout=1))
    assert result.outputs["answer"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate": 1.5},
        {"hang_rate": -0.1},
        {"failure_rate": 0.6, "permanent_failure_rate": 0.6},
        {"latency_ms": -1},
    ],
)
def test_impossible_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        MockBackend(**kwargs)


# ---------------------------------------------------------------------------- handler


async def test_a_handler_scripts_the_outputs() -> None:
    seen: list[str] = []

    def handler(request: PredictRequest) -> dict[str, Any]:
        seen.append(request.module)
        return {"answer": "Paris"}

    result = await MockBackend(handler=handler).complete(_request(QA, module="gen"))
    assert result.outputs == {"answer": "Paris"}
    assert seen == ["gen"]


async def test_an_async_handler_scripts_the_outputs() -> None:
    async def handler(request: PredictRequest) -> dict[str, Any]:
        await asyncio.sleep(1)
        return {"answer": request.inputs["question"].upper()}

    result = await MockBackend(handler=handler).complete(_request(QA, inputs={"question": "hi"}))
    assert result.outputs == {"answer": "HI"}


async def test_a_handler_raising_a_dspex_error_passes_it_through() -> None:
    def handler(request: PredictRequest) -> dict[str, Any]:
        raise RateLimitError("slow down", retry_after=3.0)

    backend = MockBackend(handler=handler)
    with pytest.raises(RateLimitError) as info:
        await backend.complete(_request(QA))
    assert info.value.retry_after == 3.0
    assert backend.failures == 1


async def test_a_handler_raising_anything_else_becomes_a_backend_error() -> None:
    def handler(request: PredictRequest) -> dict[str, Any]:
        raise KeyError("oops")

    with pytest.raises(BackendError, match="KeyError") as info:
        await MockBackend(handler=handler).complete(_request(QA))
    assert type(info.value) is BackendError


# ---------------------------------------------------------------------------- lifecycle


async def test_health_is_healthy_and_reports_counters() -> None:
    backend = MockBackend()
    await backend.complete(_request(QA))
    health = await backend.health()
    assert health.status == "healthy"
    assert health.details == {"calls": 1, "failures": 0, "hangs": 0}


async def test_a_closed_backend_refuses_calls_and_reports_unhealthy() -> None:
    backend = MockBackend()
    await backend.aclose()
    with pytest.raises(BackendError, match="closed"):
        await backend.complete(_request(QA))
    assert (await backend.health()).status == "unhealthy"


async def test_outputs_for_an_equal_but_distinct_signature_are_the_same() -> None:
    backend = MockBackend()
    twin = Signature.parse("question: str -> answer: str")
    a = await backend.complete(_request(QA))
    b = await backend.complete(_request(twin))
    assert a.outputs == b.outputs
