"""The lock file pins everything the project installs; this environment was installed from it."""

from __future__ import annotations

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
