"""The program lifecycle: register, initialize, archive (``draft → initializing → ready | error``).

A registered spec is stored as canonical JSON with its sha256: registering an unchanged spec
returns the existing version, a changed one creates the next version in ``draft``. The stored
spec depends only on what the spec says, not on how it arrived: the same YAML registered from the
command line (a file) and over HTTP (a mapping) is one version.

A ``dspy`` module's ``state`` file (DSPy's ``.save("x.json")``) is read at registration and stored
inline, so a version is self-contained: it carries its modules' optimized demos and instructions,
runs wherever the spec is read, and a newly optimized state is simply a new version. (A pickled
state, a ``save_program=True`` directory or a ``.pkl``, cannot be inlined and stays a path.)

Relative corpus paths are made absolute at registration, so the stored spec runs from any working
directory: against the program file's directory for a file, else against the working directory
(where the engine would look for them). A program loaded from a file may also read corpora in
that file's directory (see :class:`~dspex.engine.engine.Engine`'s ``corpus_dirs``). That trust is
stored with the spec, under ``metadata["dspex.program_dir"]``, only when a corpus needs it (it
lies in that directory and outside the configured ``corpus_dirs``), and only :func:`stored_spec`
writes it: a spec that arrives as a mapping (the HTTP service) has the key removed, whatever it
claimed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.actions.models import ProgramInfo
from dspex.engine.dspy_modules import is_pickled, read_state_file
from dspex.engine.kinds import corpus_allowed
from dspex.engine.program import Program, parse_signature
from dspex.errors import DspexError, ErrorDetail, PathNotAllowedError, ProgramStateError, SpecError
from dspex.records import ProgramRecord, ProgramStatus

if TYPE_CHECKING:
    from dspex.engine.engine import Engine
    from dspex.store.base import Store

__all__ = [
    "PROGRAM_DIR_KEY",
    "ProgramCache",
    "ProgramSource",
    "archive",
    "default_version",
    "initialize",
    "load_source",
    "program_info",
    "program_infos",
    "register",
    "spec_hash",
    "stored_spec",
]

ProgramSource = Program | Mapping[str, Any] | str | Path
_BACKEND_KINDS = ("predict", "chain_of_thought")
PROGRAM_DIR_KEY = "dspex.program_dir"
"""The stored spec's ``metadata`` key naming the directory of the file it was registered from."""


def load_source(source: ProgramSource) -> Program:
    """A :class:`Program` from a program, its dict form, or a YAML/JSON file path.

    Raises:
        SpecError: the spec is malformed.
        NotFoundError: the file does not exist.
    """
    if isinstance(source, Program):
        return source
    if isinstance(source, str | Path):
        return Program.from_file(source)
    if isinstance(source, Mapping):
        return Program.from_dict(source)
    raise SpecError(
        "a program is a Program, a mapping or a file path:",
        [ErrorDetail("", "type", f"got {type(source).__name__}")],
    )


def stored_spec(program: Program, corpus_dirs: Sequence[Path] = ()) -> dict[str, Any]:
    """The spec as stored: ``to_dict()`` with ``dspy`` states read from their ``.json`` files
    into the spec, relative corpus (and pickled state) paths made absolute, and the program's
    directory recorded in ``metadata`` when a file needs it (any claim to one dropped).

    Args:
        program: the program being registered.
        corpus_dirs: the directories corpora may be read from anyway; a corpus inside one of
            them does not need the program's directory, which then stays out of the spec (so
            the spec is the same whether it came from a file or not).

    Raises:
        SpecError: a state file cannot be read, or is not a JSON object.
    """
    spec = program.to_dict()
    base = program.base_dir
    metadata = dict(spec.get("metadata") or {})
    metadata.pop(PROGRAM_DIR_KEY, None)
    needs_base = False
    for name, entry in spec["modules"].items():
        state = entry.get("state")
        key = "corpus"
        if isinstance(state, str):
            path = _resolved(state, base)
            if not is_pickled(path):
                entry["state"] = _inline_state(name, path)
                continue
            key = "state"
        corpus = entry.get(key)
        if not corpus:
            continue
        path = Path(corpus)
        if not path.is_absolute():
            path = _resolved(corpus, base)
            entry[key] = str(path)
        if (
            base is not None
            and corpus_allowed(path, (base,))
            and not corpus_allowed(path, corpus_dirs)
        ):
            needs_base = True
    if base is not None and needs_base:
        metadata[PROGRAM_DIR_KEY] = str(base.resolve())
    if metadata:
        spec["metadata"] = metadata
    else:
        spec.pop("metadata", None)  # left out like every other default
    return spec


def _resolved(value: str, base: Path | None) -> Path:
    """Where the engine resolves a spec path: the file's directory, else the working one."""
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    return path.resolve()


def _inline_state(module: str, path: Path) -> dict[str, Any]:
    try:
        return read_state_file(path)
    except SpecError as exc:
        raise SpecError(
            f"program cannot be registered: the state of module {module!r}:",
            [ErrorDetail(f"modules.{module}.state", e.code, e.message) for e in exc.errors],
        ) from None


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a spec (sorted keys, no whitespace)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ProgramCache:
    """Parsed programs by (name, version, spec hash, backend override): parse and plan once."""

    def __init__(self) -> None:
        self._programs: dict[tuple[str, int, str, str | None], Program] = {}

    def get(self, record: ProgramRecord, backend: str | None = None) -> Program:
        """The program a stored version describes (every predict/cot module on ``backend``).

        Raises:
            SpecError: the stored spec no longer parses (for example after an upgrade).
        """
        key = (record.name, record.version, record.spec_hash, backend)
        program = self._programs.get(key)
        if program is None:
            spec = record.spec
            if backend is not None:
                spec = json.loads(json.dumps(spec))
                for entry in spec["modules"].values():
                    if entry.get("kind") in _BACKEND_KINDS:
                        entry["backend"] = backend
            # Only stored specs are read here, and stored_spec wrote this key itself.
            base_dir = (spec.get("metadata") or {}).get(PROGRAM_DIR_KEY)
            program = Program.from_dict(
                spec, base_dir=base_dir if isinstance(base_dir, str) else None
            )
            self._programs[key] = program
        return program


