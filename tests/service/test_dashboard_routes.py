"""The dashboard's routes in-process: the page, its assets and its two data routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dspex import MockBackend
from dspex.service import create_app, hash_key
from dspex.service.dashboard import STATIC_DIR, page_html

ASSETS = ("/static/dashboard.js", "/static/dashboard.css")
# any absolute or protocol-relative URL: the page must load nothing from outside the app
EXTERNAL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


def _step(ms: float, signature: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "predict", "signature": signature, "config": {"mock_latency_ms": ms}, **fields}


DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "signature": "q: str -> y: str",
    "modules": {
        "a": _step(1, "q: str -> a1: str"),
        "b": _step(25, "q: str -> b1: str"),
        "c": _step(1, "a1: str -> c1: str", inputs={"a1": "a.a1"}),
        "d": _step(1, "b1: str, c1: str -> y: str", inputs={"b1": "b.b1", "c1": "c.c1"}),
    },
}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app("memory://", backends={"default": MockBackend("default")}, api_keys=[])
    with TestClient(app, base_url="http://localhost:8000") as client:
        yield client


@pytest.fixture
def keyed_client() -> Iterator[TestClient]:
    keys = [{"hash": hash_key("reader-key"), "scope": "read"}]
    app = create_app("memory://", backends={"default": MockBackend("default")}, api_keys=keys)
    with TestClient(app) as client:
        yield client


def _ready_diamond(client: TestClient) -> None:
    response = client.post("/programs", params={"initialize": "true"}, json=DIAMOND)
    assert response.status_code == 201, response.text


def test_root_redirects_to_the_dashboard(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/dashboard"


def test_dashboard_page_is_html_that_loads_its_packaged_assets(client: TestClient) -> None:
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for asset in ASSETS:
        assert f'"{asset}?v=' in response.text
    assert 'type="module"' in response.text


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/static/dashboard.js", "text/javascript"), ("/static/dashboard.css", "text/css")],
)
def test_assets_are_served_with_their_media_type(
    client: TestClient, path: str, media_type: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (STATIC_DIR / path.rsplit("/", 1)[1]).read_bytes()


@pytest.mark.parametrize("path", ["/dashboard", *ASSETS])
def test_page_and_assets_reference_no_external_url(client: TestClient, path: str) -> None:
    text = client.get(path).text
    assert EXTERNAL.findall(text) == []


def test_page_carries_the_package_version_in_asset_urls() -> None:
    import dspex

    assert f"dashboard.js?v={dspex.__version__}" in page_html()
    assert "{version}" not in page_html()


def test_page_is_public_when_keys_are_configured(keyed_client: TestClient) -> None:
    assert keyed_client.get("/dashboard").status_code == 200
    assert keyed_client.get("/static/dashboard.js").status_code == 200


def test_page_data_needs_no_key_when_none_is_configured(client: TestClient) -> None:
    for path in ("/health", "/executions", "/programs", "/dashboard/batches"):
        assert client.get(path).status_code == 200, path


def test_dashboard_data_routes_need_a_key_when_keys_are_configured(
    keyed_client: TestClient,
) -> None:
    assert keyed_client.get("/dashboard/batches").status_code == 401
    assert keyed_client.get("/dashboard/programs/diamond/graph").status_code == 401
    authorized = {"Authorization": "Bearer reader-key"}
    assert keyed_client.get("/dashboard/batches", headers=authorized).status_code == 200


def test_graph_of_a_program_that_never_ran_has_a_dag_and_no_gantt(client: TestClient) -> None:
    _ready_diamond(client)
    graph = client.get("/dashboard/programs/diamond/graph").json()
    assert graph["program"] == "diamond"
    assert graph["levels"] == [["a", "b"], ["c"], ["d"]]
    assert graph["dag_svg"].startswith("<svg")
    assert graph["dag_svg"].count('class="node') == 4
    assert graph["last_run"] is None
    assert graph["gantt_svg"] is None
    assert graph["run_critical_path"] == []


def test_graph_after_a_run_highlights_the_critical_path_in_both_charts(
    client: TestClient,
) -> None:
    _ready_diamond(client)
    run = client.post("/programs/diamond/executions", json={"inputs": {"q": "hi"}}).json()
    graph = client.get("/dashboard/programs/diamond/graph").json()
    assert graph["last_run"]["execution_id"] == run["execution_id"]
    assert graph["last_run"]["status"] == "completed"
    assert graph["critical_path"] == ["b", "d"]
    assert graph["run_critical_path"] == ["b", "d"]
    critical_nodes = re.findall(r'class="node critical" data-module="(\w+)"', graph["dag_svg"])
    assert critical_nodes == ["b", "d"]
    critical_rows = re.findall(r'class="row \w+ critical" data-module="(\w+)"', graph["gantt_svg"])
    assert sorted(critical_rows) == ["b", "d"]


def test_graph_of_an_unknown_program_is_not_found(client: TestClient) -> None:
    response = client.get("/dashboard/programs/nope/graph")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_batches_lists_recent_batches_newest_first_with_counts(client: TestClient) -> None:
    _ready_diamond(client)
    ids = []
    for size in (2, 3):
        response = client.post("/programs/diamond/batches", json=[{"q": "x"}] * size)
        assert response.status_code == 202, response.text
        ids.append(response.json()["batch_id"])
        with client.stream("GET", f"/batches/{ids[-1]}/events") as events:
            assert "event: done" in "".join(events.iter_text())
    items = client.get("/dashboard/batches").json()["items"]
    assert [item["batch_id"] for item in items] == ids[::-1]
    newest = items[0]
    assert newest["program"] == "diamond"
    assert newest["status"] == "completed"
    assert newest["counts"] == {
        "total": 3,
        "completed": 3,
        "failed": 0,
        "cancelled": 0,
        "remaining": 0,
    }
    assert newest["finished_at"] is not None


def test_batches_honours_the_limit(client: TestClient) -> None:
    assert client.get("/dashboard/batches", params={"limit": 0}).status_code == 422
    assert client.get("/dashboard/batches", params={"limit": 1}).json() == {"items": []}


QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def test_versions_carry_their_scores_lineage_and_promotions(client: TestClient) -> None:
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
    assert client.post("/programs", params={"initialize": "true"}, json=QA).status_code == 201
    body = {"trainset": rows, "metric": "exact_match", "seed": 5, "max_demos": 1}
    run_id = client.post("/programs/qa/optimizations", json=body).json()["optimization_id"]
    assert "event: done" in client.get(f"/optimizations/{run_id}/events").text
    assert client.post("/programs/qa/initialize", params={"version": 2}).status_code == 200
    started = client.post(
        "/programs/qa/evaluations", params={"metric": "f1", "version": 2}, json=rows
    )
    assert "event: done" in client.get(f"/batches/{started.json()['batch_id']}/events").text
    assert client.post("/programs/qa/promote", json={"version": 2, "force": True}).is_success

    data = client.get("/dashboard/programs/qa/versions").json()
    assert (data["program"], data["current"]) == ("qa", 2)
    v2, v1 = data["versions"]
    assert (v2["version"], v2["status"], v2["current"], v1["current"]) == (2, "ready", True, False)
    (evaluation,) = v2["evaluations"]
    assert (evaluation["metric"], evaluation["n"], evaluation["status"]) == ("f1", 3, "completed")
    assert len(evaluation["devset_hash"]) == 64
    assert v1["evaluations"] == []
    lineage = v2["lineage"]
    assert (lineage["optimization_id"], lineage["parent_version"], lineage["seed"]) == (
        run_id,
        1,
        5,
    )
    assert lineage["optimizer"] == "bootstrap_few_shot"
    assert lineage["settings"] == {"max_bootstrapped_demos": 1, "max_labeled_demos": 1}
    assert v1["lineage"] is None
    (promotion,) = v2["promotions"]
    assert (promotion["forced"], promotion["promoted_by"]) == (True, "api")
    (run,) = data["optimizations"]
    assert (run["optimization_id"], run["status"], run["version"], run["resumable"]) == (
        run_id,
        "completed",
        2,
        False,
    )
    assert client.get("/dashboard/programs/missing/versions").status_code == 404
