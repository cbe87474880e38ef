"""Batch inputs: a list, a JSONL file or any iterable, streamed with their line numbers.

A :class:`InputSource` can be read more than once (up-front validation reads it, then the run
reads it again) and knows how many items it holds before anything runs. A list is used as is; a
JSONL file is read line by line (blank lines are not items); a one-shot iterable is spooled to a
temporary JSONL file first, so memory stays flat however long the stream is.

Counting and reading split a file the same way (:func:`_lines`), so ``total`` is always the
number of items read: lines end at ``\n`` only (a ``\r`` before it is part of the line ending; a
bare ``\r``, U+2028 or U+0085 is inside a line), a line is blank when it holds only JSON
whitespace (space, tab, ``\r``), and a UTF-8 byte order mark at the start of the file is
ignored. Every other line is an item; one that is not UTF-8, not JSON or not an object is an
invalid item named by its line number.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.errors import ErrorDetail, ValidationError

if TYPE_CHECKING:
    from dspex.signatures.signature import Signature

__all__ = [
    "InputSource",
    "RawItem",
    "check_item",
    "open_source",
    "read_chunks",
    "read_jsonl",
    "validate_all",
]

BatchInput = Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]] | str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class RawItem:
    """One input as read: its index in the batch, its JSONL line, the value or what is wrong.

    Attributes:
        index: 0-based position among the items (blank lines are not items).
        line: 1-based line number in the JSONL file (``None`` for a list).
        value: the parsed object (``None`` when the line is not JSON).
        problem: why the line cannot be an item (not JSON, not an object), else ``None``.
    """

    index: int
    line: int | None
    value: Any
    problem: str | None = None


class InputSource:
    """Where a batch's items come from; iterate it (as often as needed) for :class:`RawItem`."""

    def __init__(
        self,
        *,
        items: Sequence[Any] | None = None,
        path: Path | None = None,
        total: int,
        spooled: bool = False,
    ) -> None:
        self.items = items
        self.path = path
        self.total = total
        self.spooled = spooled

    def __iter__(self) -> Iterator[RawItem]:
        if self.items is not None:
            for index, value in enumerate(self.items):
                problem = None if isinstance(value, Mapping) else _not_object(value)
                yield RawItem(index, None, value, problem)
            return
        assert self.path is not None
        yield from _read_jsonl(self.path)

    def describe(self) -> dict[str, Any]:
        """What the batch config records about the input (a file path, or the kind)."""
        if self.path is not None and not self.spooled:
            return {"kind": "jsonl", "path": str(self.path.absolute())}
        return {"kind": "stream" if self.spooled else "list"}

    def close(self) -> None:
        """Remove the spool file of a one-shot iterable."""
        if self.spooled and self.path is not None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> InputSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _not_object(value: Any) -> str:
    return f"expected an object of input fields, got {type(value).__name__}"


