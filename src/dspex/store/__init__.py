"""Persistence: the :class:`Store` interface, its in-memory twin and the SQL implementation.

:class:`Store` is the union of eight narrow interfaces, one per noun (:class:`ProgramStore`,
:class:`ExecutionStore`, :class:`BatchStore`, :class:`BreakerStore`, :class:`CacheStore`,
:class:`EvaluationStore`, :class:`MaintenanceStore`, :class:`OptimizationStore`); code that needs
one noun only can ask for that one.

This is the only package that imports SQLAlchemy, and it does so lazily: importing
``dspex.store`` is cheap, and only opening a SQL store loads the database stack.

Example:
    >>> import asyncio
    >>> async def main() -> int:
    ...     async with open_store("memory://") as store:
    ...         program = await store.put_program("qa", {"modules": []}, "hash-1")
    ...         return program.version
    >>> asyncio.run(main())
    1
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.records import utc_now
from dspex.store.base import (
    BatchStore,
    BreakerStore,
    CacheStore,
    Clock,
    EvaluationStore,
    ExecutionStore,
    MaintenanceStore,
    OptimizationStore,
    ProgramStore,
    Store,
)
from dspex.store.memory import MemoryStore

if TYPE_CHECKING:
    from dspex.store.sql import SqlStore

__all__ = [
    "DEFAULT_DATABASE_PATH",
    "MEMORY_URL",
    "BatchStore",
    "BreakerStore",
    "CacheStore",
    "EvaluationStore",
    "ExecutionStore",
    "MaintenanceStore",
    "MemoryStore",
    "OptimizationStore",
    "ProgramStore",
    "SqlStore",
    "Store",
    "open_store",
]

DEFAULT_DATABASE_PATH = Path(".dspex") / "dspex.db"
MEMORY_URL = "memory://"


def default_url() -> str:
    """The embedded SQLite database in the working directory (``./.dspex/dspex.db``)."""
    return f"sqlite:///{DEFAULT_DATABASE_PATH.as_posix()}"


def open_store(url: str | None = None, *, clock: Clock = utc_now, **options: Any) -> Store:
    """The store for a database URL (not yet initialized: use ``async with`` or ``initialize``).

    Args:
        url: ``None`` for the embedded SQLite database at ``./.dspex/dspex.db``;
            ``"memory://"`` for the in-memory store; ``sqlite:///PATH`` or
            ``postgresql://…`` for a SQL store.
        clock: the current UTC time (inject one in tests).
        **options: passed to :class:`~dspex.store.sql.SqlStore` (``auto_upgrade``, ``schema``,
            ``busy_timeout_ms``, ``pool_size``).

    Raises:
        ConfigError: the URL is not one dspex can use.
    """
    if url == MEMORY_URL:
        return MemoryStore(clock=clock)
    from dspex.store.sql import SqlStore

    return SqlStore(url or default_url(), clock=clock, **options)


def __getattr__(name: str) -> Any:
    if name == "SqlStore":
        from dspex.store.sql import SqlStore

        return SqlStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
