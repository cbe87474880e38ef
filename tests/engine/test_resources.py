from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import looptime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspex.engine.resources import ResourceManager
from dspex.errors import ResourceError

pytestmark = pytest.mark.looptime


async def _hold(
    manager: ResourceManager, needs: dict[str, float], seconds: float, log: list[Any], tag: str
) -> None:
    async with manager.acquire(needs):
        log.append(("in", tag, asyncio.get_running_loop().time()))
        await asyncio.sleep(seconds)
        log.append(("out", tag, asyncio.get_running_loop().time()))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------- check


def test_check_accepts_needs_within_capacity() -> None:
    manager = ResourceManager({"cpu": 4, "memory_mb": 1024})
    assert manager.check({"cpu": 4, "memory_mb": 512}) == []


def test_check_reports_each_problem_with_its_resource() -> None:
    manager = ResourceManager({"cpu": 4, "lm_slots": 2})
    problems = manager.check({"cpu": 5, "lm_slots": -1, "gpu": 1})
    assert {(p.field, p.code) for p in problems} == {
        ("cpu", "exceeds_capacity"),
        ("lm_slots", "invalid_need"),
        ("gpu", "unknown_resource"),
    }


def test_check_rejects_non_finite_needs() -> None:
    manager = ResourceManager({"cpu": 4})
    assert [p.code for p in manager.check({"cpu": float("nan")})] == ["invalid_need"]


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ResourceError, match="cpu"):
        ResourceManager({"cpu": -1})


async def test_acquire_refuses_needs_that_can_never_fit() -> None:
    manager = ResourceManager({"cpu": 2})
    with pytest.raises(ResourceError, match="capacity is 2"):
        manager.acquire({"cpu": 3})


async def test_acquire_refuses_unknown_resources() -> None:
    manager = ResourceManager({"cpu": 2})
    with pytest.raises(ResourceError, match="unknown resource 'gpu'"):
        manager.acquire({"gpu": 1})


# ---------------------------------------------------------------------------- admission


async def test_empty_needs_pass_straight_through_when_everything_is_held() -> None:
    manager = ResourceManager({"cpu": 1})
    async with manager.acquire({"cpu": 1}), manager.acquire({}):
        assert manager.in_use() == {"cpu": 1.0}
    assert manager.in_use() == {"cpu": 0.0}


async def test_zero_needs_do_not_wait() -> None:
    manager = ResourceManager({"cpu": 1, "memory_mb": 10})
    async with manager.acquire({"cpu": 1}), manager.acquire({"cpu": 0, "memory_mb": 5}):
        assert manager.in_use() == {"cpu": 1.0, "memory_mb": 5.0}


async def test_acquire_holds_needs_until_the_block_ends() -> None:
    manager = ResourceManager({"cpu": 4, "memory_mb": 100})
    async with manager.acquire({"cpu": 3, "memory_mb": 40}):
        assert manager.in_use() == {"cpu": 3.0, "memory_mb": 40.0}
    assert manager.in_use() == {"cpu": 0.0, "memory_mb": 0.0}


async def test_a_request_waits_until_enough_is_released() -> None:
    manager = ResourceManager({"cpu": 2})
    log: list[Any] = []
    first = asyncio.create_task(_hold(manager, {"cpu": 2}, 10, log, "a"))
    await _settle()
    second = asyncio.create_task(_hold(manager, {"cpu": 1}, 1, log, "b"))
    await _settle()
    assert manager.waiting == 1
    await asyncio.gather(first, second)
    assert log == [("in", "a", 0), ("out", "a", 10), ("in", "b", 10), ("out", "b", 11)]


async def test_a_big_request_at_the_head_is_not_starved_by_small_ones_behind_it() -> None:
    manager = ResourceManager({"cpu": 4})
    log: list[Any] = []
    holder = asyncio.create_task(_hold(manager, {"cpu": 3}, 10, log, "holder"))
    await _settle()
    big = asyncio.create_task(_hold(manager, {"cpu": 4}, 5, log, "big"))
    await _settle()
    # One cpu is free, so "small" would fit now; FIFO makes it wait behind "big".
    small = asyncio.create_task(_hold(manager, {"cpu": 1}, 1, log, "small"))
    await _settle()
    assert manager.waiting == 2
    await asyncio.gather(holder, big, small)
    entries = [(tag, t) for kind, tag, t in log if kind == "in"]
    assert entries == [("holder", 0), ("big", 10), ("small", 15)]


async def test_waiters_behind_the_head_are_admitted_together_when_they_fit() -> None:
    manager = ResourceManager({"cpu": 4})
    log: list[Any] = []
    holder = asyncio.create_task(_hold(manager, {"cpu": 4}, 10, log, "holder"))
    await _settle()
    tasks = [asyncio.create_task(_hold(manager, {"cpu": 2}, 5, log, f"w{i}")) for i in range(2)]
    await asyncio.gather(holder, *tasks)
    assert sorted(t for kind, _, t in log if kind == "in") == [0, 10, 10]


