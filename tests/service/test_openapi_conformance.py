"""Schemathesis against the app's own OpenAPI document: no 5xx, every response as declared.

Runs in process (ASGI), seeded and bounded so it is deterministic and fast. A ready program and
a finished batch exist first, so generated requests reach real work, not only 404s.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from tests.service._support import ADMIN, KEYS, QA, default_backends

from dspex.service import create_app

# What the service promises. Not checked: that unknown query parameters are refused
# (FastAPI ignores them, as most HTTP APIs do).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


_WORKDIR = Path(tempfile.mkdtemp(prefix="dspex-schemathesis-"))
APP = create_app(
    f"sqlite:///{_WORKDIR / 'dspex.db'}",
    cwd=_WORKDIR,
    backends=default_backends(),
    api_keys=KEYS,
    max_batch_items=50,
)
# The dashboard's routes belong to its own suite; this one checks the API.
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path_regex="^/dashboard")


@pytest.fixture(scope="module", autouse=True)
def _seeded() -> Iterator[None]:
    """A ready program with one execution, so generated requests reach real work."""
    from schemathesis.python import asgi

    with asgi.get_client(APP) as client:
        client.headers.update(ADMIN)
        assert client.post("/programs?initialize=true", json=QA).status_code == 201
        client.post("/programs/qa/executions", json={"inputs": {"question": "q?"}})
    yield
    asgi.shutdown_lifespans()
    shutil.rmtree(_WORKDIR, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi(case: Any) -> None:
    if case.path == "/health":
        # Deep health makes a live call to every backend, and "slow" and "broken" are built to
        # fail: the documented 503 (unhealthy) is the right answer, not a server error.
        excluded = [checks.not_a_server_error]
        case.call_and_validate(
            headers=ADMIN,
            checks=[c for c in CHECKS if c not in excluded],
            excluded_checks=excluded,
        )
        return
    case.call_and_validate(headers=ADMIN, checks=CHECKS)
