"""Database maintenance: migrate the schema of the configured database."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from dspex.config import load_settings
from dspex.errors import ConfigError

__all__ = ["DatabaseStatus", "upgrade_database"]


class DatabaseStatus(BaseModel):
    """Where the schema was and where it is now."""

    model_config = ConfigDict(frozen=True)

    database_url: str
    previous_revision: str | None
    revision: str | None
    upgraded: bool


def hide_password(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to print or return)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, colon, _password = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


async def upgrade_database(
    database_url: str | None = None, *, config: str | Path | None = None
) -> DatabaseStatus:
    """Migrate the database to the latest schema, creating the tables if needed.

    SQLite databases also migrate themselves when a runtime opens them; a PostgreSQL database is
    migrated only by this call (``dspex db upgrade``), so deployments control when it happens.
    Concurrent upgrades are safe: PostgreSQL takes an advisory lock, SQLite a write lock.

    Args:
        database_url: the database; default from ``dspex.toml``/``DSPEX_DATABASE_URL``, else the
            embedded SQLite file.
        config: an explicit configuration file.

    Raises:
        StorageError: the database is unreachable or the migration failed.
        ConfigError: the URL or configuration is unusable.
    """
    from dspex.store import MEMORY_URL
    from dspex.store.sql import SqlStore

    url = database_url or load_settings(config).resolved_database_url()
    if url == MEMORY_URL:
        raise ConfigError("the in-memory store has no schema to migrate")
    store = SqlStore(url, auto_upgrade=False)
    try:
        before = await store.schema_revision()
        await store.upgrade()
        after = await store.schema_revision()
    finally:
        await store.close()
    return DatabaseStatus(
        database_url=hide_password(url),
        previous_revision=before,
        revision=after,
        upgraded=before != after,
    )
