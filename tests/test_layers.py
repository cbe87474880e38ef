"""The layers of DESIGN §2, enforced by reading every import in ``src/dspex`` (no code is run).

Imports point down: ``cli/`` and ``service/`` use the public API only, nothing below ``actions/``
reaches up to the actions, the runtime or the front ends, ``signatures/`` does no I/O, and only
``store/`` talks to the database libraries. Imports inside functions and under
``if TYPE_CHECKING`` count like any other: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import dspex

SRC = Path(dspex.__file__).resolve().parent

DATABASE_LIBRARIES = frozenset({"sqlalchemy", "alembic", "aiosqlite", "asyncpg", "psycopg"})

# What the front ends may import from dspex: the facade, the shared bottom modules, the pure
# renderers, the bundled example data and (per package) their own modules.
PUBLIC_MODULES = ("dspex", "dspex.errors", "dspex.config", "dspex.reports", "dspex.examples")
FRONT_ENDS = {
    "cli": ("dspex.cli", "dspex.service"),  # `dspex serve` starts the service
    "service": ("dspex.service",),
}

UPPER_LAYERS = frozenset({"actions", "runtime", "cli", "service"})
# Everything at or above actions/, plus the entry points and the facade itself.
NOT_BELOW_ACTIONS = frozenset({*UPPER_LAYERS, "__init__", "__main__"})

SIGNATURES_MAY_IMPORT = frozenset({"signatures", "errors"})
IO_LIBRARIES = DATABASE_LIBRARIES | {"httpx", "litellm", "requests", "aiohttp"}

REPORTS_MAY_IMPORT = frozenset({"reports", "errors", "_critical_path"})  # the one run-path rule

# Known upward imports in modules this test does not own, each with why it is tolerated. Every
# entry must still be needed (see test_every_tolerated_import_is_still_there), so the list only
# shrinks.
TOLERATED: dict[tuple[str, str], str] = {
    ("telemetry.py", "dspex.actions.models"): "type-only: the hook is handed the result model",
    ("batch/_worker.py", "dspex.runtime"): "a batch worker process opens its own Runtime",
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to src/dspex, with forward slashes
    line: int
    module: str  # the absolute module imported (``from a import b`` gives ``a``)

    @property
    def package(self) -> str:
        """The file's top-level package (``engine``) or module (``runtime``) inside dspex."""
        first = self.file.split("/")[0]
        return first.removesuffix(".py")

    @property
    def target(self) -> str | None:
        """The dspex package or module it reaches (``store``), ``""`` for ``dspex`` itself."""
        parts = self.module.split(".")
        if parts[0] != "dspex":
            return None
        return parts[1] if len(parts) > 1 else ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def _resolve(file: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = file.relative_to(SRC.parent).with_suffix("").parts
    base = package[: len(package) - node.level]
    return ".".join((*base, node.module)) if node.module else ".".join(base)


def _imports() -> list[Import]:
    found: list[Import] = []
    for file in sorted(SRC.rglob("*.py")):
        rel = file.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.Import):
                found.extend(Import(rel, node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.append(Import(rel, node.lineno, _resolve(file, node)))
    return found


IMPORTS = _imports()


def _is_under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _tolerated(imp: Import) -> bool:
    return (imp.file, imp.module) in TOLERATED


def test_the_scan_sees_the_whole_package() -> None:
    files = {imp.file for imp in IMPORTS}
    assert {"runtime.py", "cli/graph.py", "store/sql.py", "engine/kinds.py"} <= files


def test_only_the_store_imports_database_libraries() -> None:
    offenders = [
        str(imp)
        for imp in IMPORTS
        if imp.module.split(".")[0] in DATABASE_LIBRARIES and imp.package != "store"
    ]
    assert offenders == []


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_front_ends_import_only_the_public_api(front_end: str) -> None:
    allowed = (*PUBLIC_MODULES, *FRONT_ENDS[front_end])
    offenders = [
        str(imp)
        for imp in IMPORTS
        if imp.package == front_end
        and imp.target is not None
        and not _is_under(imp.module, allowed)
    ]
    assert offenders == []


def test_nothing_below_actions_imports_actions_runtime_or_front_ends() -> None:
    offenders = [
        str(imp)
        for imp in IMPORTS
        if imp.package not in NOT_BELOW_ACTIONS
        and imp.target in UPPER_LAYERS
        and not _tolerated(imp)
    ]
    assert offenders == []


def test_signatures_import_no_io_layer() -> None:
    offenders = [
        str(imp)
        for imp in IMPORTS
        if imp.package == "signatures"
        and (
            (imp.target is not None and imp.target not in SIGNATURES_MAY_IMPORT)
            or imp.module.split(".")[0] in IO_LIBRARIES
        )
    ]
    assert offenders == []


def test_reports_are_pure_renderers_over_plain_views() -> None:
    offenders = [
        str(imp)
        for imp in IMPORTS
        if imp.package == "reports"
        and imp.target is not None
        and imp.target not in REPORTS_MAY_IMPORT
    ]
    assert offenders == []


def test_every_tolerated_import_is_still_there() -> None:
    present = {(imp.file, imp.module) for imp in IMPORTS}
    assert set(TOLERATED) <= present


def test_relative_imports_resolve_against_their_package() -> None:
    node = ast.parse("from ..errors import DspexError").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _resolve(SRC / "engine" / "kinds.py", node) == "dspex.errors"
