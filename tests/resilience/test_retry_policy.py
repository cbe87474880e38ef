"""RetryPolicy: the one retry model, its validation, the waits it computes, the one retry loop and
the loop clock."""

from __future__ import annotations

import asyncio
import random

import pydantic
import pytest
from tenacity import retry_if_exception, retry_if_result

from dspex.config import CoordinatorSettings, RetrySettings
from dspex.engine.spec import RetrySpec, parse_spec
from dspex.errors import BackendUnavailableError, BadRequestError, ConfigError, RateLimitError
from dspex.resilience import Clock, CoordinatorConfig, LoopClock, RetryPolicy
from dspex.resilience.policy import calls_bound

BAD_VALUES = [
    ("max_attempts", 0),
    ("max_attempts", 1.5),
    ("max_attempts", True),
    ("max_attempts", "3"),
    ("initial_interval", -0.1),
    ("max_interval", float("inf")),
    ("max_retry_after", -1),
    ("backoff_factor", 0.5),
    ("jitter", 1.5),
    ("jitter", -0.1),
    ("deadline", 0),
    ("deadline", float("nan")),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_from_mapping_rejects_out_of_range_values_as_config_errors(
    field: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=field):
        RetryPolicy.from_mapping({field: value})


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_the_constructor_rejects_the_same_values(field: str, value: object) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


def test_policy_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        RetryPolicy.from_mapping({"max_attempts": 0, "jitter": 2.0})
    assert "max_attempts" in caught.value.message
    assert "jitter" in caught.value.message


def test_from_mapping_keeps_defaults_for_missing_keys() -> None:
    policy = RetryPolicy.from_mapping({"max_attempts": 5, "deadline": 12})
    assert policy == RetryPolicy(max_attempts=5, deadline=12)


def test_from_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="retries"):
        RetryPolicy.from_mapping({"retries": 3})


def test_from_mapping_hands_a_policy_back_as_it_is() -> None:
    policy = RetryPolicy(max_attempts=2)
    assert RetryPolicy.from_mapping(policy) is policy


# --- one model everywhere ---------------------------------------------------------------------


def test_specs_settings_and_coordinators_share_the_one_model() -> None:
    assert RetrySpec is RetryPolicy
    assert RetrySettings is RetryPolicy
    assert CoordinatorSettings.model_fields["retry"].annotation is RetryPolicy
    assert CoordinatorConfig.model_fields["retry"].annotation is RetryPolicy


def _module_retry(retry: object) -> RetryPolicy:
    spec = parse_spec(
        {
            "name": "p",
            "signature": "q: str -> y: str",
            "modules": {"a": {"kind": "predict", "signature": "q: str -> y: str", "retry": retry}},
        }
    )
    policy = spec.modules["a"].retry
    assert policy is not None
    return policy


def test_a_module_retry_table_without_max_attempts_makes_one_attempt() -> None:
    # a module retries only when it says how often (a group's table defaults to 3)
    assert _module_retry({"initial_interval": 1.0}).max_attempts == 1
    assert _module_retry(4) == RetryPolicy(max_attempts=4)
    assert RetryPolicy().max_attempts == 3


def test_a_module_policy_survives_the_spec_round_trip() -> None:
    for retry in ({"max_attempts": 3, "jitter": 0.0}, {"initial_interval": 2.0}, 1, 3):
        policy = _module_retry(retry)
        spec = parse_spec(
            {
                "name": "p",
                "signature": "q: str -> y: str",
                "modules": {
                    "a": {"kind": "predict", "signature": "q: str -> y: str", "retry": retry}
                },
            }
        )
        again = parse_spec(spec.to_dict()).modules["a"].retry
        assert again == policy


def test_a_module_retry_takes_max_retry_after_like_every_policy() -> None:
    assert _module_retry({"max_attempts": 2, "max_retry_after": 5}).max_retry_after == 5.0