def program_info(record: ProgramRecord, *, current: bool = False) -> ProgramInfo:
    """The public view of a stored program version (``current``: it is the current one)."""
    raw = record.spec.get("signature", "")
    if isinstance(raw, str):
        signature = raw
    else:
        try:
            signature = str(parse_signature(raw))
        except DspexError:
            signature = json.dumps(raw, sort_keys=True)
    return ProgramInfo.from_record(
        record,
        modules=len(record.spec.get("modules", {})),
        signature=signature,
        current=current,
    )


async def register(
    store: Store, source: ProgramSource, *, engine: Engine | None = None
) -> ProgramInfo:
    """Validate and store a program spec as ``draft`` (same version when unchanged).

    Args:
        store: where programs are stored.
        source: the program, its dict form or a file path.
        engine: when given, a spec that names a file outside its allowed directories is
            refused here (the same check :meth:`Engine.check` makes); other engine problems
            (unknown backends, …) wait for :func:`initialize`.

    Raises:
        SpecError: the spec is malformed (every problem listed).
        GraphError: the modules do not form a valid graph.
        PathNotAllowedError: a corpus is outside the engine's allowed directories.
    """
    program = load_source(source)
    program.plan()  # builds and validates the graph: a broken graph is never stored
    if engine is not None:
        refused = [p for p in engine.validate(program) if p.code == "path_not_allowed"]
        if refused:
            summary = "; ".join(f"{p.field}: {p.message}" for p in refused)
            raise PathNotAllowedError(f"program {program.name!r} cannot be registered: {summary}")
    spec = stored_spec(program, engine.corpus_dirs if engine is not None else ())
    record = await store.put_program(program.name, spec, spec_hash(spec))
    return program_info(record)


async def initialize(
    store: Store, engine: Engine, cache: ProgramCache, name: str, version: int | None = None
) -> ProgramInfo:
    """Move a version through ``initializing`` to ``ready``, or to ``error`` with the reason.

    The checks: the stored spec parses, the graph is valid, every backend is configured, every
    import is allowed, resources fit, and ``python``/``dspy``/``retrieve`` modules build.

    Raises:
        NotFoundError: no such program (version).
        ProgramStateError: the version cannot be initialized from its status (archived, or
            already being initialized).
    """
    record = await store.get_program(name, version)
    if not record.status.can_transition_to(ProgramStatus.INITIALIZING):
        raise ProgramStateError(
            f"program {name!r} v{record.version} is {record.status.value} and cannot be"
            " initialized",
            status=record.status.value,
        )
    record = await store.set_program_status(
        name, record.version, ProgramStatus.INITIALIZING, expected=record.status
    )
    reason = await _readiness_problem(engine, cache, record)
    if reason is None:
        final = await store.set_program_status(
            name, record.version, ProgramStatus.READY, expected=ProgramStatus.INITIALIZING
        )
    else:
        final = await store.set_program_status(
            name,
            record.version,
            ProgramStatus.ERROR,
            error=reason,
            expected=ProgramStatus.INITIALIZING,
        )
    return program_info(final)


async def _readiness_problem(
    engine: Engine, cache: ProgramCache, record: ProgramRecord
) -> str | None:
    try:
        program = cache.get(record)
        # Checking, then importing allow-listed code and loading corpora, is what "modules
        # build" means; the engine caches what it prepared, so the first execution does not
        # pay for it again.
        await engine.prepare(program)
    except DspexError as exc:
        return f"{exc.code}: {exc.message}"
    return None


async def program_infos(store: Store, records: Sequence[ProgramRecord]) -> list[ProgramInfo]:
    """The public views of stored versions, each marked when it is its program's current one
    (the version last promoted, else the newest)."""
    newest: dict[str, int] = {}
    for record in records:
        newest[record.name] = max(record.version, newest.get(record.name, 0))
    current: dict[str, int] = {}
    for name in newest:
        promoted = await store.current_version(name)
        if promoted is None:
            promoted = (await store.get_program(name)).version
        current[name] = promoted
    return [program_info(r, current=current[r.name] == r.version) for r in records]


async def default_version(store: Store, name: str, version: int | None) -> int | None:
    """``version`` when given, else the program's current version (the one last promoted);
    ``None`` (the newest) when none ever was: what ``run``, ``batch`` and the service use."""
    return version if version is not None else await store.current_version(name)


async def archive(store: Store, name: str, version: int | None = None) -> ProgramInfo:
    """Archive a version (final: it can no longer be initialized or executed).

    Raises:
        NotFoundError: no such program (version).
        ProgramStateError: it is being initialized, or already archived.
    """
    record = await store.get_program(name, version)
    final = await store.set_program_status(
        name, record.version, ProgramStatus.ARCHIVED, expected=record.status
    )
    return program_info(final)
