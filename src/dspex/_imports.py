"""The import allow-list: which ``pkg.mod:name`` references stored text may import.

A stored string never imports code on its own: ``python``/``dspy`` modules of a program and
user metrics (``--metric pkg.mod:function``) are checked here, against the ``allowed_imports``
prefixes of ``dspex.toml``, before anything is imported. One rule, used by the engine and by
:mod:`dspex.metrics`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["allow_hint", "import_allowed", "is_reference"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_reference(ref: str) -> bool:
    """Whether ``ref`` has the form ``pkg.mod:name`` (identifiers only)."""
    module, sep, attr = ref.partition(":")
    return bool(sep) and all(_IDENTIFIER.match(p) for p in (*module.split("."), attr))


def import_allowed(ref: str, prefixes: Sequence[str]) -> bool:
    """Whether ``pkg.mod:name`` is under one of ``prefixes``.

    A prefix matches on dotted boundaries: ``"myproj"`` allows ``myproj:f`` and ``myproj.x:f`` but
    not ``myproject.x:f``. A prefix containing ``:`` allows exactly that one reference.
    """
    module = ref.partition(":")[0]
    for prefix in prefixes:
        if ":" in prefix:
            if ref == prefix:
                return True
        elif module == prefix or module.startswith(prefix + "."):
            return True
    return False


def allow_hint(ref: str) -> str:
    """The ``allowed_imports`` entry that permits ``ref`` (its module path), as a sentence."""
    module = ref.partition(":")[0]
    return f'add "{module}" to allowed_imports in dspex.toml (or DSPEX_ALLOWED_IMPORTS)'
