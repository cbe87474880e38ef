"""``dspex serve``: the runtime over HTTP (FastAPI + uvicorn, one worker).

Without an API key configured the server listens on loopback only and says so; asking for any
other address without keys is refused. ``dspex serve --hash-key`` reads a key on stdin and prints
the ``sha256:…`` line to put in ``[server] api_keys`` (or ``DSPEX_API_KEYS``). FastAPI and
uvicorn are imported only when the server starts, so ``dspex --help`` stays fast.
"""

from __future__ import annotations

import hashlib
import ipaddress
import sys
from pathlib import Path
from typing import Annotated

import typer

from dspex.cli._common import (
    EXIT_USAGE,
    ConfigOption,
    DatabaseUrlOption,
    err_console,
    handle_errors,
    usage_error,
)

__all__ = ["is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hash_stdin() -> None:
    key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        usage_error(
            'no key on stdin: pipe the key in, e.g. `printf %s "$KEY" | dspex serve --hash-key`'
        )
    typer.echo("sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest())


def serve(
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="address to listen on (default: server.host in dspex.toml, 127.0.0.1)"
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=0, max=65535, help="port (default: server.port in dspex.toml, 8000)"
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
    hash_key: Annotated[
        bool,
        typer.Option("--hash-key", help="read an API key on stdin, print its hash and exit"),
    ] = False,
) -> None:
    """Serve the runtime over HTTP: programs, executions, batches, health and metrics."""
    if hash_key:
        _hash_stdin()
        return
    from dspex.config import load_settings

    with handle_errors(as_json=False):
        settings = load_settings(config)
    server = settings.server
    bind = host or server.host
    listen_port = server.port if port is None else port
    if not server.api_keys and not is_loopback(bind):
        err_console.print(
            f"[bold red]error:[/] refusing to listen on {bind} without an API key: anyone who"
            " can reach it could run programs. Configure \\[server] api_keys in dspex.toml or"
            " DSPEX_API_KEYS=scope:sha256hex (hash a key with `dspex serve --hash-key`),"
            " or listen on 127.0.0.1.",
            markup=True,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_USAGE)
    if not server.api_keys:
        err_console.print(
            f"[yellow]no API key configured:[/] every request is allowed; listening on {bind}"
            " (this machine) only.",
            markup=True,
            soft_wrap=True,
        )
    _run(bind, listen_port, database_url, config, log_level)


def _run(
    host: str, port: int, database_url: str | None, config: Path | None, log_level: str
) -> None:
    try:
        import uvicorn

        from dspex.service import create_app
    except ImportError as exc:  # pragma: no cover - the server extra is missing
        usage_error(f"the server extra is not installed ({exc}): pip install 'dspex[server]'")
    with handle_errors(as_json=False):
        app = create_app(database_url, config=config, tune_process=True)  # a process of its own
    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, access_log=False)
