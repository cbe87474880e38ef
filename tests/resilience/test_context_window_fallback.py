"""A call too long for a group member's context window goes to the group's larger-window
fallback instead of failing (``context_window_fallback``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.resilience.faults import CONTEXT_WINDOW, OK, UNAVAILABLE, request, scripted

from dspex.backends.base import Backend
from dspex.config import load_settings
from dspex.errors import ContextWindowError
from dspex.resilience import Coordinator, RetryPolicy, build_coordinators

pytestmark = pytest.mark.looptime

POLICY = RetryPolicy(max_attempts=4, initial_interval=1.0, jitter=0.0)


async def test_a_context_window_failure_goes_to_the_fallback_at_once() -> None:
    small, other, big = (
        scripted("small", CONTEXT_WINDOW),
        scripted("other"),
        scripted("big"),
    )
    group = Coordinator("main", [small, other], policy=POLICY, context_window_fallback=[big])
    result = await group.complete(request())
    assert result.outputs == {"answer": "big answered"}
    assert [(a.backend, a.error_code or a.outcome) for a in result.attempts] == [
        ("small", "context_window_exceeded"),
        ("big", "succeeded"),
    ]
    assert other.calls == 0  # the same prompt would not fit a member's window either


async def test_without_a_fallback_a_context_window_failure_fails_the_call() -> None:
    small, other = scripted("small", CONTEXT_WINDOW), scripted("other")
    group = Coordinator("main", [small, other], policy=POLICY)
    with pytest.raises(ContextWindowError):
        await group.complete(request())
    assert other.calls == 0


async def test_a_fallback_too_small_as_well_passes_the_call_to_the_next_one() -> None:
    small = scripted("small", CONTEXT_WINDOW)
    bigger, biggest = scripted("bigger", CONTEXT_WINDOW), scripted("biggest")
    group = Coordinator("main", [small], policy=POLICY, context_window_fallback=[bigger, biggest])
    result = await group.complete(request())
    assert [a.backend for a in result.attempts] == ["small", "bigger", "biggest"]
    assert result.outputs == {"answer": "biggest answered"}


async def test_when_every_fallback_is_too_small_the_context_window_error_is_raised() -> None:
    small, big = scripted("small", CONTEXT_WINDOW), scripted("big", CONTEXT_WINDOW)
    group = Coordinator("main", [small], policy=POLICY, context_window_fallback=[big])
    with pytest.raises(ContextWindowError) as raised:
        await group.complete(request())
    assert [a.backend for a in getattr(raised.value, "attempt_details", ())] == ["small", "big"]


async def test_a_fallback_failing_for_another_reason_is_retried_under_the_groups_policy() -> None:
    small, big = scripted("small", CONTEXT_WINDOW), scripted("big", UNAVAILABLE, OK)
    group = Coordinator("main", [small], policy=POLICY, context_window_fallback=[big])
    result = await group.complete(request())
    assert [(a.backend, a.error_code or a.outcome) for a in result.attempts] == [
        ("small", "context_window_exceeded"),
        ("big", "backend_unavailable"),
        ("big", "succeeded"),
    ]
    assert small.calls == 1


async def test_the_fallback_is_read_from_the_group_config_and_may_be_outside_the_group(
    tmp_path: Path,
) -> None:
    backends: dict[str, Backend] = {
        "small": scripted("small", CONTEXT_WINDOW),
        "big": scripted("big"),
    }
    settings = load_settings(
        env={},
        cwd=tmp_path,
        flags={
            "coordinators.main": (
                "test",
                {"backends": ["small"], "context_window_fallback": ["big"]},
            ),
            "backends": ("test", {"small": {"kind": "mock"}, "big": {"kind": "mock"}}),
            "default_backend": ("test", "main"),
        },
    )
    [group] = build_coordinators(settings, backends).values()
    assert [b.name for b in group.backends] == ["small"]
    assert [b.name for b in group.context_window_fallback] == ["big"]
    result = await group.complete(request())
    assert result.outputs == {"answer": "big answered"}
    await group.aclose()
