"""How module, coordinator and item retries compose: the bound on backend calls per item.

One predictor call of one batch item makes at most ``(1 + max_retries) × A`` backend calls,
where ``A`` is the coordinator group's ``max_attempts`` when the module names a group, else the
module's own (see :mod:`dspex.resilience.policy`). Each test drives backends that always fail in a
retryable way, so every budget is spent to the last call, and counts the calls. The breakers are
set never to open (an open circuit would only lower the count). Waits are fake (looptime).
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from tests.resilience.faults import UNAVAILABLE, scripted

from dspex.backends.base import Backend
from dspex.backends.mock import MockBackend
from dspex.engine.engine import Engine
from dspex.engine.policy import CallBudget, call_budgets
from dspex.engine.program import Program
from dspex.errors import BackendUnavailableError
from dspex.resilience import BreakerConfig, BreakerRegistry, Coordinator, RetryPolicy
from dspex.runtime import Runtime

pytestmark = pytest.mark.looptime

MODULE_RETRY = {"max_attempts": 3, "initial_interval": 0.5, "jitter": 0.0}
GROUP_POLICY = RetryPolicy(max_attempts=4, initial_interval=0.5, jitter=0.0)
NEVER_OPEN = BreakerConfig(minimum_calls=1000, window_size=1000)


def _qa(backend: str, retry: Any = MODULE_RETRY) -> dict[str, Any]:
    module: dict[str, Any] = {
        "kind": "predict",
        "signature": "question: str -> answer: str",
        "backend": backend,
    }
    if retry is not None:
        module["retry"] = retry
    return {
        "name": "qa",
        "signature": "question: str -> answer: str",
        "modules": {"answer": module},
    }


def _down(name: str) -> MockBackend:
    """A backend that fails every call with a 503."""
    return scripted(name, *[UNAVAILABLE] * 1000)


def _group(*members: MockBackend) -> Coordinator:
    return Coordinator("main", members, policy=GROUP_POLICY, breakers=BreakerRegistry(NEVER_OPEN))


async def _batch(
    tmp_path: Path, backends: dict[str, Backend], spec: dict[str, Any], max_retries: int
) -> tuple[Any, dict[str, Any]]:
    async with Runtime.open("memory://", cwd=tmp_path, backends=backends) as rt:
        await rt.register(spec)
        await rt.initialize(spec["name"])
        batch = await rt.run_batch(spec["name"], [{"question": "q"}], max_retries=max_retries)
        info = await rt.get_batch(batch.batch_id)
    return batch, info.config


async def test_a_module_on_a_plain_backend_makes_its_attempts_times_the_item_runs(
    tmp_path: Path,
) -> None:
    backend = _down("plain")
    batch, config = await _batch(tmp_path, {"default": backend}, _qa("default"), max_retries=2)
    [item] = batch.results
    assert (item.status, item.error.code if item.error else None) == (
        "failed",
        "backend_unavailable",
    )
    assert backend.calls == 9  # (1 + 2 item retries) × 3 module attempts
    assert config["calls_bound"] == {"answer": 9}


async def test_a_module_on_a_group_makes_the_groups_attempts_times_the_item_runs(
    tmp_path: Path,
) -> None:
    first, second = _down("first"), _down("second")
    backends: dict[str, Backend] = {"main": _group(first, second)}
    batch, config = await _batch(tmp_path, backends, _qa("main"), max_retries=2)
    [item] = batch.results
    assert (item.status, item.error.code if item.error else None) == (
        "failed",
        "all_backends_failed",
    )
    assert batch.stats.retries == 2
    # (1 + 2 item retries) × 4 group attempts, whatever the module's own max_attempts (3) says
    assert first.calls + second.calls == 12
    assert (first.calls, second.calls) == (6, 6)  # failover alternates within each run
    assert config["calls_bound"] == {"answer": 12}


async def test_a_module_without_retry_on_a_group_has_the_same_bound(tmp_path: Path) -> None:
    only = _down("only")
    spec = _qa("main", retry=None)
    _, config = await _batch(tmp_path, {"main": _group(only)}, spec, max_retries=1)
    assert only.calls == 8  # (1 + 1) × 4
    assert config["calls_bound"] == {"answer": 8}


async def test_without_item_retries_the_bound_is_the_inner_budget(tmp_path: Path) -> None:
    plain = _down("plain")
    first = _down("first")
    spec = _qa("default")
    spec["modules"]["grouped"] = {
        "kind": "predict",
        "signature": "question: str -> answer2: str",
        "backend": "main",
        "retry": 5,
    }
    spec["failure_tolerance"] = "tolerant"
    spec["outputs"] = {"answer": "answer.answer"}
    backends: dict[str, Backend] = {"default": plain, "main": _group(first)}
    _, config = await _batch(tmp_path, backends, spec, max_retries=0)
    assert (plain.calls, first.calls) == (3, 4)
    assert config["calls_bound"] == {"answer": 3, "grouped": 4}


async def test_an_engine_run_does_not_wrap_a_groups_loop_in_the_modules_own() -> None:
    only = _down("only")
    engine = Engine(backends={"main": _group(only)})
    result = await engine.run(Program.from_dict(_qa("main")), {"question": "q"})
    step = result.step("answer")
    assert (step.error_code, step.attempts, only.calls) == ("all_backends_failed", 4, 4)


def test_call_budgets_name_whose_max_attempts_bounds_each_module() -> None:
    spec = _qa("main")
    spec["modules"].update(
        {
            "plain": {"kind": "predict", "signature": "question: str -> a: str", "retry": 3},
            "bare": {"kind": "predict", "signature": "question: str -> b: str"},
            "code": {
                "kind": "python",
                "signature": "question: str -> c: str",
                "function": "tests.engine.modules:echo",
                "retry": 2,
            },
        }
    )
    spec["outputs"] = {"answer": "answer.answer"}
    backends: dict[str, Backend] = {"main": _group(_down("x")), "default": _down("y")}
    budgets = call_budgets(Program.from_dict(spec), backends)
    assert budgets == {
        "answer": CallBudget(4, "group main"),
        "plain": CallBudget(3, "module"),
        "bare": CallBudget(1, "module"),
    }
    assert [budgets["answer"].calls_bound(2), budgets["plain"].calls_bound(0)] == [12, 3]


async def test_an_items_runs_are_spaced_by_the_policys_jittered_backoff(tmp_path: Path) -> None:
    times: list[float] = []

    async def handler(request: Any) -> dict[str, Any]:
        times.append(asyncio.get_running_loop().time())
        raise BackendUnavailableError("down", status=503)

    backend = MockBackend("plain", handler=handler)
    # one attempt per run (not the default three), so every call is a new run of the item
    batch, _ = await _batch(tmp_path, {"default": backend}, _qa("default", 1), max_retries=3)
    assert batch.stats.retries == 3
    waits = [later - earlier for earlier, later in itertools.pairwise(times)]
    # the batch's item policy: 0.5 s doubling, up to a fifth taken off at random, never added
    assert [0.4 <= waits[0] <= 0.5, 0.8 <= waits[1] <= 1.0, 1.6 <= waits[2] <= 2.0] == [True] * 3
    assert waits != [0.5, 1.0, 2.0]
