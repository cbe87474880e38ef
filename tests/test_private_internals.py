"""dspex uses other libraries through their public APIs only: it imports none of their private
modules and writes none of pydantic's dunder internals (read from the source; no code is run)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import dspex
from dspex.actions.batch import ItemResult, _item
from dspex.actions.models import ErrorInfo

SRC = Path(dspex.__file__).resolve().parent


def _modules() -> Iterator[tuple[str, ast.AST]]:
    for path in sorted(SRC.rglob("*.py")):
        yield str(path.relative_to(SRC)), ast.parse(path.read_text(encoding="utf-8"))


def _private(module: str) -> bool:
    parts = module.split(".")
    return parts[0] != "dspex" and any(p.startswith("_") and not p.startswith("__") for p in parts)


def _private_imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _private(node.module):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if _private(alias.name))
        elif isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            named = isinstance(node.func, ast.Attribute | ast.Name) and (
                getattr(node.func, "attr", None) == "import_module"
                or getattr(node.func, "id", None) in {"import_module", "__import__"}
            )
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            if named and literal and _private(first.value):
                yield first.value


def test_no_module_imports_another_librarys_private_module() -> None:
    found = [f"{name}: {module}" for name, tree in _modules() for module in _private_imports(tree)]
    assert found == []


def test_no_module_names_a_pydantic_dunder_internal() -> None:
    found = [
        f"{name}:{node.lineno}: {node.value}"
        for name, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("__pydantic_")
    ]
    assert found == []


def test_the_scan_finds_a_private_import_of_each_kind() -> None:
    tree = ast.parse(
        "from re._parser import parse\nimport re._parser\nimportlib.import_module('re._parser')\n"
        "from dspex._strategies import x\nfrom pydantic import BaseModel\n"
    )
    assert list(_private_imports(tree)) == ["re._parser", "re._parser", "re._parser"]


def test_a_batch_item_is_the_model_that_model_construct_makes_of_its_values() -> None:
    failed = _item(3, "exec-1", "failed", None, "program.failed", None, 12.5)
    error = ErrorInfo.model_construct(
        _fields_set={"code", "message"}, code="program.failed", message="", module=None
    )
    expected = ItemResult.model_construct(
        _fields_set=set(ItemResult.model_fields),
        index=3,
        execution_id="exec-1",
        status="failed",
        outputs=None,
        error=error,
        duration_ms=12.5,
    )
    assert failed == expected
    assert failed.model_fields_set == set(ItemResult.model_fields)
    assert failed.error is not None
    assert failed.error.model_fields_set == {"code", "message"}
    assert failed.model_dump() == expected.model_dump()

    done = _item(0, "exec-2", "completed", {"answer": [1, {"a": None}]}, None, None, None)
    assert done.outputs == {"answer": [1, {"a": None}]}
    assert done.error is None
    assert done.to_line() == {
        "index": 0,
        "status": "completed",
        "outputs": {"answer": [1, {"a": None}]},
        "execution_id": "exec-2",
    }
