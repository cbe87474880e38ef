"""Alembic environment: migrate the connection handed over in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from dspex.store.migrations import VERSION_TABLE
from dspex.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through the alembic CLI
    raise RuntimeError("dspex migrations run through dspex.store (pass a connection)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most things; batch mode rebuilds tables for later revisions.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
