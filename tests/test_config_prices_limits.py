"""``[prices."MODEL"]`` and ``rpm``/``tpm`` of ``[backends.NAME]`` in ``dspex.toml``."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspex.config import load_settings
from dspex.errors import ConfigError
from dspex.resilience.ratelimit import RateLimitedBackend
from dspex.runtime import build_backends, price_table

CONFIG = """
[backends.default]
kind = "mock"
rpm = 120
tpm = 6000

[backends.free]
kind = "mock"

[prices."openai/gpt-4o-mini"]
input_cost_per_token = 0.5
output_cost_per_token = 1.5
"""


def test_prices_override_litellm_by_model_name(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text(CONFIG)
    settings = load_settings(cwd=tmp_path, env={})
    table = price_table(settings)
    assert table.cost_of_counts("openai/gpt-4o-mini", 2, 2) == pytest.approx(4.0)


def test_backends_with_rpm_or_tpm_are_rate_limited_and_others_are_not(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text(CONFIG)
    built = build_backends(load_settings(cwd=tmp_path, env={}))
    limited = built["default"]
    assert isinstance(limited, RateLimitedBackend)
    assert (limited.limiter.rpm, limited.limiter.tpm) == (120, 6000)
    assert not isinstance(built["free"], RateLimitedBackend)


@pytest.mark.parametrize(
    "table",
    [
        '[backends.default]\nkind = "mock"\nrpm = 0\n',
        '[backends.default]\nkind = "mock"\ntpm = -5\n',
        "[prices.m]\ninput_cost_per_token = -1\n",
        "[prices.m]\ninput_cost_per_tokens = 1\n",
    ],
)
def test_bad_limits_or_prices_are_config_errors(tmp_path: Path, table: str) -> None:
    (tmp_path / "dspex.toml").write_text(table)
    with pytest.raises(ConfigError):
        load_settings(cwd=tmp_path, env={})


def test_an_openai_backend_takes_rpm_and_tpm_beside_its_own_options(tmp_path: Path) -> None:
    (tmp_path / "dspex.toml").write_text(
        '[backends.default]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'model = "m"\nrpm = 60\n'
    )
    built = build_backends(load_settings(cwd=tmp_path, env={}))
    assert isinstance(built["default"], RateLimitedBackend)
    assert built["default"].inner.model == "m"  # type: ignore[attr-defined]
