"""The layers of DESIGN §2, enforced by reading every import in ``src/dspex`` (no code is run).

One table, :data:`ALLOWED`, says which parts of dspex each part may import; every import of every
module is checked against it, and the table itself must be an order (no two parts may import each
other), so imports point down. A second check finds import cycles between modules.

What counts:

- Imports inside functions count like any other: a lazy import is still a dependency, and it runs.
- Imports under ``if TYPE_CHECKING:`` count for the layers (naming a type from a layer above is
  depending on it) but not for cycles (they never run). The one upward type-only reference the
  code needs is listed in :data:`TYPE_ONLY`.
- ``from dspex.a import b`` depends on module ``dspex.a.b`` when there is one, else on ``dspex.a``.
  Importing ``dspex.a.b`` also runs the ``__init__`` of ``dspex.a``; like import-linter and grimp,
  that implicit parent import is not drawn.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

import dspex

SRC = Path(dspex.__file__).resolve().parent

# The parts of dspex ("units"): a package (``engine`` is everything under dspex/engine/), a
# top-level module (``runtime``), ``__init__`` for the facade ``dspex`` itself, or a single module
# placed apart from its package (``batch._worker``). A module belongs to the longest unit that
# names it or a package above it.
#
# unit -> the units it may import (its own modules always). Listed once, top to bottom.
ALLOWED: dict[str, frozenset[str]] = {
    # Entry points and front ends: the public API only (the facade, the errors, the settings, the
    # pure report renderers, the bundled example data); `dspex serve` starts the service.
    "__main__": frozenset({"cli"}),
    "cli": frozenset({"__init__", "errors", "config", "reports", "examples", "service"}),
    "service": frozenset({"__init__", "errors", "config", "reports", "examples"}),
    # A batch worker process's main, run by name by batch/_server.py and imported by nobody: it
    # opens its own Runtime, so it stands above the runtime, not inside batch/.
    "batch._worker": frozenset({"runtime", "batch", "config", "store", "records", "errors"}),
    # A batch's Ray actor, made an actor by name by batch/ray_actors.py: it opens its runtime
    # through the worker process's helpers and keeps it across batches, so it stands with them.
    "batch._ray_actor": frozenset({"batch._worker", "batch", "runtime"}),
    # The facade re-exports (lazily) from everything below the front ends.
    "__init__": frozenset(
        {
            "runtime",
            "actions",
            "batch",
            "engine",
            "backends",
            "signatures",
            "records",
            "errors",
            "tuning",
            "metrics",
            "_strategies",
        }
    ),
    # The runtime object: opens the store, builds backends and telemetry, calls the actions.
    "runtime": frozenset(
        {
            "actions",
            "telemetry",
            "batch",
            "engine",
            "backends",
            "resilience",
            "store",
            "config",
            "capture",
            "records",
            "errors",
        }
    ),
    # Telemetry is a hooks object the runtime builds: it is handed the engine's steps and the
    # actions' ExecutionResult, so it sits just above actions/ (types only, no runtime import).
    "telemetry": frozenset({"actions", "engine", "backends", "records", "errors"}),
    "actions": frozenset(
        {
            "batch",
            "engine",
            "backends",
            "resilience",
            "signatures",
            "store",
            "config",
            "records",
            "errors",
            "metrics",
            "_critical_path",
            "_percentile",
            "_periodic",
            "_strategies",
        }
    ),
    "batch": frozenset(
        {
            "engine",
            "resilience",
            "signatures",
            "store",
            "records",
            "errors",
            "tuning",
            "_percentile",
            "_periodic",
            "_strategies",
        }
    ),
    "engine": frozenset(
        {
            "backends",
            "resilience",
            "signatures",
            "hooks",
            "capture",
            "records",
            "errors",
            "_imports",
            "_critical_path",
            "_percentile",
            "_slots",
            "_strategies",
        }
    ),
    # The settings hold resilience's RetryPolicy (one policy type for program specs, dspex.toml,
    # coordinators and batches), so config.py stands above resilience/ instead of on the ground
    # floor where DESIGN draws it; only the runtime, actions, the batch worker and the front ends
    # read settings.
    "config": frozenset({"resilience", "errors", "_strategies"}),
    # A coordinator is a Backend made of backends, so resilience/ stands above backends/ (DESIGN
    # draws them side by side); its breaker state store is typed by store/'s interface.
    "resilience": frozenset({"backends", "store", "records", "errors", "_strategies"}),
    "backends": frozenset({"signatures", "records", "errors", "_slots"}),
    # Pure renderers over plain views and the runtime's own step model (StepInfo, one shape of a
    # recorded step); the one run-path rule is shared with the engine.
    "reports": frozenset({"actions", "_critical_path", "errors"}),
    "signatures": frozenset({"errors"}),
    "store": frozenset({"records", "errors"}),
    # The ground floor. records.py holds the record types and statuses the store, backends and
    # engine share; hooks.py is the lifecycle-hooks mechanism and names no engine type.
    "records": frozenset({"_slots", "errors"}),
    "hooks": frozenset(),
    # What traces keep of a run's data (redaction, size limits): the engine applies it once.
    "capture": frozenset(),
    # Metrics (DSPy's signature; built-ins and allow-listed references): evaluate and optimize.
    "metrics": frozenset({"errors", "_imports"}),
    "errors": frozenset(),
    "examples": frozenset(),
    "tuning": frozenset(),  # process-wide interpreter tuning, called by process owners only
    "_strategies": frozenset(),
    "_critical_path": frozenset(),
    "_percentile": frozenset(),
    # a repeated store write (heartbeats, lease renewals) whose stop never cuts one in half
    "_periodic": frozenset(),
    "_slots": frozenset(),
    "_imports": frozenset(),  # the import allow-list rule, shared by the engine and metrics
}

# Upward references allowed only under ``if TYPE_CHECKING:`` (annotations), never at run time:
# unit -> units it may name for types only.
TYPE_ONLY: dict[str, frozenset[str]] = {
    # ExecuteContext.telemetry is annotated with the Telemetry the runtime builds and passes down.
    "actions": frozenset({"telemetry"}),
}

# Import cycles between modules that are known and not yet broken, each with why; the list only
# shrinks (see test_every_known_cycle_is_still_there). A key is the exact set of modules in the
# cycle (a strongly connected component of the runtime import graph).
KNOWN_CYCLES: dict[frozenset[str], str] = {}

DATABASE_LIBRARIES = frozenset({"sqlalchemy", "alembic", "aiosqlite", "asyncpg", "psycopg"})
IO_LIBRARIES = DATABASE_LIBRARIES | {"httpx", "litellm", "requests", "aiohttp"}


@dataclass(frozen=True)
class Import:
    file: str  # relative to src/dspex, with forward slashes
    line: int
    module: str  # the absolute module imported (``from a import b`` gives ``a``)
    type_only: bool  # under ``if TYPE_CHECKING:``
    names: tuple[str, ...] = ()  # what ``from module import ...`` takes

    @property
    def importer(self) -> str:
        """The importing module's dotted name (``dspex.engine`` for engine/__init__.py)."""
        return _module_of(Path(self.file))

    def __str__(self) -> str:
        kind = " (type-only)" if self.type_only else ""
        return f"{self.file}:{self.line} imports {self.module}{kind}"


