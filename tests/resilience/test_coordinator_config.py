"""Coordinator groups built from ``[coordinators.NAME]`` and ``[breaker]`` tables."""

from __future__ import annotations

import tomllib
from types import SimpleNamespace

import pytest
from tests.resilience.faults import UNAVAILABLE, request, scripted

from dspex.backends.base import Backend
from dspex.errors import ConfigError
from dspex.resilience import (
    BreakerConfig,
    MemoryBreakerStore,
    RetryPolicy,
    build_breakers,
    build_coordinator,
    build_coordinators,
)

TOML = """
[breaker]
minimum_calls = 3
window_size = 6

[coordinators.main]
backends = ["primary", "secondary"]
strategy = "round_robin"

[coordinators.main.retry]
max_attempts = 4
initial_interval = 0.25
deadline = 30

[coordinators.solo]
backends = ["secondary"]
"""


def _backends() -> dict[str, Backend]:
    return {"primary": scripted("primary", UNAVAILABLE), "secondary": scripted("secondary")}


def test_groups_are_built_from_toml_tables() -> None:
    groups = build_coordinators(tomllib.loads(TOML), _backends())
    main = groups["main"]
    assert [b.name for b in main.backends] == ["primary", "secondary"]
    assert main.strategy == "round_robin"
    assert main.policy == RetryPolicy(max_attempts=4, initial_interval=0.25, deadline=30)
    assert groups["solo"].policy == RetryPolicy()
    assert main.breakers.config == BreakerConfig(minimum_calls=3, window_size=6)


def test_groups_share_one_breaker_per_backend() -> None:
    groups = build_coordinators(tomllib.loads(TOML), _backends())
    assert groups["main"].breakers.get("secondary") is groups["solo"].breakers.get("secondary")


@pytest.mark.looptime
async def test_a_built_group_answers_and_fails_over() -> None:
    groups = build_coordinators(tomllib.loads(TOML), _backends())
    result = await groups["main"].complete(request())
    assert [a.backend for a in result.attempts] == ["primary", "secondary"]


async def test_built_groups_do_not_close_the_runtime_backends() -> None:
    backends = _backends()
    for group in build_coordinators(tomllib.loads(TOML), backends).values():
        await group.aclose()
    assert not any(b.closed for b in backends.values())  # type: ignore[attr-defined]


def test_settings_object_with_attributes_is_accepted() -> None:
    settings = SimpleNamespace(coordinators={"g": {"backends": ["primary"]}}, breaker=None)
    store = MemoryBreakerStore()
    groups = build_coordinators(settings, _backends(), breaker_store=store)
    assert groups["g"].breakers.store is store


def test_no_coordinators_section_means_no_groups() -> None:
    assert build_coordinators({}, _backends()) == {}


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"backends": []}, "backends"),
        ({"backends": ["primary"], "strategy": "fastest"}, "strategy"),
        ({"backends": ["primary"], "retries": 3}, "retries"),
        ({"backends": ["missing"]}, "unknown backend"),
        ({"backends": ["primary"], "retry": {"max_attempts": 0}}, "max_attempts"),
        ({"backends": ["primary"], "retry": {"tries": 2}}, "tries"),
    ],
)
def test_bad_group_tables_are_config_errors(table: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_coordinator("g", table, _backends())


def test_group_may_not_shadow_a_backend_name() -> None:
    with pytest.raises(ConfigError, match="already named"):
        build_coordinators({"coordinators": {"primary": {"backends": ["secondary"]}}}, _backends())


@pytest.mark.parametrize(
    "settings",
    [
        {"coordinators": ["main"]},
        {"coordinators": {"main": "primary"}},
        {"breaker": "strict"},
        {"breaker": {"threshold": 0.5}},
        {"breaker": {"minimum_calls": 0}},
    ],
)
def test_malformed_sections_are_config_errors(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_coordinators(settings, _backends())


def test_build_breakers_uses_defaults_without_a_table() -> None:
    assert build_breakers({}).config == BreakerConfig()
