"""The dashboard in a real browser: Playwright drives Debian's Chromium against the live app.

The app runs under uvicorn in a background thread on 127.0.0.1 (an ephemeral port, SQLite in a
temporary directory, mock backends). Data is made through the HTTP API like any client would:
a four-module program whose critical path is ``b → d``, a few executions (one failing), and a
batch held at a gate until the page is watching it, so its progress has to arrive live.

A full-page screenshot is kept in ``test-artifacts/dashboard.png``.

Skips when Python Playwright or Chromium is missing, unless ``DSPEX_REQUIRE_BROWSER=1`` (CI),
where their absence fails the test instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from dspex import MockBackend
from dspex.backends.base import PredictRequest
from dspex.errors import BadRequestError

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("DSPEX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
KEY = "dashboard-test-key"
TIMEOUT_MS = 15_000  # generous: the machine is shared; every wait ends as soon as it is met

_ANSWERED = re.compile(r"^(healthy|degraded)$")


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python Playwright is not installed (it comes with the `test` extra)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install -y chromium)"
    return None


def _step(ms: float, signature: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "predict", "signature": signature, "config": {"mock_latency_ms": ms}, **fields}


# a and b start together; c waits for a, d for b and c. b is by far the slowest: b → d is critical.
DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "signature": "q: str -> y: str",
    "modules": {
        "a": _step(5, "q: str -> a1: str"),
        "b": _step(60, "q: str -> b1: str"),
        "c": _step(5, "a1: str -> c1: str", inputs={"a1": "a.a1"}),
        "d": _step(5, "b1: str, c1: str -> y: str", inputs={"b1": "b.b1", "c1": "c.c1"}),
    },
}

# One module whose calls wait at the gate: the batch stays running until the test opens it.
GATED: dict[str, Any] = {
    "name": "gated",
    "signature": "question: str -> answer: str",
    "modules": {
        "answer": {
            "kind": "predict",
            "signature": "question: str -> answer: str",
            "config": {"gated": True},
        }
    },
}


@dataclass
class LiveApp:
    url: str
    gate: threading.Event


def _backend(gate: threading.Event) -> MockBackend:
    backend: MockBackend

    async def handler(request: PredictRequest) -> dict[str, Any]:
        if request.inputs.get("q") == "boom":
            raise BadRequestError("the provider refused the prompt", status=400, backend="default")
        if request.config.get("gated"):
            # The gate is a thread event: wait for it off the event loop.
            opened = await asyncio.to_thread(gate.wait, TIMEOUT_MS / 1000)
            assert opened, "the test never opened the gate"
        return backend.outputs_for(request)

    backend = MockBackend("default", handler=handler)
    return backend


@contextmanager
def _serve(tmp_path: Path, api_keys: list[dict[str, str]]) -> Iterator[LiveApp]:
    """The service on 127.0.0.1 in a background thread, over SQLite in ``tmp_path``."""
    import uvicorn

    from dspex.service import create_app

    gate = threading.Event()
    app = create_app(
        f"sqlite+aiosqlite:///{tmp_path / 'dspex.db'}",
        backends={"default": _backend(gate)},
        api_keys=api_keys,
        cwd=tmp_path,
    )
    # The socket is bound and listening before the thread starts: no waiting for the server to
    # come up, connections queue until it accepts them.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield LiveApp(url=f"http://127.0.0.1:{port}", gate=gate)
    finally:
        gate.set()
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
        assert not thread.is_alive(), "the server thread did not stop"


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[LiveApp]:
    """The service with no API key configured."""
    with _serve(tmp_path, []) as app:
        yield app


@pytest.fixture
def keyed_app(tmp_path: Path) -> Iterator[LiveApp]:
    """The service accepting one ``admin`` key, :data:`KEY`."""
    from dspex.service import hash_key

    with _serve(tmp_path, [{"hash": hash_key(KEY), "scope": "admin"}]) as app:
        yield app


@pytest.fixture
def browser() -> Iterator[Browser]:
    missing = _missing_browser()
    if missing is not None:
        if os.environ.get("DSPEX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DSPEX_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_console(message: ConsoleMessage) -> None:
        # The browser logs every refused request; a 401 before the key is entered is expected.
        if message.type == "error" and "status of 401" not in message.text:
            errors.append(message.text)

    page.on("console", on_console)
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"the page logged errors: {errors}"


def _seed(app: LiveApp, key: str | None = None) -> dict[str, Any]:
    """Programs, executions and a (gated) batch, made through the HTTP API."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=app.url, timeout=TIMEOUT_MS / 1000, headers=headers) as client:
        for spec in (DIAMOND, GATED):
            response = client.post("/programs", params={"initialize": "true"}, json=spec)
            assert response.status_code == 201, response.text
        results = []
        for q in ("alpha", "beta", "boom", "gamma"):
            response = client.post("/programs/diamond/executions", json={"inputs": {"q": q}})
            assert response.status_code == 200, response.text
            results.append(response.json())
        batch = client.post(
            "/programs/gated/batches",
            params={"max_concurrency": "2"},
            json=[{"question": f"item {i}"} for i in range(6)],
        )
        assert batch.status_code == 202, batch.text
    statuses = {r["execution_id"]: r["status"] for r in results}
    assert sorted(statuses.values()) == ["completed", "completed", "completed", "failed"]
    return {"statuses": statuses, "batch_id": batch.json()["batch_id"]}


