"""API keys: bearer tokens configured as sha256 hashes, with ``read`` and ``admin`` scopes.

A presented key is hashed and compared with :func:`hmac.compare_digest` against every
configured hash, all of them every time, so the time taken does not depend on which key (if
any) matched. Keys themselves are never stored, logged or returned.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dspex.config import ApiKeyConfig

__all__ = ["ApiKey", "KeyRing", "Scope", "hash_key"]

Scope = Literal["read", "admin"]

_RANK: dict[str, int] = {"read": 0, "admin": 1}


def hash_key(key: str) -> str:
    """The configuration form of an API key: ``sha256:<64 hex digits>``.

    Example:
        >>> hash_key("s3cret")[:15]
        'sha256:1ec1c26b'
    """
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its digest, scope and a name for people (never the key)."""

    digest: bytes
    scope: Scope
    name: str

    def allows(self, needed: Scope) -> bool:
        """Whether this key's scope covers ``needed`` (``admin`` covers ``read``)."""
        return _RANK[self.scope] >= _RANK[needed]


class KeyRing:
    """The configured API keys.

    Args:
        keys: :class:`~dspex.config.ApiKeyConfig` entries (or mappings of the same shape).
    """

    def __init__(self, keys: Iterable[ApiKeyConfig | Mapping[str, Any]] = ()) -> None:
        parsed = [
            k if isinstance(k, ApiKeyConfig) else ApiKeyConfig.model_validate(k) for k in keys
        ]
        self._keys = tuple(
            ApiKey(
                digest=bytes.fromhex(k.hash.removeprefix("sha256:")),
                scope=k.scope,
                name=k.name or f"key-{number + 1}",
            )
            for number, k in enumerate(parsed)
        )

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (without keys every request is allowed)."""
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The configured key matching ``presented``, or ``None``.

        Every configured digest is compared, in constant time, whatever matches.
        """
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        found: ApiKey | None = None
        for key in self._keys:
            equal = hmac.compare_digest(digest, key.digest)
            found = key if equal and found is None else found
        return found
