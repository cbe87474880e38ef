"""Fixtures for backend tests: the loopback OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.openai_server import OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A running loopback server (answers DSPy prompts; script outcomes with ``.script``)."""
    with OpenAIServer() as server:
        yield server
