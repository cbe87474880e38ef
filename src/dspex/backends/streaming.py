"""Token streaming: where a backend sends the answer's text as it arrives, and how it reads it.

A streaming run puts a :class:`TokenSink` in :data:`TOKEN_SINK` (a context variable, so it
reaches every module task, thread and wrapper of that one run and nothing else). A backend that
can stream asks the sink whether it :meth:`~TokenSink.wants` the tokens of the module making the
call; when it does, the backend makes the same call as a stream, tells the sink each time a
streamed attempt :meth:`~TokenSink.begin`\\ s (a retry or a failover starts a new one), and hands
it each piece of an output field's value as it arrives. Without a sink nothing changes: the check
is one context-variable read per call.

- The ``openai`` backend reads its own server-sent chunks with :class:`FieldStream`, which finds
  the output fields in the adapter's format as the text grows: ChatAdapter's
  ``[[ ## field ## ]]`` sections (the markers never reach the sink, and a field's value comes
  without the whitespace around it, as the adapter parses it) or JSONAdapter's object (string
  values, read with pydantic-core's partial JSON parser).
- ``dspy`` modules and the ``dspy`` backend use DSPy's own streaming through its public API:
  :func:`stream_dspy` runs the module under ``dspy.streamify`` with a
  ``dspy.streaming.StreamListener`` per output field.

The tokens are a preview: the step's validated outputs (and the run's) are what counts.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, Protocol

__all__ = ["TOKEN_SINK", "FieldStream", "TokenSink", "stream_dspy"]

Format = Literal["chat", "json"]


class TokenSink(Protocol):
    """Where a streaming run's tokens go (its methods are called on the event loop)."""

    def wants(self, module: str) -> bool:
        """Whether the tokens of ``module``'s calls are wanted (else it is called as usual)."""

    def begin(self, module: str) -> None:
        """A streamed attempt of ``module`` starts (the tokens of an earlier one are void)."""

    def token(self, module: str, field: str, text: str) -> None:
        """``text`` is the next piece of output ``field``'s value in ``module``'s answer."""


TOKEN_SINK: Final[contextvars.ContextVar[TokenSink | None]] = contextvars.ContextVar(
    "dspex_token_sink", default=None
)
"""The sink of the run the current code belongs to, if that run streams."""


_HEADER: Final = re.compile(r"\[\[ ## (\w+) ## \]\]")
# every prefix of a header, so text that may still become one is held back
_PARTIAL_HEADER: Final = re.compile(
    r"\[(?:\[(?: (?:#(?:#(?: (?:\w+(?: (?:#(?:#(?: (?:\](?:\])?)?)?)?)?)?)?)?)?)?)?)?"
)
_COMPLETED: Final = "completed"


