"""Opening a runtime: configuration, backends built from settings, stores chosen by URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.runtime._support import DIAMOND, QA, make_runtime, ready

from dspex.actions.execute import DurationCache
from dspex.backends.dspy_backend import DspyBackend
from dspex.backends.mock import MockBackend
from dspex.config import BackendConfig, Settings
from dspex.errors import ConfigError
from dspex.runtime import Runtime, build_backends
from dspex.store import MemoryStore, SqlStore


def test_backends_are_built_from_settings() -> None:
    settings = Settings(
        default_backend="fast",
        backends={
            "fast": BackendConfig(kind="mock", latency_ms=5),
            "real": BackendConfig(kind="dspy", model="openai/gpt-4o-mini", temperature=0.0),
        },
    )
    built = build_backends(settings)
    assert isinstance(built["fast"], MockBackend)
    assert built["fast"].latency_ms == 5
    assert isinstance(built["real"], DspyBackend)
    assert built["default"] is built["fast"]


def test_unknown_mock_options_are_a_config_error() -> None:
    settings = Settings(backends={"default": BackendConfig(kind="mock", speed=3)})
    with pytest.raises(ConfigError, match="speed"):
        build_backends(settings)


def test_invalid_mock_values_are_a_config_error() -> None:
    settings = Settings(backends={"default": BackendConfig(kind="mock", failure_rate=2.0)})
    with pytest.raises(ConfigError, match="failure_rate"):
        build_backends(settings)


def test_a_dspy_backend_needs_a_model() -> None:
    settings = Settings(backends={"default": BackendConfig(kind="dspy")})
    with pytest.raises(ConfigError, match="model"):
        build_backends(settings)


async def test_open_with_memory_url_uses_the_in_memory_store(tmp_path: Path) -> None:
    async with Runtime.open("memory://", cwd=tmp_path) as rt:
        assert isinstance(rt.store, MemoryStore)
        await ready(rt)
        assert (await rt.execute("qa", {"question": "why?"})).status == "completed"


async def test_open_reads_dspex_toml_and_defaults_to_embedded_sqlite(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text(
        'worker_id = "from-config"\nlease_seconds = 12\n'
        '[backends.default]\nkind = "mock"\nlatency_ms = 0\n'
    )
    rt = Runtime.open(cwd=tmp_path)
    async with rt:
        assert isinstance(rt.store, SqlStore)
        assert rt.worker_id == "from-config"
        assert rt.settings.lease_seconds == 12
        await ready(rt)
    assert (tmp_path / ".dspex" / "dspex.db").is_file()


async def test_cwd_may_be_given_as_a_string(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text('worker_id = "from-string-cwd"\n')
    async with Runtime.open(cwd=str(tmp_path)) as rt:
        assert rt.worker_id == "from-string-cwd"
        await ready(rt)
    assert (tmp_path / ".dspex" / "dspex.db").is_file()


async def test_methods_start_the_runtime_on_first_use(tmp_path: Path) -> None:
    rt = Runtime.open("memory://", cwd=tmp_path, worker_id="w")
    try:
        assert await rt.list_programs() == []
    finally:
        await rt.aclose()
        await rt.aclose()  # closing twice is harmless


async def test_durations_are_only_looked_up_for_prioritising_strategies() -> None:
    async with make_runtime(MemoryStore()) as rt:
        await ready(rt, DIAMOND)
        await ready(rt, QA)
        cache = DurationCache(refresh_every=2)
        diamond = await rt.store.get_program("diamond")
        qa = await rt.store.get_program("qa")
        program = await rt.load_program("diamond")
        assert await cache.get(rt.store, diamond, program, "optimized") is None  # no history
        await rt.execute("diamond", {"q": "go"})
        assert await cache.get(rt.store, diamond, program, "optimized") is None  # cached
        found = await cache.get(rt.store, diamond, program, "optimized")  # refreshed
        assert found is not None
        assert set(found) == {"a", "b", "c", "d"}
        assert await cache.get(rt.store, diamond, program, "sequential") is None
        single = await rt.load_program("qa")
        assert await cache.get(rt.store, qa, single, "optimized") is None  # nothing to order
