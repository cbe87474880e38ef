"""Circuit breakers: the state machine, persistence on transitions, and the store adapter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dspex.errors import ConfigError
from dspex.resilience import (
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    BreakerStateStore,
    BreakerStatus,
    CircuitBreaker,
    MemoryBreakerStore,
    StoreBreakerStore,
)
from dspex.store.memory import MemoryStore
from dspex.store.sql import SqlStore


class FakeTime:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value


CONFIG = BreakerConfig(failure_rate_threshold=0.5, minimum_calls=4, window_size=8, open_seconds=30)


def _breaker(
    time: FakeTime | None = None, store: BreakerStateStore | None = None
) -> CircuitBreaker:
    return CircuitBreaker("primary", CONFIG, store=store, wall_time=time or FakeTime())


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        permit, _ = breaker.try_acquire()
        assert permit is not None
        breaker.on_failure(permit)


def _succeed(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        permit, _ = breaker.try_acquire()
        assert permit is not None
        breaker.on_success(permit)


def _open(breaker: CircuitBreaker) -> None:
    _fail(breaker, CONFIG.minimum_calls)
    assert breaker.status is BreakerStatus.OPEN


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 1.5},
        {"minimum_calls": 0},
        {"minimum_calls": 10, "window_size": 5},
        {"open_seconds": -1},
    ],
)
def test_breaker_config_rejects_values_that_cannot_work(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_breaker_stays_closed_below_minimum_calls_even_if_all_fail() -> None:
    breaker = _breaker()
    _fail(breaker, CONFIG.minimum_calls - 1)
    assert breaker.status is BreakerStatus.CLOSED
    assert breaker.state.failures == CONFIG.minimum_calls - 1


def test_breaker_opens_when_failure_rate_reaches_threshold_with_minimum_calls() -> None:
    breaker = _breaker()
    _succeed(breaker, 2)
    _fail(breaker, 1)
    assert breaker.status is BreakerStatus.CLOSED  # 1 of 3: below the minimum volume
    _fail(breaker, 1)
    assert breaker.status is BreakerStatus.OPEN  # 2 of 4 = 50%


def test_breaker_stays_closed_while_failure_rate_is_below_threshold() -> None:
    breaker = _breaker()
    for _ in range(10):
        _succeed(breaker, 2)
        _fail(breaker, 1)
    assert breaker.status is BreakerStatus.CLOSED


def test_rolling_window_forgets_old_failures() -> None:
    breaker = _breaker()
    _succeed(breaker, 6)
    _fail(breaker, 2)
    assert breaker.state.failures == 2
    _succeed(breaker, CONFIG.window_size)
    assert breaker.state.failures == 0
    assert breaker.state.calls == CONFIG.window_size


def test_open_breaker_refuses_calls_until_cool_down() -> None:
    time = FakeTime()
    breaker = _breaker(time)
    _open(breaker)
    assert breaker.try_acquire() == (None, False)
    assert not breaker.available()
    time.value += CONFIG.open_seconds - 0.01
    assert breaker.try_acquire() == (None, False)


def test_half_open_admits_exactly_one_probe() -> None:
    time = FakeTime()
    breaker = _breaker(time)
    _open(breaker)
    time.value += CONFIG.open_seconds
    assert breaker.available()
    probe, changed = breaker.try_acquire()
    assert probe is not None
    assert changed
    assert breaker.status is BreakerStatus.HALF_OPEN
    assert not breaker.available()
    assert breaker.try_acquire() == (None, False)


def test_probe_success_closes_the_breaker() -> None:
    time = FakeTime()
    breaker = _breaker(time)
    _open(breaker)
    time.value += CONFIG.open_seconds
    probe, _ = breaker.try_acquire()
    assert probe is not None
    assert breaker.on_success(probe)
    assert breaker.state == BreakerState(BreakerStatus.CLOSED)


def test_probe_failure_reopens_the_breaker_with_a_new_cool_down() -> None:
    time = FakeTime()
    breaker = _breaker(time)
    _open(breaker)
    time.value += CONFIG.open_seconds
    probe, _ = breaker.try_acquire()
    assert probe is not None
    assert breaker.on_failure(probe)
    assert breaker.status is BreakerStatus.OPEN
    assert breaker.state.opened_at == time.value


def test_ignored_probe_outcome_frees_the_probe_slot() -> None:
    time = FakeTime()
    breaker = _breaker(time)
    _open(breaker)
    time.value += CONFIG.open_seconds
    probe, _ = breaker.try_acquire()
    assert probe is not None
    assert not breaker.on_ignored(probe)
    assert breaker.status is BreakerStatus.HALF_OPEN
    assert breaker.try_acquire()[0] is not None


def test_outcome_of_a_call_admitted_before_a_transition_is_ignored() -> None:
    time = FakeTime()
    breaker = _breaker(time)
    slow, _ = breaker.try_acquire()  # admitted while closed, answers late
    assert slow is not None
    _open(breaker)
    time.value += CONFIG.open_seconds
    probe, _ = breaker.try_acquire()
    assert not breaker.on_success(slow)
    assert breaker.status is BreakerStatus.HALF_OPEN
    assert probe is not None


def test_ignored_outcomes_never_count_toward_opening() -> None:
    breaker = _breaker()
    for _ in range(50):
        permit, _ = breaker.try_acquire()
        assert permit is not None
        breaker.on_ignored(permit)
    assert breaker.state == BreakerState(BreakerStatus.CLOSED)


async def test_breaker_persists_transitions_only() -> None:
    store = MemoryBreakerStore()
    breaker = _breaker(store=store)
    for _ in range(3):
        permit = await breaker.acquire()
        assert permit is not None
        await breaker.record_success(permit)
    assert store.saves == 0  # closed and staying closed: no I/O
    for _ in range(3):
        permit = await breaker.acquire()
        assert permit is not None
        await breaker.record_failure(permit)
    assert store.saves == 1
    assert await store.load("primary") == breaker.state


async def test_sync_adopts_a_state_another_process_saved() -> None:
    store = MemoryBreakerStore()
    time = FakeTime()
    here = CircuitBreaker("primary", CONFIG, store=store, wall_time=time)
    there = CircuitBreaker("primary", CONFIG, store=store, wall_time=time)
    for _ in range(CONFIG.minimum_calls):
        permit = await there.acquire()
        assert permit is not None
        await there.record_failure(permit)
    await here.sync()
    assert here.state == there.state
    assert here.status is BreakerStatus.OPEN


async def test_reset_closes_and_persists() -> None:
    store = MemoryBreakerStore()
    breaker = _breaker(store=store)
    _open(breaker)
    await breaker.reset()
    assert breaker.status is BreakerStatus.CLOSED
    assert await store.load("primary") == BreakerState()


def test_success_reaching_minimum_volume_opens_an_already_failing_window() -> None:
    breaker = _breaker()
    _fail(breaker, CONFIG.minimum_calls - 1)
    _succeed(breaker, 1)
    assert breaker.status is BreakerStatus.OPEN  # 3 of 4 failed


def test_adopting_a_closed_state_restores_its_window_counts() -> None:
    breaker = _breaker()
    _open(breaker)
    assert breaker.adopt(BreakerState(BreakerStatus.CLOSED, failures=2, calls=3))
    assert breaker.state == BreakerState(BreakerStatus.CLOSED, failures=2, calls=3)
    assert not breaker.adopt(BreakerState(BreakerStatus.CLOSED, failures=2, calls=3))
    _fail(breaker, 1)
    assert breaker.status is BreakerStatus.OPEN  # 3 of 4


def test_registry_gives_one_breaker_per_backend_with_overrides() -> None:
    special = BreakerConfig(minimum_calls=1, window_size=1)
    registry = BreakerRegistry(CONFIG, overrides={"flaky": special})
    assert registry.get("a") is registry.get("a")
    assert registry.get("flaky").config == special
    assert registry.get("a").config == CONFIG
    assert set(registry.states()) == {"a", "flaky"}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_store_adapter_round_trips_the_state(kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if kind == "memory" else SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store:
        adapter = StoreBreakerStore(store)
        assert await adapter.load("primary") is None
        opened = BreakerState(BreakerStatus.OPEN, failures=3, calls=4, opened_at=1_700_000_000.5)
        await adapter.save("primary", opened)
        await adapter.save("secondary", BreakerState())
        assert await adapter.load("primary") == opened
        assert await adapter.load("secondary") == BreakerState()
        other = CircuitBreaker("primary", CONFIG, store=adapter)
        await other.sync()
        assert other.state.status is BreakerStatus.OPEN


# --- the state machine ------------------------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, outcomes and time against a model of the rules, persisted after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.time = FakeTime()
        self.store = MemoryBreakerStore()
        self.config = BreakerConfig(
            failure_rate_threshold=0.5, minimum_calls=5, window_size=10, open_seconds=10
        )
        self.breaker = CircuitBreaker("b", self.config, store=self.store, wall_time=self.time)
        self.in_flight: list[int] = []
        self.outcomes_since_closed = 0  # outcomes counted since the breaker last (re)closed
        self.probes_out = 0

    def teardown(self) -> None:
        self.loop.close()

    def _run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    @rule()
    def admit(self) -> None:
        before = self.breaker.status
        permit = self._run(self.breaker.acquire())
        if permit is not None:
            assert isinstance(permit, int)
            self.in_flight.append(permit)
            if self.breaker.status is BreakerStatus.HALF_OPEN:
                self.probes_out += 1
        elif before is BreakerStatus.CLOSED:
            raise AssertionError("a closed breaker refused a call")

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "ignored"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        index = data.draw(st.integers(0, len(self.in_flight) - 1))
        permit = self.in_flight.pop(index)
        was = self.breaker.status
        counted_before = self.breaker.state
        current = permit == self.breaker._epoch
        if outcome == "success":
            self._run(self.breaker.record_success(permit))
        elif outcome == "failure":
            self._run(self.breaker.record_failure(permit))
        else:
            self._run(self.breaker.record_ignored(permit))
        if was is BreakerStatus.HALF_OPEN and current:
            self.probes_out = 0
        if was is BreakerStatus.CLOSED and self.breaker.status is BreakerStatus.OPEN:
            # it opened on a counted outcome, at minimum volume, over the threshold
            assert outcome != "ignored"
            calls = min(counted_before.calls + 1, self.config.window_size)
            assert calls >= self.config.minimum_calls
            if counted_before.calls < self.config.window_size:  # nothing fell out of the window
                failures = counted_before.failures + (outcome == "failure")
                assert failures >= self.config.failure_rate_threshold * calls

    @rule(seconds=st.floats(0, 15))
    def time_passes(self, seconds: float) -> None:
        self.time.value += seconds

    @invariant()
    def at_most_one_probe_in_half_open(self) -> None:
        if self.breaker.status is BreakerStatus.HALF_OPEN:
            assert self.probes_out <= 1

    @invariant()
    def never_open_below_minimum_volume_of_the_window(self) -> None:
        state = self.breaker.state
        if state.status is BreakerStatus.CLOSED and state.calls >= self.config.minimum_calls:
            assert state.failures < self.config.failure_rate_threshold * state.calls

    @invariant()
    def persisted_state_equals_in_memory_state(self) -> None:
        stored = self._run(self.store.load("b"))
        state = self.breaker.state
        if stored is None:
            assert state.status is BreakerStatus.CLOSED
        else:
            assert isinstance(stored, BreakerState)
            assert (stored.status, stored.opened_at) == (state.status, state.opened_at)


BreakerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestBreakerStateMachine = BreakerMachine.TestCase
