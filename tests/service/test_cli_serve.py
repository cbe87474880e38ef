"""``dspex serve``: key hashing, the loopback rule without keys, and the ``[server]`` settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dspex.cli import app
from dspex.cli.serve import is_loopback
from dspex.config import ConfigError, load_settings, parse_api_keys
from dspex.service import hash_key

runner = CliRunner()


def test_hash_key_reads_stdin_and_prints_the_config_form() -> None:
    result = runner.invoke(app, ["serve", "--hash-key"], input="abc\n")
    assert result.exit_code == 0
    assert result.output.strip() == hash_key("abc")


def test_hash_key_without_input_is_a_usage_error() -> None:
    assert runner.invoke(app, ["serve", "--hash-key"], input="").exit_code == 2


def test_serve_refuses_a_public_address_without_keys(workdir: Path) -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in result.output


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_server_settings_come_from_the_file(workdir: Path) -> None:
    digest = hash_key("k")
    (workdir / "dspex.toml").write_text(
        f'[server]\nport = 9000\napi_keys = [{{hash = "{digest}", scope = "admin"}}]\n'
    )
    server = load_settings(cwd=workdir, env={}).server
    assert server.port == 9000
    assert server.api_keys[0].scope == "admin"


def test_api_keys_from_the_environment_replace_the_file(workdir: Path) -> None:
    hexdigest = hash_key("k").removeprefix("sha256:")
    server = load_settings(cwd=workdir, env={"DSPEX_API_KEYS": f"read:{hexdigest}"}).server
    assert [(k.scope, k.hash) for k in server.api_keys] == [("read", f"sha256:{hexdigest}")]


def test_malformed_environment_keys_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_api_keys("admin")


def test_the_cli_does_not_import_fastapi_at_startup() -> None:
    code = "import sys, dspex.cli; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