def test_dashboard_shows_executions_graph_live_batch_and_health(
    live_app: LiveApp, page: Page
) -> None:
    from playwright.sync_api import expect

    seeded = _seed(live_app)
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)

    page.goto(f"{live_app.url}/")
    expect(page).to_have_url(f"{live_app.url}/dashboard")

    # Health: the header badge and the checks, the default backend's breaker closed.
    # A loaded machine may report "degraded" (latency, loop lag); what matters is a real answer.
    expect(page.locator("#overall-health")).to_have_attribute("data-status", _ANSWERED)
    expect(page.locator('#health-table tr[data-check="database"]')).to_have_attribute(
        "data-status", _ANSWERED
    )
    expect(page.locator('#breakers li[data-backend="default"]')).to_have_attribute(
        "data-breaker", "closed"
    )
    # No key configured: the key field stays hidden.
    expect(page.locator("#key-form")).to_be_hidden()

    # Executions: every one, with its own status; the failure with its error code.
    for execution_id, status in seeded["statuses"].items():
        row = page.locator(f'#executions-table tr[data-execution-id="{execution_id}"]')
        expect(row).to_have_attribute("data-status", status)
    failed_id = next(i for i, s in seeded["statuses"].items() if s == "failed")
    failed_row = page.locator(f'#executions-table tr[data-execution-id="{failed_id}"]')
    expect(failed_row).to_contain_text("backend_bad_request")
    # Shortened ids tell rows apart (time-ordered ids share their leading timestamp); the whole
    # id is on hover.
    shown = {
        execution_id: page.locator(
            f'#executions-table tr[data-execution-id="{execution_id}"] td.id code'
        )
        for execution_id in seeded["statuses"]
    }
    texts = {i: code.inner_text() for i, code in shown.items()}
    assert len(set(texts.values())) == len(texts), texts
    for execution_id, code in shown.items():
        expect(code).to_have_attribute("title", execution_id)
        assert texts[execution_id].lstrip("…") in execution_id.replace("-", "")

    # The batch is running (held at the gate) and streamed; opening the gate takes it to 100%.
    batch = page.locator(f'#batch-list li[data-batch-id="{seeded["batch_id"]}"]')
    expect(batch).to_have_attribute("data-status", "running")
    expect(batch).to_have_attribute("data-live", "true")
    live_app.gate.set()
    expect(batch).to_have_attribute("data-percent", "100")
    expect(batch).to_have_attribute("data-status", "completed")
    expect(batch.locator('[role="progressbar"]')).to_have_attribute("aria-valuenow", "100")
    # the progress came over the event stream, not only from the list's polling
    assert int(batch.get_attribute("data-events") or 0) >= 1
    assert any(f"/batches/{seeded['batch_id']}/events" in url for url in streams)

    # The program graph: the DAG and the Gantt chart, the critical path b → d highlighted.
    page.locator('#program-list button[data-program="diamond"]').click()
    graph = page.locator("#graph")
    expect(graph.locator(".dspex-dag .node")).to_have_count(4)
    critical_nodes = graph.locator(".dspex-dag .node.critical")
    expect(critical_nodes).to_have_count(2)
    assert critical_nodes.evaluate_all("ns => ns.map(n => n.dataset.module)") == ["b", "d"]
    expect(graph.locator('.dspex-dag .edge.critical[data-from="b"][data-to="d"]')).to_have_count(1)
    expect(graph.locator(".dspex-gantt .row")).to_have_count(4)
    bars = graph.locator(".dspex-gantt .bar.critical")
    assert sorted(bars.evaluate_all("bs => bs.map(b => b.parentNode.dataset.module)")) == ["b", "d"]
    expect(graph).to_contain_text("b → d")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_execution_row_opens_a_drawer_with_its_steps(live_app: LiveApp, page: Page) -> None:
    from playwright.sync_api import expect

    seeded = _seed(live_app)
    live_app.gate.set()
    failed_id = next(i for i, s in seeded["statuses"].items() if s == "failed")
    page.goto(f"{live_app.url}/dashboard")

    page.locator(f'#executions-table tr[data-execution-id="{failed_id}"]').click()
    drawer = page.locator("#drawer")
    expect(drawer).to_be_visible()
    expect(drawer).to_contain_text(failed_id)
    expect(drawer.locator(".error-box")).to_contain_text("backend_bad_request")
    expect(drawer.locator("tr[data-module]")).to_have_count(4)
    expect(drawer.locator('tr[data-module="a"]')).to_have_attribute("data-status", "failed")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-drawer.png"), full_page=False)

    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()