async def test_a_bypass_allowance_lets_small_requests_fill_in_then_blocks_them() -> None:
    manager = ResourceManager({"cpu": 4}, max_bypass=2)
    log: list[Any] = []
    holder = asyncio.create_task(_hold(manager, {"cpu": 2}, 10, log, "holder"))
    await _settle()
    big = asyncio.create_task(_hold(manager, {"cpu": 4}, 5, log, "big"))
    await _settle()
    smalls = [asyncio.create_task(_hold(manager, {"cpu": 1}, 1, log, f"s{i}")) for i in range(3)]
    await asyncio.gather(holder, big, *smalls)
    entries = {tag: t for kind, tag, t in log if kind == "in"}
    assert entries == {"holder": 0, "s0": 0, "s1": 0, "big": 10, "s2": 15}


async def test_a_release_admits_waiters_behind_a_blocked_head_within_its_allowance() -> None:
    manager = ResourceManager({"cpu": 4}, max_bypass=1)
    log: list[Any] = []
    first = asyncio.create_task(_hold(manager, {"cpu": 2}, 10, log, "first"))
    second = asyncio.create_task(_hold(manager, {"cpu": 2}, 20, log, "second"))
    await _settle()
    tasks = [
        asyncio.create_task(_hold(manager, {"cpu": 4}, 5, log, "big")),
        asyncio.create_task(_hold(manager, {"cpu": 1}, 5, log, "a")),
        asyncio.create_task(_hold(manager, {"cpu": 1}, 5, log, "b")),
    ]
    await asyncio.gather(first, second, *tasks)
    entries = {tag: t for kind, tag, t in log if kind == "in"}
    # At 10 "big" still cannot fit; "a" uses its one bypass, "b" must wait behind "big".
    assert entries == {"first": 0, "second": 0, "a": 10, "big": 20, "b": 25}


def test_a_negative_bypass_allowance_is_refused() -> None:
    with pytest.raises(ResourceError, match="max_bypass"):
        ResourceManager({"cpu": 1}, max_bypass=-1)


# ---------------------------------------------------------------------------- every exit releases


async def test_an_error_inside_the_block_releases_everything() -> None:
    manager = ResourceManager({"cpu": 2})
    with pytest.raises(RuntimeError, match="boom"):
        async with manager.acquire({"cpu": 2}):
            raise RuntimeError("boom")
    assert manager.in_use() == {"cpu": 0.0}


async def test_cancelling_a_holder_releases_everything_and_wakes_the_next() -> None:
    manager = ResourceManager({"cpu": 2})
    log: list[Any] = []
    holder = asyncio.create_task(_hold(manager, {"cpu": 2}, 100, log, "holder"))
    await _settle()
    waiter = asyncio.create_task(_hold(manager, {"cpu": 2}, 1, log, "waiter"))
    await _settle()
    holder.cancel()
    await waiter
    assert ("in", "waiter", 0) in log
    assert manager.in_use() == {"cpu": 0.0}


async def test_cancelling_a_waiter_removes_it_from_the_queue() -> None:
    manager = ResourceManager({"cpu": 2})
    log: list[Any] = []
    holder = asyncio.create_task(_hold(manager, {"cpu": 2}, 10, log, "holder"))
    await _settle()
    waiter = asyncio.create_task(_hold(manager, {"cpu": 1}, 1, log, "waiter"))
    await _settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert manager.waiting == 0
    await holder
    assert manager.in_use() == {"cpu": 0.0}
    assert all(tag != "waiter" for _, tag, _ in log)


async def test_cancelling_the_blocking_head_lets_those_behind_it_in() -> None:
    manager = ResourceManager({"cpu": 4})
    log: list[Any] = []
    holder = asyncio.create_task(_hold(manager, {"cpu": 3}, 10, log, "holder"))
    await _settle()
    big = asyncio.create_task(_hold(manager, {"cpu": 4}, 1, log, "big"))
    await _settle()
    small = asyncio.create_task(_hold(manager, {"cpu": 1}, 1, log, "small"))
    await _settle()
    big.cancel()
    await small
    assert ("in", "small", 0) in log
    await holder


async def test_a_grant_cancelled_before_its_task_resumes_is_given_back() -> None:
    manager = ResourceManager({"cpu": 1})
    entered = asyncio.Event()

    async def take() -> None:
        async with manager.acquire({"cpu": 1}):
            entered.set()

    lease = manager.acquire({"cpu": 1})
    await lease.__aenter__()
    waiter = asyncio.create_task(take())
    await _settle()
    await lease.__aexit__(None, None, None)  # grants "waiter" its cpu ...
    waiter.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not entered.is_set()
    assert manager.in_use() == {"cpu": 0.0}
    assert manager.waiting == 0


# ---------------------------------------------------------------------------- measurement


