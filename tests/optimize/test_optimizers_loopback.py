"""mipro_v2 and gepa with tiny budgets, over the real HTTP path (the loopback server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from tests.support.openai_server import OpenAIServer

import dspex
from dspex.backends.dspy_backend import DspyBackend
from dspex.config import OptimizeSettings, Settings

KEY_ENV = "DSPEX_TEST_OPTIMIZE_KEY"
QA = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}
ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(6)]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as running:
        yield running


def _runtime(server: OpenAIServer, optimize: OptimizeSettings) -> dspex.Runtime:
    backend = DspyBackend(
        "default", model="openai/loopback", api_base=server.base_url, api_key_env=KEY_ENV
    )
    return dspex.Runtime.open(
        "memory://", backends={"default": backend}, settings=Settings(optimize=optimize)
    )


@pytest.fixture
async def gepa_rt(server: OpenAIServer) -> AsyncIterator[dspex.Runtime]:
    async with _runtime(server, OptimizeSettings(auto=None, max_metric_calls=12)) as rt:
        await rt.register(QA)
        yield rt


async def test_gepa_runs_its_reflection_lm_and_program_through_the_backends(
    gepa_rt: dspex.Runtime, server: OpenAIServer
) -> None:
    run = await gepa_rt.optimize("qa", ROWS, metric="f1", optimizer="gepa", seed=1)
    assert run.status == "completed"
    assert run.settings == {
        "num_threads": 1,
        "seed": 1,
        "max_metric_calls": 12,
        "reflection_backend": "default",
    }
    # every request the server saw is an LM call recorded under the run (program + reflection);
    # GEPA scores a candidate on an example more than once: the response cache answers those
    assert run.stats["lm_calls"] == server.request_count
    assert run.stats["cache_hits"] > 0
    assert run.stats["lm_calls"] + run.stats["cache_hits"] > run.stats["program_calls"]
    candidates = [t for t in run.trials if "candidate" in t.detail]
    assert candidates
    assert all(t.score is not None for t in candidates)
    assert (await gepa_rt.get_program("qa", run.version)).status == "draft"


async def test_mipro_v2_with_a_tiny_budget_proposes_and_records_its_trials(
    server: OpenAIServer,
) -> None:
    pytest.importorskip("optuna")
    optimize = OptimizeSettings(auto=None, num_candidates=2, num_trials=2)
    async with _runtime(server, optimize) as rt:
        await rt.register(QA)
        run = await rt.optimize("qa", ROWS, metric="f1", optimizer="mipro_v2", seed=5)
    assert run.status == "completed"
    assert (run.settings["seed"], run.settings["num_trials"]) == (5, 2)
    assert run.stats["lm_calls"] == server.request_count
    assert len(run.trials) > 2


async def test_gepa_and_mipro_need_a_budget(server: OpenAIServer) -> None:
    async with _runtime(server, OptimizeSettings(auto=None)) as rt:
        await rt.register(QA)
        with pytest.raises(dspex.ConfigError, match="budget"):
            await rt.optimize("qa", ROWS, metric="f1", optimizer="gepa")
        with pytest.raises(dspex.ConfigError, match=r"budget|optuna"):
            await rt.optimize("qa", ROWS, metric="f1", optimizer="mipro_v2")
        assert await rt.list_optimizations() == []
