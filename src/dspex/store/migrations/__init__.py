"""Alembic migrations of the dspex schema, run programmatically (no ``alembic.ini`` needed).

The functions here take a synchronous SQLAlchemy connection (use ``AsyncConnection.run_sync``)
that is already inside a transaction, so an upgrade commits or rolls back as a whole.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Our own name, so dspex can share a PostgreSQL schema with an application's own Alembic history.
VERSION_TABLE = "dspex_schema_version"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at these migrations (and at ``connection`` when given).

    Useful for ``alembic`` commands such as ``revision`` run from Python.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the connected database is at (``None`` for an empty database)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Bring the connected database up to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(connection), revision)