def _module_of(rel: Path) -> str:
    parts = ("dspex", *rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = frozenset(_module_of(f.relative_to(SRC)) for f in SRC.rglob("*.py"))


def _resolve(file: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = file.relative_to(SRC.parent).with_suffix("").parts
    base = package[: len(package) - node.level]
    return ".".join((*base, node.module)) if node.module else ".".join(base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(file: Path, rel: str, node: ast.AST, type_only: bool) -> Iterator[Import]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            yield from (Import(rel, child.lineno, a.name, type_only) for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            names = tuple(a.name for a in child.names)
            yield Import(rel, child.lineno, _resolve(file, child), type_only, names)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(file, rel, ast.Module(body=[stmt], type_ignores=[]), True)
            for stmt in child.orelse:
                yield from _walk(file, rel, ast.Module(body=[stmt], type_ignores=[]), type_only)
        else:
            yield from _walk(file, rel, child, type_only)


def _imports() -> list[Import]:
    found: list[Import] = []
    for file in sorted(SRC.rglob("*.py")):
        rel = file.relative_to(SRC).as_posix()
        found.extend(_walk(file, rel, ast.parse(file.read_text(encoding="utf-8"), rel), False))
    return found


IMPORTS = _imports()


def unit_of(module: str) -> str | None:
    """The unit of ALLOWED a dspex module belongs to; ``None`` outside dspex."""
    if module == "dspex":
        return "__init__"
    if not module.startswith("dspex."):
        return None
    rel = module.removeprefix("dspex.")
    owners = [u for u in ALLOWED if rel == u or rel.startswith(u + ".")]
    return max(owners, key=len) if owners else rel


def runtime_graph(
    imports: list[Import] = IMPORTS, modules: frozenset[str] = MODULES
) -> dict[str, dict[str, Import]]:
    """module -> {module it imports when it runs: the first such import}; TYPE_CHECKING left out."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for imp in imports:
        if imp.type_only:
            continue
        # ``from a import b`` reaches module ``a.b`` when there is one, else a name in ``a``.
        submodules = {f"{imp.module}.{name}" for name in imp.names} & modules
        targets = set(submodules)
        if not imp.names or len(submodules) < len(imp.names):
            targets.add(imp.module)
        for target in sorted(targets):
            if target in modules and target != imp.importer:
                graph[imp.importer].setdefault(target, imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def describe_cycle(graph: dict[str, dict[str, Import]], component: frozenset[str]) -> str:
    """One concrete loop through ``component``, each step with the import that makes it."""
    start = min(component)
    paths: dict[str, list[str]] = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node]):
            if target == start:
                loop = [*paths[node], start]
                steps = [
                    f"{graph[a][b].file}:{graph[a][b].line} imports {b}" for a, b in pairwise(loop)
                ]
                return " -> ".join(loop) + "  [" + "; ".join(steps) + "]"
            if target in component and target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"no loop through {sorted(component)}")  # pragma: no cover


# ---------------------------------------------------------------------------------- the scan


def test_the_scan_sees_the_whole_package() -> None:
    files = {imp.file for imp in IMPORTS}
    assert {"runtime.py", "cli/graph.py", "store/sql.py", "engine/kinds.py"} <= files


def test_the_scan_marks_type_checking_and_function_local_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from dspex.engine import Program\n"
        "else:\n"
        "    import dspex.records\n"
        "def f():\n"
        "    from dspex.store import open_store\n"
    )
    found = list(_walk(SRC / "x.py", "x.py", ast.parse(source), False))
    assert [(i.module, i.type_only) for i in found] == [
        ("typing", False),
        ("dspex.engine", True),
        ("dspex.records", False),
        ("dspex.store", False),
    ]


def test_relative_imports_resolve_against_their_package() -> None:
    node = ast.parse("from ..errors import DspexError").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _resolve(SRC / "engine" / "kinds.py", node) == "dspex.errors"


# ---------------------------------------------------------------------------------- the table


def test_every_module_has_a_place_in_the_table() -> None:
    assert sorted({m for m in MODULES if unit_of(m) not in ALLOWED}) == []


def test_the_table_names_only_its_own_units() -> None:
    named = {u for allowed in (*ALLOWED.values(), *TYPE_ONLY.values()) for u in allowed}
    assert sorted(named - set(ALLOWED)) == []
    assert sorted(set(TYPE_ONLY) - set(ALLOWED)) == []


def test_the_table_is_an_order_with_no_unit_importing_back() -> None:
    sorter = graphlib.TopologicalSorter(ALLOWED)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:  # pragma: no cover - the message names the cycle
        pytest.fail(f"the allowed-imports table has a cycle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_each_unit_imports_only_what_the_table_allows(unit: str) -> None:
    offenders = []
    for imp in IMPORTS:
        target = unit_of(imp.module)
        if unit_of(imp.importer) != unit or target is None or target == unit:
            continue
        if target in ALLOWED[unit]:
            continue
        if imp.type_only and target in TYPE_ONLY.get(unit, frozenset()):
            continue
        offenders.append(str(imp))
    assert offenders == []


def test_the_facade_loads_its_lazy_names_only_from_units_it_may_import() -> None:
    # dspex/__init__.py imports these by name on first access (importlib), so no ast import shows
    sources = {unit_of(module) for module in dspex._LAZY.values()}
    assert sorted(u for u in sources if u not in ALLOWED["__init__"]) == []


def test_every_type_only_allowance_is_still_used() -> None:
    used = {
        (unit_of(imp.importer), unit_of(imp.module))
        for imp in IMPORTS
        if imp.type_only and unit_of(imp.module) not in ALLOWED.get(unit_of(imp.importer) or "", ())
    }
    wanted = {(unit, target) for unit, targets in TYPE_ONLY.items() for target in targets}
    assert wanted <= used


def test_the_hooks_module_names_no_engine_type() -> None:
    assert [str(i) for i in IMPORTS if i.file == "hooks.py" and unit_of(i.module)] == []


# ---------------------------------------------------------------------------------- other rules


def test_only_the_store_imports_database_libraries() -> None:
    offenders = [
        str(imp)
        for imp in IMPORTS
        if imp.module.split(".")[0] in DATABASE_LIBRARIES and unit_of(imp.importer) != "store"
    ]
    assert offenders == []


def test_signatures_import_no_io_library() -> None:
    offenders = [
        str(imp)
        for imp in IMPORTS
        if unit_of(imp.importer) == "signatures" and imp.module.split(".")[0] in IO_LIBRARIES
    ]
    assert offenders == []


# ---------------------------------------------------------------------------------- cycles


def test_no_module_imports_itself_back_at_run_time() -> None:
    graph = runtime_graph()
    cycles = [
        describe_cycle(graph, component)
        for component in strongly_connected(graph)
        if component not in KNOWN_CYCLES
    ]
    assert cycles == []


def test_every_known_cycle_is_still_there() -> None:
    """A cycle that was broken must leave KNOWN_CYCLES, so the list only shrinks."""
    components = strongly_connected(runtime_graph())
    assert sorted(sorted(c) for c in KNOWN_CYCLES if c not in components) == []


def test_the_cycle_finder_names_a_loop_with_its_imports() -> None:
    def imp(file: str, module: str) -> Import:
        return Import(file, 1, module, False)

    graph = {
        "dspex.a": {"dspex.b": imp("a.py", "dspex.b")},
        "dspex.b": {"dspex.c": imp("b.py", "dspex.c")},
        "dspex.c": {"dspex.a": imp("c.py", "dspex.a"), "dspex.d": imp("c.py", "dspex.d")},
        "dspex.d": {},
    }
    [component] = strongly_connected(graph)
    assert component == {"dspex.a", "dspex.b", "dspex.c"}
    assert describe_cycle(graph, component).startswith("dspex.a -> dspex.b -> dspex.c -> dspex.a")


def test_a_loop_closed_only_by_a_type_checking_import_is_not_a_cycle() -> None:
    imports = [
        Import("a.py", 1, "dspex", False, ("b",)),  # from dspex import b
        Import("b.py", 1, "dspex.a", True),  # under TYPE_CHECKING
        Import("b.py", 2, "dspex.c", False),
        Import("c.py", 9, "dspex.b", False),  # in a function
    ]
    graph = runtime_graph(imports, frozenset({"dspex.a", "dspex.b", "dspex.c"}))
    assert strongly_connected(graph) == [frozenset({"dspex.b", "dspex.c"})]
