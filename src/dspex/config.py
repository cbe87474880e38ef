"""Configuration: ``dspex.toml`` (or the file named by ``DSPEX_CONFIG``), overridden by ``DSPEX_*``.

Defaults make everything work with no file at all: the embedded SQLite database at
``./.dspex/dspex.db`` and the ``mock`` backend.

Example ``dspex.toml``::

    database_url = "postgresql://app@db/dspex"
    allowed_imports = ["myproject.modules"]

    [backends.default]
    kind = "dspy"
    model = "openai/gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"

    [backends.local]
    kind = "mock"
    latency_ms = 20

Environment overrides: ``DSPEX_DATABASE_URL``, ``DSPEX_DEFAULT_BACKEND``,
``DSPEX_ALLOWED_IMPORTS`` (comma-separated), ``DSPEX_WORKER_ID``.
API keys are never read from the file: a backend names the environment variable that holds its key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from dspex.errors import ConfigError, ErrorDetail

__all__ = ["DEFAULT_DATABASE_PATH", "BackendConfig", "Settings", "load_settings"]

DEFAULT_DATABASE_PATH = Path(".dspex") / "dspex.db"


class BackendConfig(BaseModel):
    """One named backend: ``mock`` (no LM) or ``dspy`` (any ``dspy.LM`` provider)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["mock", "dspy"] = "mock"
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None


class Settings(BaseModel):
    """Resolved configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str | None = None
    default_backend: str = "default"
    backends: dict[str, BackendConfig] = Field(
        default_factory=lambda: {"default": BackendConfig(kind="mock")}
    )
    allowed_imports: tuple[str, ...] = ()
    resources: dict[str, float] = Field(default_factory=dict)
    worker_id: str | None = None
    lease_seconds: float = Field(default=30.0, gt=0)
    source: str | None = None

    def resolved_database_url(self, cwd: Path | None = None) -> str:
        """The database URL, or the embedded SQLite file under ``cwd`` (default: working dir)."""
        if self.database_url:
            return self.database_url
        base = cwd or Path.cwd()
        return f"sqlite:///{base / DEFAULT_DATABASE_PATH}"


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if env.get("DSPEX_DATABASE_URL"):
        out["database_url"] = env["DSPEX_DATABASE_URL"]
    if env.get("DSPEX_DEFAULT_BACKEND"):
        out["default_backend"] = env["DSPEX_DEFAULT_BACKEND"]
    if env.get("DSPEX_ALLOWED_IMPORTS"):
        out["allowed_imports"] = tuple(
            p.strip() for p in env["DSPEX_ALLOWED_IMPORTS"].split(",") if p.strip()
        )
    if env.get("DSPEX_WORKER_ID"):
        out["worker_id"] = env["DSPEX_WORKER_ID"]
    return out


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Read ``dspex.toml`` (if any) and apply ``DSPEX_*`` overrides.

    Args:
        path: an explicit file; otherwise ``DSPEX_CONFIG``, otherwise ``./dspex.toml`` if it exists.
        env: the environment to read (default ``os.environ``).
        cwd: the directory to look in (default: the working directory).

    Raises:
        ConfigError: the file is missing (when named explicitly), not TOML, or has unknown keys.
    """
    environ = os.environ if env is None else env
    base = cwd or Path.cwd()
    named = path or environ.get("DSPEX_CONFIG")
    file = Path(named) if named else base / "dspex.toml"
    data: dict[str, Any] = {}
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {file}: {exc}") from exc
        data["source"] = str(file)
    elif named:
        raise ConfigError(f"configuration file not found: {file}")
    data.update(_env_overrides(environ))
    try:
        settings = Settings.model_validate(data)
    except PydanticValidationError as exc:
        details = [
            ErrorDetail(".".join(str(p) for p in e["loc"]) or "<root>", e["type"], e["msg"])
            for e in exc.errors()
        ]
        where = data.get("source", "configuration")
        msg = f"invalid {where}: " + "; ".join(f"{d.field}: {d.message}" for d in details)
        raise ConfigError(msg) from None
    if settings.default_backend not in settings.backends:
        known = ", ".join(sorted(settings.backends)) or "none"
        raise ConfigError(
            f"default backend {settings.default_backend!r} is not configured (known: {known})"
        )
    return settings