def test_with_keys_the_page_asks_for_one_and_then_streams_with_it(
    keyed_app: LiveApp, page: Page
) -> None:
    from playwright.sync_api import expect

    seeded = _seed(keyed_app, KEY)
    page.goto(f"{keyed_app.url}/dashboard")
    form = page.locator("#key-form")
    expect(form).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("API key")

    page.locator("#api-key").fill("not-the-key")
    page.locator("#key-form button[type=submit]").click()
    expect(page.locator("#key-message")).to_contain_text("not accepted")

    page.locator("#api-key").fill(KEY)
    page.locator("#key-form button[type=submit]").click()
    expect(page.locator("#overall-health")).to_have_attribute("data-status", _ANSWERED)
    expect(page.locator("#executions-table tr[data-execution-id]")).to_have_count(10)
    assert page.evaluate("sessionStorage.getItem('dspex.apiKey')") == KEY

    # EventSource cannot send the key: the page reads the stream with fetch instead.
    batch = page.locator(f'#batch-list li[data-batch-id="{seeded["batch_id"]}"]')
    expect(batch).to_have_attribute("data-live", "true")
    keyed_app.gate.set()
    expect(batch).to_have_attribute("data-percent", "100")
    expect(batch).to_have_attribute("data-status", "completed")
    assert int(batch.get_attribute("data-events") or 0) >= 1
    expect(page.locator("#banner")).to_be_hidden()


QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def _seed_versions(app: LiveApp) -> dict[str, Any]:
    """A program optimized into v2 (over HTTP, in the background), both versions evaluated,
    and v2 promoted past the gate with ``force``."""
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    with httpx.Client(base_url=app.url, timeout=TIMEOUT_MS / 1000) as client:
        response = client.post("/programs", params={"initialize": "true"}, json=QA)
        assert response.status_code == 201, response.text
        body = {"trainset": rows, "metric": "exact_match", "seed": 7, "max_demos": 2}
        started = client.post("/programs/qa/optimizations", json=body)
        assert started.status_code == 202, started.text
        run_id = started.json()["optimization_id"]
        # the event stream ends once the run did
        events = client.get(f"/optimizations/{run_id}/events").text
        assert "event: done" in events
        run = client.get(f"/optimizations/{run_id}").json()
        assert (run["status"], run["version"]) == ("completed", 2), run
        assert client.post("/programs/qa/initialize", params={"version": 2}).status_code == 200
        for version in (1, 2):
            evaluation = client.post(
                "/programs/qa/evaluations",
                params={"metric": "exact_match", "version": version},
                json=rows,
            )
            assert evaluation.status_code == 202, evaluation.text
            assert (
                "event: done" in client.get(f"/batches/{evaluation.json()['batch_id']}/events").text
            )
        promoted = client.post("/programs/qa/promote", json={"version": 2, "force": True})
        assert promoted.status_code == 200, promoted.text
    return {"optimization_id": run_id}


def test_program_versions_show_scores_lineage_and_promotions(live_app: LiveApp, page: Page) -> None:
    from playwright.sync_api import expect

    seeded = _seed_versions(live_app)
    live_app.gate.set()
    page.goto(f"{live_app.url}/dashboard")
    page.locator('#program-list button[data-program="qa"]').click()

    versions = page.locator("#versions")
    expect(versions).to_be_visible()
    expect(versions).to_have_attribute("data-current", "2")
    v2 = versions.locator('tr[data-version="2"]')
    v1 = versions.locator('tr[data-version="1"]')
    expect(v2).to_have_attribute("data-current", "true")
    expect(v2.locator(".current-mark")).to_have_text("current")
    expect(v1).to_have_attribute("data-current", "false")
    expect(v1.locator(".current-mark")).to_have_count(0)
    # scores: each version's evaluation, with its metric, n and devset
    for row in (v1, v2):
        score = row.locator('.score[data-metric="exact_match"]')
        expect(score).to_have_attribute("data-n", "4")
        expect(score).to_contain_text("devset")
    # lineage: v2 was made from v1 by the optimization run, with its seed and settings
    lineage = v2.locator(".lineage-entry")
    expect(lineage).to_have_attribute("data-parent", "1")
    expect(lineage).to_have_attribute("data-optimizer", "bootstrap_few_shot")
    expect(lineage).to_have_attribute("data-seed", "7")
    expect(lineage.locator(".settings")).to_contain_text("max_bootstrapped_demos=2")
    expect(lineage.locator(f'code[data-id="{seeded["optimization_id"]}"]')).to_have_count(1)
    expect(v1.locator(".lineage")).to_have_text("—")
    # the promotion was forced past the gate, and says so
    promotion = v2.locator(".promotion")
    expect(promotion).to_have_attribute("data-forced", "true")
    expect(promotion.locator(".badge.forced")).to_have_text("forced")
    expect(promotion).to_contain_text("by api")
    run = page.locator(f'#optimization-list li[data-optimization-id="{seeded["optimization_id"]}"]')
    expect(run).to_have_attribute("data-status", "completed")
    expect(run).to_contain_text("v1 → v2")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-versions.png"), full_page=True)