class FieldStream:
    """Reads output fields' values from an adapter-formatted answer as its text arrives.

    Args:
        fields: the output fields whose values are wanted (others are read past, not given).
        format: ``chat`` (ChatAdapter's ``[[ ## field ## ]]`` sections) or ``json``
            (JSONAdapter's object; string values only, others come with the final result).

    Example:
        >>> stream = FieldStream(["answer"])
        >>> stream.feed("[[ ## answer ## ]]\\nPar") + stream.feed("is\\n\\n[[ ## completed ## ]]")
        [('answer', 'Par'), ('answer', 'is')]
    """

    __slots__ = ("_buffer", "_current", "_fields", "_format", "_held", "_sent", "_started")

    def __init__(self, fields: Iterable[str], format: Format = "chat") -> None:
        self._fields = frozenset(fields)
        self._format: Format = format
        self._buffer = ""
        self._current: str | None = None  # the chat section being read
        self._started = False  # its value's first non-space text arrived
        self._held = ""  # whitespace that is given only if more text follows it
        self._sent: dict[str, int] = {}  # json: characters of each value already given

    def feed(self, text: str) -> list[tuple[str, str]]:
        """The ``(field, text)`` pieces that ``text`` completes, in order."""
        if self._format == "json":
            return self._feed_json(text)
        self._buffer += text
        out: list[tuple[str, str]] = []
        while self._buffer:
            if self._current is None:
                header = _HEADER.search(self._buffer)
                if header is None:
                    self._buffer = _partial_tail(self._buffer)
                    break
                self._open(header.group(1))
                self._buffer = self._buffer[header.end() :]
                continue
            start = self._buffer.find("[")
            while start >= 0:
                rest = self._buffer[start:]
                header = _HEADER.match(rest)
                if header is not None:
                    self._give(self._buffer[:start], out, ending=True)
                    self._open(header.group(1))
                    self._buffer = rest[header.end() :]
                    break
                if _PARTIAL_HEADER.fullmatch(rest):  # may still become a header: wait
                    self._give(self._buffer[:start], out)
                    self._buffer = rest
                    return out
                start = self._buffer.find("[", start + 1)
            else:
                self._give(self._buffer, out)
                self._buffer = ""
        return out

    def end(self) -> list[tuple[str, str]]:
        """What was held back when the answer ends (text that did not become a header)."""
        out: list[tuple[str, str]] = []
        if self._format == "chat" and self._buffer:
            self._give(self._buffer, out, ending=True)
        self._buffer = ""
        return out

    def _open(self, name: str) -> None:
        self._current = None if name == _COMPLETED else name
        self._started = False
        self._held = ""

    def _give(self, text: str, out: list[tuple[str, str]], *, ending: bool = False) -> None:
        """Give ``text`` of the current section, its value's outer whitespace left out."""
        field = self._current
        if field is None or field not in self._fields or not text:
            return
        if not self._started:
            text = text.lstrip()
        stripped = text.rstrip()
        if not stripped:
            if self._started and not ending:
                self._held += text
            return
        piece = self._held + stripped
        self._held = "" if ending else text[len(stripped) :]
        self._started = True
        out.append((field, piece))

    def _feed_json(self, text: str) -> list[tuple[str, str]]:
        from pydantic_core import from_json

        self._buffer += text
        start = self._buffer.find("{")
        if start < 0:
            return []
        try:
            value = from_json(self._buffer[start:], allow_partial="trailing-strings")
        except ValueError:
            return []
        if not isinstance(value, dict):
            return []
        out: list[tuple[str, str]] = []
        for field, current in value.items():
            if field not in self._fields or not isinstance(current, str):
                continue
            sent = self._sent.get(field, 0)
            if len(current) > sent:
                out.append((field, current[sent:]))
                self._sent[field] = len(current)
        return out


def _partial_tail(text: str) -> str:
    """The end of ``text`` that may still become a header ("" when none may)."""
    start = text.find("[")
    while start >= 0:
        if _PARTIAL_HEADER.fullmatch(text, start):
            return text[start:]
        start = text.find("[", start + 1)
    return ""


async def stream_dspy(
    module: Any,
    kwargs: dict[str, Any],
    fields: Iterable[str] | None,
    on_token: Callable[[str, str], None],
    *,
    is_async: bool,
) -> Any:
    """Run a DSPy ``module`` on ``kwargs`` under ``dspy.streamify``; its prediction.

    Each output field in ``fields`` (``None``: every output field) that exactly one of the
    module's predictors produces gets a ``dspy.streaming.StreamListener``;
    ``on_token(field, text)`` receives what the listeners give. ``is_async``: the module is
    called with ``acall`` (else ``forward`` runs in DSPy's async helper, as streamify does it).
    """
    import dspy

    owners: dict[str, int] = {}
    for _, predictor in module.named_predictors():
        for name in predictor.signature.output_fields:
            owners[name] = owners.get(name, 0) + 1
    listeners = [
        dspy.streaming.StreamListener(signature_field_name=name)
        for name in (owners if fields is None else fields)
        if owners.get(name) == 1
    ]
    streamed = dspy.streamify(
        module,
        stream_listeners=listeners,
        include_final_prediction_in_output_stream=True,
        is_async_program=is_async,
    )
    prediction: Any = None
    async for value in streamed(**kwargs):
        if isinstance(value, dspy.streaming.StreamResponse):
            if value.chunk:
                on_token(value.signature_field_name, value.chunk)
        elif isinstance(value, dspy.Prediction):
            prediction = value
    return prediction
