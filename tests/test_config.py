"""Configuration: defaults with no file, dspex.toml, DSPEX_* overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspex.config import SettingValue, effective_settings, load_settings, load_settings_sources
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


COORDINATED = """
default_backend = "main"

[backends.openai]
kind = "mock"

[backends.anthropic]
kind = "mock"

[coordinators.main]
backends = ["openai", "anthropic"]
strategy = "round_robin"

[coordinators.main.retry]
max_attempts = 4
deadline = 30

[breaker]
failure_rate_threshold = 0.25
minimum_calls = 4
window_size = 8
open_seconds = 5
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dspex.toml"
    path.write_text(text)
    return path


def test_coordinator_groups_and_the_breaker_are_read_from_the_file(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, COORDINATED), env={}, cwd=tmp_path)
    group = s.coordinators["main"]
    assert group.backends == ("openai", "anthropic")
    assert group.strategy == "round_robin"
    assert (group.retry.max_attempts, group.retry.deadline) == (4, 30)
    assert s.breaker.failure_rate_threshold == 0.25
    assert (s.breaker.minimum_calls, s.breaker.window_size, s.breaker.open_seconds) == (4, 8, 5)


def test_the_default_backend_may_be_a_coordinator_group(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, COORDINATED), env={}, cwd=tmp_path)
    assert s.default_backend == "main"
    assert s.backend_names() == ["anthropic", "main", "openai"]


def test_a_group_naming_unknown_backends_is_a_config_error_naming_them(tmp_path: Path) -> None:
    text = COORDINATED.replace('["openai", "anthropic"]', '["openai", "gemini", "local"]')
    with pytest.raises(ConfigError, match=r"coordinators\.main.*gemini, local"):
        load_settings(_write(tmp_path, text), env={}, cwd=tmp_path)


