"""The runtime fixtures of the runtime suite, for the SQL-store health checks."""

from __future__ import annotations

from tests.runtime.conftest import clock, sql_runtime

__all__ = ["clock", "sql_runtime"]
