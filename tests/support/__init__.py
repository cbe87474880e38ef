"""Test support shared across test packages (the loopback OpenAI-compatible server)."""

from tests.support.openai_server import OpenAIServer, Outcome, delay, drop, ok, status

__all__ = ["OpenAIServer", "Outcome", "delay", "drop", "ok", "status"]
