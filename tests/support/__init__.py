"""Test support shared across test packages (the loopback OpenAI-compatible server)."""

import pytest
from tests.support.openai_server import OpenAIServer, Outcome, delay, drop, ok, status

NEW_ERROR_CLASSES = pytest.StashKey[dict[str, str]]()
"""Provider error classes that map through a base class's rule (set by the completeness test)."""

__all__ = ["NEW_ERROR_CLASSES", "OpenAIServer", "Outcome", "delay", "drop", "ok", "status"]