_BLANK = b" \t\r\n"  # JSON's whitespace: a line of only these is not an item
_BOM = b"\xef\xbb\xbf"


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The 1-based number and bytes of every line that is an item (blank lines skipped).

    The one place a file is split into items: counting and every reader go through it.
    """
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number == 1 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.strip(_BLANK):
                yield number, line


def _read_jsonl(path: Path) -> Iterator[RawItem]:
    for index, (number, line) in enumerate(_lines(path)):
        yield _parse_line(index, number, line)


def read_jsonl(path: Path) -> Iterator[RawItem]:
    """The items of a JSONL file, split as a batch input is (a devset is read this way too).

    Raises:
        OSError: the file cannot be read.
    """
    return _read_jsonl(path)


def read_chunks(path: Path, chunk_size: int, take: Callable[[], int]) -> Iterator[RawItem]:
    """The items of the chunks ``take()`` hands out, in file order, for one of many readers.

    ``take`` returns the next chunk number no reader has yet (a counter shared between
    processes): each call claims one chunk of ``chunk_size`` items, so a reader that is free
    sooner takes more. The numbers a reader gets only grow, so it reads the file once, front to
    back, and lines of chunks it did not take are counted, never parsed.
    """
    wanted = take()
    for index, (number, line) in enumerate(_lines(path)):
        chunk = index // chunk_size
        if chunk > wanted:
            wanted = take()
        if chunk == wanted:
            yield _parse_line(index, number, line)


def _parse_line(index: int, number: int, line: bytes) -> RawItem:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{line[exc.start]:02x} at column {exc.start + 1}"
        return RawItem(index, number, None, f"line {number}: not valid UTF-8 ({where})")
    try:
        value = json.loads(text)
    except ValueError as exc:
        return RawItem(index, number, None, f"line {number}: not valid JSON: {exc}")
    except RecursionError:
        return RawItem(index, number, None, f"line {number}: nests arrays or objects too deep")
    problem = None if isinstance(value, dict) else f"line {number}: {_not_object(value)}"
    return RawItem(index, number, value, problem)


def _count_items(path: Path) -> int:
    return sum(1 for _ in _lines(path))


def open_source(items: BatchInput) -> InputSource:
    """An :class:`InputSource` for a list, a JSONL path or an iterable.

    Raises:
        ValidationError: the JSONL file cannot be read.
    """
    if isinstance(items, str | os.PathLike):
        path = Path(items)
        try:
            total = _count_items(path)
        except OSError as exc:
            raise ValidationError(
                f"cannot read the batch input {str(path)!r}:",
                [ErrorDetail("items", "unreadable", str(exc))],
            ) from None
        return InputSource(path=path, total=total)
    if isinstance(items, Sequence):
        return InputSource(items=items, total=len(items))
    return _spool(items)


def _spool(items: Iterable[Any]) -> InputSource:
    fd, name = tempfile.mkstemp(prefix="dspex-batch-", suffix=".jsonl")
    total = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for value in items:
                handle.write(_spool_line(value))
                total += 1
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return InputSource(path=Path(name), total=total, spooled=True)


def _spool_line(value: Any) -> bytes:
    """One JSONL line that reads back as ``value`` (JSON escapes keep it on one line)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        # not storable: it becomes an item that fails as "not an object"
        return b"null\n"
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        # a lone surrogate cannot be UTF-8: the escaped form reads back as the same value
        return json.dumps(value).encode("ascii") + b"\n"


def check_item(
    raw: RawItem, signature: Signature
) -> tuple[dict[str, Any] | None, list[ErrorDetail]]:
    """The validated inputs of one item, or every problem with it (fields as ``items[i].f``)."""
    where = f"items[{raw.index}]"
    if raw.problem is not None:
        return None, [ErrorDetail(where, "invalid_item", raw.problem)]
    try:
        return signature.validate_inputs(dict(raw.value)), []
    except ValidationError as exc:
        prefix = f"line {raw.line}: " if raw.line is not None else ""
        details = [
            ErrorDetail(f"{where}.{e.field}" if e.field else where, e.code, prefix + e.message)
            for e in exc.errors
        ] or [ErrorDetail(where, exc.code, prefix + exc.message)]
        return None, details


def validate_all(source: InputSource, signature: Signature) -> list[dict[str, Any]] | None:
    """Check every item before anything runs.

    Returns:
        For a list input (held in memory anyway), every item's validated inputs in order, so
        the run need not validate them again; ``None`` for a file or stream, whose items are
        not kept.

    Raises:
        ValidationError: naming every bad item (its index, line and field), nothing ran.
    """
    if source.items is not None:
        # A list is held in memory anyway: one pass over all of it; only when some item is bad
        # does the loop below run, to name every problem of every item.
        everything = signature.validate_inputs_many(source.items)
        if everything is not None:
            return everything
    problems: list[ErrorDetail] = []
    bad = 0
    valid: list[dict[str, Any]] | None = [] if source.items is not None else None
    for raw in source:
        checked, details = check_item(raw, signature)
        if details:
            bad += 1
            problems.extend(details)
        elif valid is not None and checked is not None:
            valid.append(checked)
    if problems:
        head = f"{bad} of {source.total} batch items are invalid"
        if len(problems) <= _INLINE_PROBLEMS:
            raise ValidationError(head + ":", problems)
        # Thousands of problems stay in .errors; the message names only the first few.
        first = "; ".join(f"{e.field}: {e.message}" for e in problems[:_INLINE_PROBLEMS])
        raise ValidationError(f"{head} (first: {first}; …)", problems)
    return valid


_INLINE_PROBLEMS = 20