def test_a_group_may_not_take_a_backends_name(tmp_path: Path) -> None:
    text = COORDINATED.replace("[coordinators.main]", "[coordinators.openai]").replace(
        "[coordinators.main.retry]", "[coordinators.openai.retry]"
    )
    with pytest.raises(ConfigError, match="a backend is already named 'openai'"):
        load_settings(_write(tmp_path, text), env={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("max_attempts = 4", "max_attempts = 0", "coordinators.main.retry.max_attempts"),
        ("deadline = 30", "deadline = -1", "coordinators.main.retry.deadline"),
        ("deadline = 30", "patience = 3", "coordinators.main.retry.patience"),
        ('strategy = "round_robin"', 'strategy = "random"', "coordinators.main.strategy"),
        ("minimum_calls = 4", "minimum_calls = 40", "window_size must be >= minimum_calls"),
        ("open_seconds = 5", "cooldown = 5", "breaker.cooldown"),
    ],
)
def test_malformed_group_or_breaker_settings_are_config_errors(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_settings(_write(tmp_path, COORDINATED.replace(old, new)), env={}, cwd=tmp_path)


def test_a_group_needs_at_least_one_backend(tmp_path: Path) -> None:
    text = COORDINATED.replace('["openai", "anthropic"]', "[]")
    with pytest.raises(ConfigError, match=r"coordinators\.main\.backends"):
        load_settings(_write(tmp_path, text), env={}, cwd=tmp_path)


def test_without_groups_the_breaker_keeps_its_defaults(tmp_path: Path) -> None:
    s = load_settings(env={}, cwd=tmp_path)
    assert s.coordinators == {}
    assert (s.breaker.failure_rate_threshold, s.breaker.minimum_calls) == (0.5, 10)


def test_corpus_dirs_default_to_empty(tmp_path: Path) -> None:
    assert load_settings(env={}, cwd=tmp_path).corpus_dirs == ()


def test_relative_corpus_dirs_in_the_file_resolve_against_the_file(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "dspex.toml"
    config.parent.mkdir()
    config.write_text('corpus_dirs = ["data/corpora", "/srv/corpora"]\n')
    s = load_settings(config, env={}, cwd=tmp_path)
    assert s.corpus_dirs == (str(config.parent.resolve() / "data/corpora"), "/srv/corpora")


def test_corpus_dirs_from_the_environment_are_comma_separated_and_relative_to_cwd(
    tmp_path: Path,
) -> None:
    (tmp_path / "dspex.toml").write_text('corpus_dirs = ["from-file"]\n')
    s = load_settings(env={"DSPEX_CORPUS_DIRS": "a, /abs/b,,"}, cwd=tmp_path)
    assert s.corpus_dirs == (str(tmp_path / "a"), "/abs/b")


def test_corpus_dirs_of_the_wrong_type_are_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text("corpus_dirs = 3\n")
    with pytest.raises(ConfigError, match="corpus_dirs"):
        load_settings(env={}, cwd=tmp_path)


# -- SQLite URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "database", "uri", "read_only"),
    [
        ("sqlite:///data/dspex.db", "data/dspex.db", False, False),
        ("sqlite:///file:data/dspex.db?mode=ro&uri=true", "file:data/dspex.db?mode=ro", True, True),
        ("sqlite:///data/dspex.db?mode=ro&uri=true", "file:data/dspex.db?mode=ro", True, True),
        ("sqlite:///file:dspex.db?immutable=1", "file:dspex.db?immutable=1", True, True),
        (
            "sqlite:///file:dspex.db?mode=rw&uri=true&timeout=5",
            "file:dspex.db?mode=rw",
            True,
            False,
        ),
    ],
)
def test_a_sqlite_url_names_a_file_or_a_uri_and_says_whether_it_is_read_only(
    url: str, database: str, uri: bool, read_only: bool
) -> None:
    from dspex.store._engine import normalize_url, sqlite_target

    target = sqlite_target(normalize_url(url))
    assert (target.database, target.uri, target.read_only) == (database, uri, read_only)
    assert (target.path is None) == uri


def test_the_safe_defaults_are_a_30s_attempt_3_attempts_and_breakers(tmp_path: Path) -> None:
    defaults = load_settings(env={}, cwd=tmp_path).defaults
    assert (defaults.timeout, defaults.attempt_timeout) == (30.0, 30.0)
    assert (defaults.retry.max_attempts, defaults.retry.initial_interval) == (3, 0.5)
    assert defaults.breakers is True


def test_a_zero_timeout_means_no_limit(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text("[defaults]\ntimeout = 0\n")
    assert load_settings(env={}, cwd=tmp_path).defaults.attempt_timeout is None


def test_flags_override_the_environment_which_overrides_the_file(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text(
        "[defaults]\ntimeout = 10\nbreakers = false\n[defaults.retry]\nmax_attempts = 4\n"
    )
    env = {"DSPEX_TIMEOUT": "20", "DSPEX_MAX_ATTEMPTS": "5"}
    flags = {"defaults.retry.max_attempts": ("--max-attempts", 6)}
    settings, origins = load_settings_sources(env=env, cwd=tmp_path, flags=flags)
    assert (settings.defaults.timeout, settings.defaults.retry.max_attempts) == (20.0, 6)
    assert settings.defaults.breakers is False
    values = {v.key: v for v in effective_settings(settings, origins)}
    file = str(tmp_path / "dspex.toml")
    assert values["defaults.breakers"] == SettingValue("defaults.breakers", False, "file", file)
    assert values["defaults.timeout"].to_dict() == {
        "value": 20.0,
        "source": "environment",
        "origin": "DSPEX_TIMEOUT",
    }
    assert (
        values["defaults.retry.max_attempts"].source,
        values["defaults.retry.max_attempts"].origin,
    ) == (
        "flag",
        "--max-attempts",
    )
    # a key the file's table leaves out keeps its default, and says so
    assert values["defaults.retry.initial_interval"].source == "default"
    assert values["lease_seconds"] == SettingValue("lease_seconds", 30.0, "default")


def test_every_setting_is_listed_once_in_key_order(tmp_path: Path) -> None:
    settings, origins = load_settings_sources(env={}, cwd=tmp_path)
    keys = [v.key for v in effective_settings(settings, origins)]
    assert keys == sorted(set(keys))
    assert {"defaults.timeout", "breaker.open_seconds", "server.port"} <= set(keys)
    assert "source" not in keys


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DSPEX_TIMEOUT", "soon", "not a number"),
        ("DSPEX_MAX_ATTEMPTS", "2.5", "not a whole number"),
        ("DSPEX_BREAKERS", "maybe", "not true or false"),
        ("DSPEX_MAX_ATTEMPTS", "0", "max_attempts"),
    ],
)
def test_malformed_default_overrides_are_config_errors_naming_them(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={variable: value}, cwd=tmp_path)


@pytest.mark.parametrize(("text", "expected"), [("off", False), ("1", True), ("TRUE", True)])
def test_breakers_can_be_switched_from_the_environment(
    tmp_path: Path, text: str, expected: bool
) -> None:
    assert load_settings(env={"DSPEX_BREAKERS": text}, cwd=tmp_path).defaults.breakers is expected


def test_a_context_window_fallback_must_be_a_configured_backend(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text(
        '[backends.a]\nkind = "mock"\n[coordinators.main]\nbackends = ["a"]\n'
        'context_window_fallback = ["big"]\n'
    )
    with pytest.raises(ConfigError, match=r"unknown backend.*big"):
        load_settings(env={}, cwd=tmp_path)
