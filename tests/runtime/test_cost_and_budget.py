"""Cost from ``[prices]`` recorded on executions, steps, attempts and batches; ``max_cost``
stops a batch (resumable); ``estimate_batch`` prices a batch before it runs.

The mock backend answers with deterministic token counts (its model is ``mock``), so a price
for ``mock`` makes every cost predictable from the recorded tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dspex.runtime import Runtime

PROMPT_PRICE = 0.001
COMPLETION_PRICE = 0.002

CONFIG = f"""
[backends.default]
kind = "mock"

[prices.mock]
input_cost_per_token = {PROMPT_PRICE}
output_cost_per_token = {COMPLETION_PRICE}
"""

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def _cost(usage: dict[str, dict[str, int]]) -> float:
    counts = usage["mock"]
    return counts["prompt_tokens"] * PROMPT_PRICE + counts["completion_tokens"] * COMPLETION_PRICE


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    config = tmp_path / "dspex.toml"
    config.write_text(CONFIG)
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config) as rt:
        await rt.register(QA)
        await rt.initialize("qa")
        yield rt


async def test_an_execution_records_what_its_tokens_cost(runtime: Runtime) -> None:
    result = await runtime.execute("qa", {"question": "What is the capital of France?"})
    expected = _cost(result.usage)
    assert expected > 0
    assert result.cost_usd == pytest.approx(expected)
    assert result.steps[0].cost_usd == pytest.approx(expected)
    detail = await runtime.get_execution(result.execution_id)
    assert detail.cost_usd == pytest.approx(expected)
    assert [s.cost_usd for s in detail.steps] == pytest.approx([expected])
    assert [a.cost_usd for a in detail.attempt_records] == pytest.approx([expected])


async def test_a_model_without_a_price_costs_nothing(tmp_path: Path) -> None:
    async with Runtime.open(f"sqlite:///{tmp_path / 'free.db'}", cwd=tmp_path) as rt:
        await rt.register(QA)
        await rt.initialize("qa")
        result = await rt.execute("qa", {"question": "q"})
    assert result.usage["mock"]["total_tokens"] > 0
    assert result.cost_usd == 0.0


async def test_batch_statistics_and_the_batch_record_add_up_every_items_cost(
    runtime: Runtime,
) -> None:
    items = [{"question": f"question number {i}"} for i in range(6)]
    result = await runtime.run_batch("qa", items, max_concurrency=3)
    assert result.ok
    executions = [await runtime.get_execution(r.execution_id) for r in result.results or []]
    spent = sum(e.cost_usd for e in executions)
    assert spent == pytest.approx(sum(_cost(e.usage) for e in executions))
    assert result.stats.cost_usd == pytest.approx(spent)
    info = await runtime.get_batch(result.batch_id)
    assert info.cost_usd == pytest.approx(spent)


async def test_max_cost_stops_the_batch_resumably_once_spending_reaches_it(
    runtime: Runtime,
) -> None:
    items = [{"question": "the same question"} for _ in range(10)]
    one = (await runtime.execute("qa", items[0])).cost_usd
    budget = one * 2.5  # the third item's cost reaches it
    stopped = await runtime.run_batch("qa", items, max_concurrency=1, max_cost=budget)
    assert stopped.stop_reason == "max_cost"
    assert stopped.status == "cancelled"
    assert stopped.stats.completed == 3
    assert stopped.stats.cost_usd == pytest.approx(3 * one)
    info = await runtime.get_batch(stopped.batch_id)
    assert info.config["max_cost"] == pytest.approx(budget)
    assert info.cost_usd == pytest.approx(3 * one)
    # a resumed run has its own budget: this one is large enough for the rest
    resumed = await runtime.run_batch(
        "qa", items, resume=stopped.batch_id, max_concurrency=1, max_cost=budget * 10
    )
    assert resumed.ok
    assert resumed.stats.skipped == 3
    assert (await runtime.get_batch(stopped.batch_id)).cost_usd == pytest.approx(10 * one)


async def test_max_cost_must_be_positive(runtime: Runtime) -> None:
    from dspex import ValidationError

    with pytest.raises(ValidationError) as caught:
        await runtime.run_batch("qa", [{"question": "q"}], max_cost=0)
    assert [e.field for e in caught.value.errors] == ["max_cost"]


async def test_the_estimate_without_history_prices_each_lm_modules_prompt(
    runtime: Runtime,
) -> None:
    from dspex.actions.validate_signature import estimate_cost
    from dspex.signatures import Signature

    guess = estimate_cost(Signature.parse("question: str -> answer: str"))
    found = await runtime.estimate_batch("qa", [{"question": "q"}] * 4)
    assert (found.source, found.items, found.history_runs) == ("prompt_estimate", 4, 0)
    assert found.tokens_per_item == {
        "mock": {
            "prompt_tokens": guess.prompt_tokens,
            "completion_tokens": guess.completion_tokens,
            "total_tokens": guess.total_tokens,
        }
    }
    per_item = guess.prompt_tokens * PROMPT_PRICE + guess.completion_tokens * COMPLETION_PRICE
    assert found.cost_per_item_usd == pytest.approx(per_item)
    assert found.cost_usd == pytest.approx(4 * per_item)
    assert found.tokens == 4 * guess.total_tokens
    assert found.unpriced_models == []


async def test_the_estimate_uses_recorded_history_when_there_is_some(runtime: Runtime) -> None:
    done = [await runtime.execute("qa", {"question": "one two three"}) for _ in range(3)]
    found = await runtime.estimate_batch("qa", [{"question": "x"}] * 10)
    assert (found.source, found.history_runs) == ("history", 3)
    assert found.tokens_per_item["mock"] == done[0].usage["mock"]
    assert found.cost_usd == pytest.approx(10 * done[0].cost_usd)
    # nothing ran and nothing was recorded
    assert len((await runtime.list_executions(program="qa")).items) == 3


async def test_worker_processes_stop_at_the_batchs_max_cost_together(runtime: Runtime) -> None:
    items = [{"question": "the same question"} for _ in range(200)]
    one = (await runtime.execute("qa", items[0])).cost_usd
    stopped = await runtime.run_batch(
        "qa",
        items,
        max_concurrency=2,
        workers=2,
        chunk_size=10,
        max_cost=one * 5,
    )
    assert stopped.stop_reason == "max_cost"
    assert stopped.status == "cancelled"
    assert 5 <= stopped.stats.completed < 200
    info = await runtime.get_batch(stopped.batch_id)
    assert info.cost_usd == pytest.approx(stopped.stats.completed * one)


def test_the_estimate_names_the_model_of_wrapped_and_unknown_backends() -> None:
    from dspex.actions.estimate import _model_of
    from dspex.backends.mock import MockBackend
    from dspex.backends.openai_backend import OpenAIBackend
    from dspex.resilience.ratelimit import rate_limited

    openai = OpenAIBackend("o", base_url="http://127.0.0.1:9/v1", model="served-model")
    assert _model_of(rate_limited(openai, 60, None)) == "served-model"
    assert _model_of(rate_limited(MockBackend("m"), 60, None)) == "mock"
    assert _model_of(object()) == "unknown"  # type: ignore[arg-type]
    assert _model_of(None) == "unknown"


async def test_the_estimate_refuses_an_unknown_backend(runtime: Runtime) -> None:
    from dspex import ConfigError

    with pytest.raises(ConfigError, match="nope"):
        await runtime.estimate_batch("qa", [{"question": "q"}], backend="nope")
