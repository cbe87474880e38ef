"""The Store is the union of eight narrow interfaces, each implemented whole in its own modules."""

from __future__ import annotations

import abc
import itertools

import pytest

from dspex.store import (
    BatchStore,
    BreakerStore,
    CacheStore,
    EvaluationStore,
    ExecutionStore,
    MaintenanceStore,
    MemoryStore,
    OptimizationStore,
    ProgramStore,
    SqlStore,
    Store,
)
from dspex.store._memory_batches import MemoryBatches
from dspex.store._memory_breakers import MemoryBreakers
from dspex.store._memory_cache import MemoryCache
from dspex.store._memory_evaluations import MemoryEvaluations
from dspex.store._memory_executions import MemoryExecutions
from dspex.store._memory_maintenance import MemoryMaintenance
from dspex.store._memory_optimizations import MemoryOptimizations
from dspex.store._memory_programs import MemoryPrograms
from dspex.store._sql_batches import SqlBatches
from dspex.store._sql_breakers import SqlBreakers
from dspex.store._sql_cache import SqlCache
from dspex.store._sql_evaluations import SqlEvaluations
from dspex.store._sql_executions import SqlExecutions
from dspex.store._sql_maintenance import SqlMaintenance
from dspex.store._sql_optimizations import SqlOptimizations
from dspex.store._sql_programs import SqlPrograms

NOUNS: dict[type[abc.ABC], tuple[type, type]] = {
    ProgramStore: (MemoryPrograms, SqlPrograms),
    ExecutionStore: (MemoryExecutions, SqlExecutions),
    BatchStore: (MemoryBatches, SqlBatches),
    BreakerStore: (MemoryBreakers, SqlBreakers),
    CacheStore: (MemoryCache, SqlCache),
    EvaluationStore: (MemoryEvaluations, SqlEvaluations),
    MaintenanceStore: (MemoryMaintenance, SqlMaintenance),
    OptimizationStore: (MemoryOptimizations, SqlOptimizations),
}
# What belongs to the store as a whole: its lifecycle, and id lookup across two nouns.
OWN = {"url", "initialize", "close", "match_ids"}


def test_the_store_is_exactly_the_union_of_the_nouns_and_its_lifecycle() -> None:
    methods = [set(noun.__abstractmethods__) for noun in NOUNS]
    assert set(Store.__abstractmethods__) == set().union(*methods) | OWN
    for first, second in itertools.combinations(methods, 2):
        assert not first & second  # no method belongs to two nouns


@pytest.mark.parametrize("noun", list(NOUNS), ids=lambda noun: noun.__name__)
def test_each_noun_is_implemented_whole_by_its_memory_and_sql_modules(noun: type) -> None:
    for implementation in NOUNS[noun]:
        assert issubclass(implementation, noun)
        assert not implementation.__abstractmethods__, implementation


@pytest.mark.parametrize("store", [MemoryStore, SqlStore])
def test_both_stores_are_every_noun(store: type[Store]) -> None:
    assert not store.__abstractmethods__
    assert all(issubclass(store, noun) for noun in NOUNS)
