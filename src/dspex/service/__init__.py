"""The HTTP service: the whole runtime over HTTP, secured and observable (``dspex serve``).

Built only on the public API. Importing it imports FastAPI; the CLI imports it lazily.

Example:
    >>> from dspex.service import create_app, hash_key  # doctest: +SKIP
    >>> app = create_app("sqlite:///dspex.db", api_keys=[{"hash": hash_key("k"), "scope": "admin"}])
"""

from __future__ import annotations

from dspex.service.app import create_app
from dspex.service.auth import hash_key

__all__ = ["create_app", "hash_key"]
