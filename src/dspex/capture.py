"""What a traced run keeps of its data: redacted, size-limited copies of inputs, outputs and LM
exchanges.

Every trace that leaves a run (a step's recorded inputs and outputs, an LM attempt's messages and
raw response, a span's attributes) goes through one :class:`Capture`, built from the ``[capture]``
settings (``Capture(**settings.capture.model_dump())``, see
:class:`dspex.config.CaptureSettings`). It does two things, in one walk of the value:

- **redaction**: a field whose name is in the run's redacted names (the fields its signatures
  mark ``sensitive: true`` and the names in ``[capture] redact``) becomes ``"[redacted]"``, at any
  depth; the text of each value redacted so is remembered, and cut out of the LM messages and
  responses of the same step (a prompt repeats its inputs);
- **size limits**: a string longer than ``max_chars`` is cut to it and marked
  ``…[truncated N chars]``; a list or mapping keeps its first ``max_items`` entries, the rest
  counted in a last marker entry (a list) or key ``"…"`` (a mapping).

Values that are not JSON (a pydantic model, a DSPy object) are recorded as their JSON form when
they have one (``model_dump``), else as their ``repr``, so a trace is always storable.

Example:
    >>> capture = Capture(redact=("token",), max_chars=20)
    >>> secrets: list[str] = []
    >>> capture.value({"q": "hi", "token": "s3cr3t", "long": "x" * 25}, capture.redact, secrets)
    {'q': 'hi', 'token': '[redacted]', 'long': 'xxxxxxxxxxxxxxxxxxxx…[truncated 5 chars]'}
    >>> capture.text("it is s3cr3t", secrets)
    'it is [redacted]'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["REDACTED", "Capture"]

REDACTED = "[redacted]"
"""What a redacted value is recorded as."""

_PLAIN = (int, float, bool, type(None))
_PLAIN_TYPES = frozenset(_PLAIN)


class Capture:
    """How runs record their data: what is kept, what is redacted, how much of it.

    Args:
        inputs_outputs: record each step's inputs and outputs.
        messages: record each LM attempt's messages and raw response.
        redact: field names always redacted (besides each signature's ``sensitive`` fields).
        max_chars: longest string kept as it is.
        max_items: most entries kept of a list or mapping.
    """

    __slots__ = ("inputs_outputs", "max_chars", "max_items", "messages", "redact")

    def __init__(
        self,
        *,
        inputs_outputs: bool = True,
        messages: bool = False,
        redact: Iterable[str] = (),
        max_chars: int = 8192,
        max_items: int = 256,
    ) -> None:
        self.inputs_outputs = inputs_outputs
        self.messages = messages
        self.redact = frozenset(redact)
        self.max_chars = max_chars
        self.max_items = max_items

    @property
    def enabled(self) -> bool:
        """Whether anything is recorded beyond status, timing and usage."""
        return self.inputs_outputs or self.messages

    def names(self, sensitive: Iterable[str]) -> frozenset[str]:
        """The names redacted in a run whose signatures mark ``sensitive`` fields."""
        return self.redact.union(sensitive) if sensitive else self.redact

    # ------------------------------------------------------------------------------- values

    def value(
        self, data: Mapping[str, Any], names: frozenset[str], secrets: list[str] | None = None
    ) -> dict[str, Any]:
        """A recordable copy of ``data``: ``names`` redacted at any depth, sizes limited
        (``data`` itself when there is nothing to change: records are never mutated).

        The text of every value redacted is appended to ``secrets`` (when given), for
        :meth:`text` to cut out of the step's messages.
        """
        limit = self.max_chars
        if type(data) is dict and len(data) <= self.max_items and names.isdisjoint(data):
            for item in data.values():
                kind = type(item)
                if not (kind is str and len(item) <= limit) and kind not in _PLAIN_TYPES:
                    break
            else:  # nothing to redact or cut, the usual case: recorded as it is
                return data
        out: dict[str, Any] = {}
        for number, (key, item) in enumerate(data.items()):
            if number == self.max_items:
                out["…"] = f"[{len(data) - number} more]"
                break
            if key in names:
                out[key] = REDACTED
                if secrets is not None:
                    _secret_texts(item, secrets)
            elif type(item) is str:
                out[key] = item if len(item) <= limit else _cut(item, limit)
            elif isinstance(item, _PLAIN):
                out[key] = item
            else:
                out[key] = self._walk(item, names, secrets)
        return out

    def _walk(self, item: Any, names: frozenset[str], secrets: list[str] | None) -> Any:
        if isinstance(item, str):
            return item if len(item) <= self.max_chars else _cut(item, self.max_chars)
        if isinstance(item, _PLAIN):
            return item
        if isinstance(item, Mapping):
            return self.value({str(k): v for k, v in item.items()}, names, secrets)
        if isinstance(item, list | tuple | set | frozenset):
            items = list(item)
            kept = [self._walk(v, names, secrets) for v in items[: self.max_items]]
            if len(items) > self.max_items:
                kept.append(f"…[{len(items) - self.max_items} more]")
            return kept
        dump = getattr(item, "model_dump", None)
        if callable(dump):
            try:
                return self._walk(dump(mode="json"), names, secrets)
            except Exception:  # a model that cannot dump itself: recorded as its repr
                pass
        return self._walk(repr(item), names, secrets)

    # -------------------------------------------------------------------------------- texts

    def text(self, text: str, secrets: Sequence[str]) -> str:
        """``text`` with every secret replaced by ``[redacted]``, its size limited."""
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text if len(text) <= self.max_chars else _cut(text, self.max_chars)

    def exchange(self, data: Any, names: frozenset[str], secrets: Sequence[str]) -> Any:
        """A recordable copy of LM messages or a raw response (any JSON shape): ``names``
        redacted, the secrets cut out of every string, sizes limited."""
        if isinstance(data, str):
            return self.text(data, secrets)
        if isinstance(data, Mapping):
            out: dict[str, Any] = {}
            for number, (key, item) in enumerate(data.items()):
                if number == self.max_items:
                    out["…"] = f"[{len(data) - number} more]"
                    break
                name = str(key)
                out[name] = REDACTED if name in names else self.exchange(item, names, secrets)
            return out
        if isinstance(data, list | tuple):
            kept = [self.exchange(item, names, secrets) for item in data[: self.max_items]]
            if len(data) > self.max_items:
                kept.append(f"…[{len(data) - self.max_items} more]")
            return kept
        if isinstance(data, _PLAIN):
            return data
        return self.exchange(self._walk(data, names, None), names, secrets)


def _cut(text: str, limit: int) -> str:
    return f"{text[:limit]}…[truncated {len(text) - limit} chars]"


def _secret_texts(value: Any, secrets: list[str]) -> None:
    """Append the text forms of ``value`` (of its items, for a container) a prompt may hold."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if value:
            secrets.append(value)
    elif isinstance(value, int | float):
        secrets.append(str(value))
    elif isinstance(value, Mapping):
        for item in value.values():
            _secret_texts(item, secrets)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _secret_texts(item, secrets)
    else:
        secrets.append(str(value))
