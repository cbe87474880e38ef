"""Shared test setup: an offline, isolated environment and the PostgreSQL fixture.

The environment is fixed here, at import time, because pytest imports this file before any test
module, and therefore before anything imports DSPy or LiteLLM (which read these variables on
import).

Fake time: async tests that wait (timeouts, backoff, latency, leases) use looptime instead of
sleeping. Mark the test (or module, with ``pytestmark``) ``@pytest.mark.looptime``: its event loop
then starts at time 0 and jumps forward whenever every task is waiting, so ``asyncio.sleep(30)``
returns at once with ``loop.time() == 30``. The looptime plugin patches pytest-asyncio's
loops by itself; nothing else is needed. For Hypothesis tests (which cannot be async), run each
example in its own ``looptime.new_event_loop()``. ``--looptime`` on the command line would enable
it for every async test; we keep it opt-in because tests doing real I/O (SQLite in a thread, the
loopback HTTP server) must see real time.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from urllib.parse import urlsplit

import pytest
from tests.support import NEW_ERROR_CLASSES

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
_DSPY_CACHE = tempfile.mkdtemp(prefix="dspex-test-dspy-cache-")
os.environ["DSPY_CACHEDIR"] = _DSPY_CACHE

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_DSPY_CACHE, ignore_errors=True)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Name the provider error classes that map only through a base class's rule."""
    inherited = config.stash.get(NEW_ERROR_CLASSES, {})
    if inherited:
        terminalreporter.section("provider error classes mapped through a base class")
        for name, base in sorted(inherited.items()):
            terminalreporter.write_line(f"{name} -> the rule of {base}")


def _reachable(url: str, timeout: float = 1.0) -> str | None:
    """``None`` when a TCP connection to the URL's server opens, else why it did not."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the test PostgreSQL server (``DSPEX_TEST_POSTGRES_URL``).

    Skips the test when the server is unreachable, unless ``DSPEX_REQUIRE_POSTGRES=1`` (CI), in
    which case the test fails: a required database that is missing is a broken setup, not a skip.
    """
    url = os.environ.get("DSPEX_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    problem = _reachable(url)
    if problem is not None:
        message = f"PostgreSQL is not reachable at {problem}"
        if os.environ.get("DSPEX_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{message} and DSPEX_REQUIRE_POSTGRES=1", pytrace=False)
        pytest.skip(message)
    return url