# --- waits ------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_max_interval() -> None:
    policy = RetryPolicy(initial_interval=0.5, backoff_factor=2.0, max_interval=3.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_survives_huge_retry_numbers() -> None:
    policy = RetryPolicy(initial_interval=1.0, backoff_factor=10.0, max_interval=7.0)
    assert policy.backoff(10_000) == 7.0


def test_jitter_only_shortens_the_wait_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(initial_interval=2.0, backoff_factor=1.0, jitter=0.25)
    rng = random.Random(1)
    waits = [policy.backoff(1, rng) for _ in range(500)]
    assert all(1.5 <= w <= 2.0 for w in waits)
    assert max(waits) - min(waits) > 0.4  # actually spread, not constant


def test_a_jittered_wait_never_exceeds_max_interval() -> None:
    policy = RetryPolicy(initial_interval=1.0, backoff_factor=3.0, max_interval=4.0, jitter=1.0)
    rng = random.Random(7)
    assert max(policy.backoff(n, rng) for n in range(1, 8) for _ in range(200)) <= 4.0


def test_delay_never_goes_below_retry_after() -> None:
    policy = RetryPolicy(initial_interval=0.1, max_interval=1.0, jitter=0.0)
    assert policy.delay(1, retry_after=4.0) == 4.0


def test_delay_caps_retry_after_at_max_retry_after() -> None:
    policy = RetryPolicy(initial_interval=0.1, max_retry_after=60.0)
    assert policy.delay(1, retry_after=3600.0) == 60.0
    assert policy.honoured_retry_after(3600.0) == 60.0


def test_delay_ignores_missing_or_zero_retry_after() -> None:
    policy = RetryPolicy(initial_interval=0.3, jitter=0.0)
    assert policy.delay(1, None) == policy.delay(1, 0.0) == 0.3
    assert policy.honoured_retry_after(None) == policy.honoured_retry_after(-1.0) == 0.0


def test_calls_bound_multiplies_the_inner_budget_by_the_item_runs() -> None:
    assert [calls_bound(3, 2), calls_bound(2, 0), calls_bound(1, 5)] == [9, 2, 6]


# --- the one loop -----------------------------------------------------------------------------


class Flaky:
    """Raises each scripted error in turn, then answers ``"ok"``; records when it was called."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(asyncio.get_running_loop().time())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _down() -> BackendUnavailableError:
    return BackendUnavailableError("down", status=503)


@pytest.mark.looptime
async def test_the_loop_retries_retryable_errors_with_backoff() -> None:
    policy = RetryPolicy(max_attempts=4, initial_interval=1.0, backoff_factor=2.0, jitter=0.0)
    call = Flaky(_down(), _down(), _down())
    assert await policy.retrying(retry=retry_if_exception(lambda e: True))(call) == "ok"
    assert call.times == [0.0, 1.0, 3.0, 7.0]


@pytest.mark.looptime
async def test_the_loop_raises_the_last_error_as_it_is_when_the_policy_is_spent() -> None:
    policy = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=0.0)
    last = _down()
    call = Flaky(_down(), last, _down())
    with pytest.raises(BackendUnavailableError) as caught:
        await policy.retrying(retry=retry_if_exception(lambda e: True))(call)
    assert caught.value is last
    assert len(call.times) == 2


@pytest.mark.looptime
async def test_the_loop_does_not_retry_what_its_retry_refuses() -> None:
    policy = RetryPolicy(max_attempts=5, initial_interval=1.0)
    call = Flaky(BadRequestError("bad", status=400))
    with pytest.raises(BadRequestError):
        await policy.retrying(retry=retry_if_exception(lambda e: e.retryable))(call)
    assert call.times == [0.0]


@pytest.mark.looptime
async def test_the_loop_hands_back_the_last_result_when_results_are_retried() -> None:
    policy = RetryPolicy(max_attempts=3, initial_interval=0.5, jitter=0.0)
    results = iter(["failed", "failed", "failed", "never"])

    async def attempt() -> str:
        return next(results)

    retrying = policy.retrying(retry=retry_if_result(lambda r: r == "failed"))
    assert await retrying(attempt) == "failed"
    assert asyncio.get_running_loop().time() == pytest.approx(0.5 + 1.0)


@pytest.mark.looptime
async def test_the_loop_honours_retry_after_up_to_max_retry_after() -> None:
    policy = RetryPolicy(max_attempts=3, initial_interval=0.1, jitter=0.0, max_retry_after=20)
    slow_down = RateLimitError("slow down", status=429, retry_after=5.0)
    go_away = RateLimitError("come back tomorrow", status=429, retry_after=86400.0)
    call = Flaky(slow_down, go_away)
    assert await policy.retrying(retry=retry_if_exception(lambda e: True))(call) == "ok"
    assert call.times == [0.0, 5.0, 25.0]


@pytest.mark.looptime
async def test_the_loop_starts_no_wait_that_would_end_past_its_deadline() -> None:
    policy = RetryPolicy(max_attempts=10, initial_interval=1.0, backoff_factor=2.0, jitter=0.0)
    call = Flaky(*(_down() for _ in range(10)))
    retrying = policy.retrying(retry=retry_if_exception(lambda e: True), deadline_at=2.5)
    with pytest.raises(BackendUnavailableError):
        await retrying(call)
    assert call.times == [0.0, 1.0]  # the next wait (2 s) would end at 3 s


@pytest.mark.looptime
async def test_loop_clock_reads_and_sleeps_on_the_event_loop() -> None:
    clock = LoopClock()
    assert isinstance(clock, Clock)
    before = clock.now()
    await clock.sleep(42)
    assert clock.now() - before == pytest.approx(42)
    assert clock.now() == asyncio.get_running_loop().time()
