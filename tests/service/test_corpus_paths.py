"""A spec submitted over HTTP can only name corpora inside the configured ``corpus_dirs``.

The service has no program file, so the directory a file-registered program may read from never
applies: ``/etc/passwd``, ``..`` and files next to the server's working directory are refused
with ``403 path_not_allowed``, nothing is stored and nothing of the file is read or answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from tests.service._support import error_code, service

SECRET = "OPENAI_API_KEY=sk-never-in-a-response"


def rag(corpus: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "rag",
        "signature": "q: str -> passages: list[str]",
        "modules": {"r": {"kind": "retrieve", "corpus": corpus, "inputs": {"query": "$input.q"}}},
        **extra,
    }


@pytest.fixture
def corpora(workdir: Path) -> Path:
    directory = workdir / "corpora"
    directory.mkdir()
    (directory / "facts.txt").write_text("Paris is the capital of France.\n")
    (workdir / "dspex.toml").write_text('corpus_dirs = ["corpora"]\n')
    (workdir / ".env").write_text(SECRET + "\n")
    return directory


@pytest.fixture
def app(workdir: Path, corpora: Path) -> Iterator[TestClient]:
    with service(workdir) as client:
        yield client


def assert_refused(response: Any) -> None:
    assert response.status_code == 403, response.text
    assert error_code(response) == "path_not_allowed"
    assert "sk-never" not in response.text
    assert "root:" not in response.text


def test_a_spec_reading_etc_passwd_is_refused_and_not_stored(app: TestClient) -> None:
    assert_refused(app.post("/programs", json=rag("/etc/passwd")))
    assert app.get("/programs").json()["items"] == []


def test_a_refused_spec_is_not_initialized_either(app: TestClient) -> None:
    assert_refused(app.post("/programs?initialize=true", json=rag("/etc/passwd")))


def test_a_yaml_spec_is_checked_the_same_way(app: TestClient) -> None:
    body = yaml.safe_dump(rag("/etc/passwd"))
    response = app.post("/programs", content=body, headers={"Content-Type": "application/yaml"})
    assert_refused(response)


def test_traversal_out_of_the_corpus_directory_is_refused(app: TestClient) -> None:
    assert_refused(app.post("/programs", json=rag("corpora/../.env")))


def test_a_file_in_the_server_working_directory_is_refused(app: TestClient) -> None:
    assert_refused(app.post("/programs", json=rag(".env")))


def test_a_symlink_in_the_corpus_directory_pointing_out_is_refused(
    app: TestClient, corpora: Path, workdir: Path
) -> None:
    (corpora / "notes.txt").symlink_to(workdir / ".env")
    assert_refused(app.post("/programs", json=rag(str(corpora / "notes.txt"))))


def test_a_claimed_program_directory_does_not_widen_the_allow_list(
    app: TestClient, workdir: Path
) -> None:
    spec = rag(str(workdir / ".env"), metadata={"dspex.program_dir": str(workdir)})
    assert_refused(app.post("/programs", json=spec))


def test_a_corpus_inside_corpus_dirs_is_registered(app: TestClient, corpora: Path) -> None:
    response = app.post("/programs", json=rag(str(corpora / "facts.txt")))
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "draft"


def test_without_corpus_dirs_no_corpus_is_accepted_over_http(workdir: Path) -> None:
    (workdir / "facts.txt").write_text("Paris is the capital of France.\n")
    with service(workdir) as client:
        assert_refused(client.post("/programs", json=rag(str(workdir / "facts.txt"))))
