"""Fixtures of the service tests: a started app (in process, no sockets) over SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service._support import service


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory with no dspex configuration from the environment."""
    for name in ("DSPEX_CONFIG", "DSPEX_DATABASE_URL", "DSPEX_API_KEYS", "DSPEX_DEFAULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def client(workdir: Path) -> Iterator[TestClient]:
    """The app with an admin and a read key; requests carry the admin key."""
    with service(workdir) as client:
        yield client
