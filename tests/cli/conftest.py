"""Each CLI test runs in its own empty working directory, so the embedded SQLite lands there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_support import PROGRAM

_ENV = (
    "DSPEX_CONFIG",
    "DSPEX_DATABASE_URL",
    "DSPEX_DEFAULT_BACKEND",
    "DSPEX_ALLOWED_IMPORTS",
    "DSPEX_WORKER_ID",
    "DSPEX_TIMEOUT",
    "DSPEX_MAX_ATTEMPTS",
    "DSPEX_BREAKERS",
    "DSPEX_CACHE",
    "DSPEX_CACHE_TTL",
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory holding ``program.yaml`` (the three-module mock program)."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "program.yaml").write_text(yaml.safe_dump(PROGRAM, sort_keys=False))
    return tmp_path
