"""The lock file pins everything the project installs; this environment was installed from it."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"lock line is not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs.extend(extra)
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


def test_every_declared_dependency_is_pinned_in_the_lock() -> None:
    missing = sorted(_declared() - _locked().keys())
    assert missing == [], f"run `make lock`: not in {LOCK.name}: {missing}"


def test_the_lock_pins_the_cpu_build_of_torch_and_no_cuda_packages() -> None:
    pins = _locked()
    assert pins["torch"].startswith("2.13.0")
    assert not [name for name in pins if name.startswith("nvidia-")]


def test_the_installed_versions_are_the_locked_ones() -> None:
    drift = {}
    for name, version in _locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        if installed != version:
            drift[name] = (version, installed)
    assert drift == {}, f"installed versions differ from the lock (locked, installed): {drift}"


# Modules a declared distribution installs as part of its own API: importing them directly needs
# no declaration of their own (pydantic pins its core, FastAPI is built on Starlette and documents
# its classes, aiohttp hands out yarl URLs).
_PART_OF = {"pydantic_core": "pydantic", "starlette": "fastapi", "yarl": "aiohttp"}


def _imported_top_level_modules() -> set[str]:
    modules: set[str] = set()
    for file in (ROOT / "src" / "dspex").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return modules - set(sys.stdlib_module_names) - {"dspex", "__future__"}


def test_every_third_party_module_dspex_imports_is_declared_in_core_or_an_extra() -> None:
    declared = _declared()
    distributions = metadata.packages_distributions()
    undeclared = []
    for module in sorted(_imported_top_level_modules()):
        # a module of an extra this environment did not install is known by its own name only
        owners = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if module in _PART_OF:
            owners = {canonicalize_name(_PART_OF[module])}
        if not owners & declared:
            undeclared.append(module)
    assert undeclared == [], f"imported but declared by no dependency or extra: {undeclared}"
