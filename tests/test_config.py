"""Configuration: defaults with no file, dspex.toml, DSPEX_* overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspex.config import load_settings
from dspex.errors import ConfigError


def test_defaults_need_no_file(tmp_path: Path) -> None:
    s = load_settings(env={}, cwd=tmp_path)
    assert s.backends["default"].kind == "mock"
    assert s.resolved_database_url(tmp_path) == f"sqlite:///{tmp_path}/.dspex/dspex.db"
    assert s.source is None


def test_file_is_read_and_environment_overrides_it(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text(
        'database_url = "sqlite:///from-file.db"\n'
        'allowed_imports = ["a.b"]\n'
        "[backends.default]\n"
        'kind = "dspy"\nmodel = "openai/gpt-4o-mini"\napi_key_env = "OPENAI_API_KEY"\n'
    )
    s = load_settings(env={"DSPEX_DATABASE_URL": "postgresql://x/y"}, cwd=tmp_path)
    assert s.database_url == "postgresql://x/y"
    assert s.allowed_imports == ("a.b",)
    assert s.backends["default"].model == "openai/gpt-4o-mini"
    assert s.source == str(tmp_path / "dspex.toml")


def test_dspex_config_variable_names_the_file(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('default_backend = "b"\n[backends.b]\nkind = "mock"\n')
    s = load_settings(env={"DSPEX_CONFIG": str(other)}, cwd=tmp_path)
    assert s.default_backend == "b"


def test_allowed_imports_from_environment_are_split_on_commas(tmp_path: Path) -> None:
    s = load_settings(env={"DSPEX_ALLOWED_IMPORTS": "a, b.c ,"}, cwd=tmp_path)
    assert s.allowed_imports == ("a", "b.c")


def test_a_named_file_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={}, cwd=tmp_path)


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text("database_url = \n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(env={}, cwd=tmp_path)


def test_unknown_keys_are_reported_with_their_path(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text('databse_url = "x"\n[backends.default]\nkind = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, cwd=tmp_path)
    assert "databse_url" in info.value.message
    assert "backends.default.kind" in info.value.message


def test_default_backend_must_be_configured(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="default backend 'x'"):
        load_settings(env={"DSPEX_DEFAULT_BACKEND": "x"}, cwd=tmp_path)