async def test_utilization_is_the_time_weighted_share_of_capacity() -> None:
    manager = ResourceManager({"cpu": 4, "lm_slots": 2})
    # 0-10 s: 2 cpu; 10-20 s: 4 cpu and 1 slot; 20-40 s: idle.
    async with manager.acquire({"cpu": 2}):
        await asyncio.sleep(10)
    async with manager.acquire({"cpu": 4, "lm_slots": 1}):
        await asyncio.sleep(10)
    await asyncio.sleep(20)
    usage = manager.utilization()
    assert usage["cpu"] == pytest.approx((2 * 10 + 4 * 10) / (4 * 40))
    assert usage["lm_slots"] == pytest.approx((1 * 10) / (2 * 40))


async def test_utilization_counts_concurrent_holders() -> None:
    manager = ResourceManager({"cpu": 4})
    log: list[Any] = []
    await asyncio.gather(
        _hold(manager, {"cpu": 1}, 10, log, "a"),
        _hold(manager, {"cpu": 3}, 5, log, "b"),
    )
    # 0-5 s: 4 of 4; 5-10 s: 1 of 4.
    assert manager.utilization()["cpu"] == pytest.approx((4 * 5 + 1 * 5) / (4 * 10))


async def test_utilization_is_zero_before_time_passes() -> None:
    manager = ResourceManager({"cpu": 4, "none": 0})
    assert manager.utilization() == {"cpu": 0.0, "none": 0.0}


async def test_reset_restarts_utilization_and_peak() -> None:
    manager = ResourceManager({"cpu": 4})
    async with manager.acquire({"cpu": 4}):
        await asyncio.sleep(10)
    manager.reset()
    async with manager.acquire({"cpu": 1}):
        await asyncio.sleep(10)
    assert manager.utilization()["cpu"] == pytest.approx(0.25)
    assert manager.peak() == {"cpu": 1.0}


async def test_peak_is_the_most_held_at_once() -> None:
    manager = ResourceManager({"cpu": 8})
    log: list[Any] = []
    await asyncio.gather(
        _hold(manager, {"cpu": 3}, 10, log, "a"),
        _hold(manager, {"cpu": 2}, 5, log, "b"),
    )
    async with manager.acquire({"cpu": 1}):
        pass
    assert manager.peak() == {"cpu": 5.0}


def test_a_manager_built_outside_a_loop_measures_from_its_first_use() -> None:
    manager = ResourceManager({"cpu": 2})
    assert manager.utilization() == {"cpu": 0.0}

    async def work() -> dict[str, float]:
        await asyncio.sleep(100)  # before first use: not counted
        async with manager.acquire({"cpu": 2}):
            await asyncio.sleep(10)
        return manager.utilization()

    assert _run_in_looptime(work)["cpu"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- random workloads


def _run_in_looptime(main: Callable[[], Awaitable[Any]]) -> Any:
    loop = looptime.new_event_loop(start=0)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


_jobs = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(["cpu", "memory_mb", "lm_slots"]), st.integers(0, 8)),
        st.integers(0, 50),  # hold time
        st.integers(0, 20),  # start delay
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(
    capacities=st.fixed_dictionaries(
        {"cpu": st.integers(1, 8), "memory_mb": st.integers(1, 8), "lm_slots": st.integers(1, 8)}
    ),
    jobs=_jobs,
    cancel_every=st.integers(0, 5),
    max_bypass=st.integers(0, 3),
)
def test_random_workloads_never_exceed_capacity_and_release_everything(
    capacities: dict[str, int],
    jobs: list[tuple[dict[str, int], int, int]],
    cancel_every: int,
    max_bypass: int,
) -> None:
    manager = ResourceManager(capacities, max_bypass=max_bypass)
    held = dict.fromkeys(capacities, 0)
    breaches: list[dict[str, int]] = []
    finished: list[int] = []

    async def job(index: int, needs: dict[str, int], hold: int, delay: int) -> None:
        await asyncio.sleep(delay)
        async with manager.acquire(needs):
            for key, need in needs.items():
                held[key] += need
            if any(held[k] > capacities[k] for k in held):
                breaches.append(dict(held))
            try:
                await asyncio.sleep(hold)
            finally:
                for key, need in needs.items():
                    held[key] -= need
        finished.append(index)

    async def main() -> None:
        fitting = [
            (needs, hold, delay)
            for needs, hold, delay in jobs
            if not manager.check(needs) or not needs
        ]
        tasks = [asyncio.create_task(job(i, *spec)) for i, spec in enumerate(fitting)]
        if cancel_every:
            await asyncio.sleep(7)
            for task in tasks[::cancel_every]:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert len(finished) + sum(t.cancelled() for t in tasks) == len(tasks)

    _run_in_looptime(main)
    assert breaches == []
    assert manager.in_use() == dict.fromkeys(capacities, 0.0)
    assert manager.waiting == 0
    assert all(manager.peak()[k] <= capacities[k] for k in capacities)
    assert all(0.0 <= u <= 1.0 + 1e-9 for u in manager.utilization().values())
