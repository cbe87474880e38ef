"""An exception nobody expected: one line on stderr, the full traceback in a file, exit 70.

The command line never prints a traceback. A bug (an exception that is not a
:class:`~dspex.errors.DspexError`) is reported as one line: its type and message, the batch or
execution the command was working on (a command names it with :func:`note_subject`), and the
file the full traceback was written to: ``.dspex/logs/`` in the working directory when the
embedded database lives there, else ``dspex-logs/`` in the system temporary directory. With
``--json`` the same report is also printed on stdout as ``{"error": {"code": "internal_error",
…}}``. The exit code is 70 (``EX_SOFTWARE`` of sysexits.h).
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dspex import Runtime

__all__ = [
    "EXIT_INTERNAL",
    "clear_subject",
    "note_subject",
    "report_crash",
    "resolve_subject",
    "write_crash_log",
]

EXIT_INTERNAL = 70

_MESSAGE_CHARS = 200


@dataclass(slots=True)
class _Subject:
    kind: str | None = None
    ident: str | None = None
    resume: str | None = None


_subject = _Subject()


def note_subject(kind: str, ident: str, *, resume: str | None = None) -> None:
    """Name what the running command works on (``batch``/``execution`` and its id, and how to
    resume it), so a crash report can say so."""
    _subject.kind, _subject.ident, _subject.resume = kind, ident, resume


async def resolve_subject(
    rt: Runtime, id_or_prefix: str, kind: Literal["execution", "batch"]
) -> str:
    """The full id of the execution or batch ``id_or_prefix`` names, noted as the subject."""
    full = await rt.resolve_id(id_or_prefix, kind=kind)
    note_subject(kind, full)
    return full


def clear_subject() -> None:
    """Forget the subject (a new command starts)."""
    _subject.kind = _subject.ident = _subject.resume = None


def _log_dirs() -> list[Path]:
    dirs = []
    data = Path.cwd() / ".dspex"
    if data.is_dir():
        dirs.append(data / "logs")
    dirs.append(Path(tempfile.gettempdir()) / "dspex-logs")
    return dirs


def write_crash_log(exc: BaseException, argv: Sequence[str] = ()) -> tuple[Path | None, str]:
    """Write the full report of ``exc`` to a new file; its path (or ``None``) and why not."""
    import dspex

    now = datetime.now(UTC)
    lines = [
        f"dspex {dspex.__version__} crashed at {now.isoformat()}",
        f"command: dspex {' '.join(argv)}".rstrip(),
        f"python: {sys.version.split()[0]} on {sys.platform}, pid {os.getpid()}",
    ]
    if _subject.kind and _subject.ident:
        lines.append(f"{_subject.kind}: {_subject.ident}")
    if _subject.resume:
        lines.append(f"resume: {_subject.resume}")
    text = "\n".join(lines) + "\n\n" + "".join(traceback.format_exception(exc))
    name = f"crash-{now.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    problem = "no directory to write it to"
    for directory in _log_dirs():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / name
            with path.open("x", encoding="utf-8") as handle:
                handle.write(text)
            return path, ""
        except OSError as error:
            problem = str(error)
    try:
        fd, other = tempfile.mkstemp(prefix="dspex-crash-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return Path(other), ""
    except OSError as error:
        return None, f"{problem}; {error}"


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if len(message) > _MESSAGE_CHARS:
        message = message[: _MESSAGE_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def report_crash(exc: BaseException, *, as_json: bool, argv: Sequence[str] = ()) -> int:
    """Report an unexpected exception (see the module docstring); returns the exit code."""
    from dspex.cli._common import err_console, error_payload, print_json

    path, problem = write_crash_log(exc, argv)
    where = f"full traceback in {path}" if path else f"the traceback could not be saved ({problem})"
    about = ""
    if _subject.kind and _subject.ident:
        about = f" in {_subject.kind} {_subject.ident}"
    resume = f"; resume it with: {_subject.resume}" if _subject.resume else ""
    message = f"internal error{about}: {_summary(exc)}"
    if as_json:
        payload: dict[str, Any] = error_payload("internal_error", message)
        payload["error"].update(
            {
                "type": type(exc).__name__,
                "batch_id": _subject.ident if _subject.kind == "batch" else None,
                "execution_id": _subject.ident if _subject.kind == "execution" else None,
                "resume_command": _subject.resume,
                "log": None if path is None else str(path),
            }
        )
        print_json(payload)
    err_console.print(
        f"error: {message}; {where}{resume}", markup=False, highlight=False, soft_wrap=True
    )
    return EXIT_INTERNAL
