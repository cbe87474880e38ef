"""Corpus paths: a spec can only make the engine read files in the allowed directories.

Allowed are the engine's ``corpus_dirs`` and a program's own directory (the file it was loaded
from). ``..`` segments, absolute paths and symlinks are resolved before the check, a refused path
is never probed, and the runtime refuses it at registration and at initialization.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dspex.actions.programs import PROGRAM_DIR_KEY, spec_hash
from dspex.config import Settings
from dspex.engine.engine import Engine
from dspex.engine.program import Program
from dspex.errors import ConfigError, PathNotAllowedError, SecurityError
from dspex.records import ProgramStatus
from dspex.runtime import Runtime

PASSAGES = "Rome is the capital of Italy.\nParis is the capital of France.\n"


class Words:
    """A tiny deterministic embedder, so no model is loaded."""

    name = "words"
    vocabulary = ("paris", "france", "rome", "italy")

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(w in t.lower()) + 1e-3 for w in self.vocabulary] for t in texts]


def rag(corpus: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "rag",
        "signature": "q: str -> passages: list[str]",
        "modules": {
            "r": {"kind": "retrieve", "corpus": corpus, "k": 1, "inputs": {"query": "$input.q"}}
        },
        **extra,
    }


def write_program(directory: Path, corpus: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / "rag.yaml"
    file.write_text(
        "name: rag\n"
        'signature: "q: str -> passages: list[str]"\n'
        "modules:\n"
        f"  r: {{kind: retrieve, corpus: '{corpus}', k: 1, inputs: {{query: $input.q}}}}\n"
    )
    return file


def codes(engine: Engine, program: Program) -> list[tuple[str, str]]:
    return [(p.field, p.code) for p in engine.validate(program)]


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    directory = tmp_path / "corpora"
    directory.mkdir()
    (directory / "facts.txt").write_text(PASSAGES)
    return directory


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    file = tmp_path / "elsewhere" / "secret.env"
    file.parent.mkdir()
    file.write_text("OPENAI_API_KEY=sk-not-for-you\n")
    return file


# ---------------------------------------------------------------------------- the engine


async def test_a_corpus_inside_corpus_dirs_runs(allowed: Path) -> None:
    async with Engine(backends={}, corpus_dirs=[allowed], embedder=Words()) as engine:
        result = await engine.run(
            Program.from_dict(rag(str(allowed / "facts.txt"))), {"q": "paris"}
        )
    assert result.outputs == {"passages": ["Paris is the capital of France."]}


def test_a_corpus_next_to_the_program_file_needs_no_corpus_dirs(tmp_path: Path) -> None:
    file = write_program(tmp_path / "app", "corpus.txt")
    (tmp_path / "app" / "corpus.txt").write_text(PASSAGES)
    assert codes(Engine(backends={}), Program.from_file(file)) == []


def test_path_traversal_out_of_the_program_directory_is_refused(tmp_path: Path) -> None:
    file = write_program(tmp_path / "app" / "programs", "../../../../../../etc/passwd")
    assert codes(Engine(backends={}), Program.from_file(file)) == [
        ("modules.r.corpus", "path_not_allowed")
    ]


def test_traversal_out_of_an_allowed_directory_is_refused(allowed: Path, secret: Path) -> None:
    sneaky = f"{allowed}/../elsewhere/{secret.name}"
    engine = Engine(backends={}, corpus_dirs=[allowed])
    assert codes(engine, Program.from_dict(rag(sneaky))) == [
        ("modules.r.corpus", "path_not_allowed")
    ]


def test_an_absolute_path_outside_every_allowed_directory_is_refused(allowed: Path) -> None:
    engine = Engine(backends={}, corpus_dirs=[allowed])
    assert codes(engine, Program.from_dict(rag("/etc/passwd"))) == [
        ("modules.r.corpus", "path_not_allowed")
    ]


def test_a_symlink_in_an_allowed_directory_pointing_outside_is_refused(
    allowed: Path, secret: Path
) -> None:
    (allowed / "innocent.txt").symlink_to(secret)
    engine = Engine(backends={}, corpus_dirs=[allowed])
    program = Program.from_dict(rag(str(allowed / "innocent.txt")))
    assert codes(engine, program) == [("modules.r.corpus", "path_not_allowed")]


def test_a_symlink_next_to_the_program_pointing_outside_is_refused(
    tmp_path: Path, secret: Path
) -> None:
    file = write_program(tmp_path / "app", "corpus.txt")
    (tmp_path / "app" / "corpus.txt").symlink_to(secret)
    assert codes(Engine(backends={}), Program.from_file(file)) == [
        ("modules.r.corpus", "path_not_allowed")
    ]


def test_a_symlinked_allowed_directory_allows_what_is_really_inside_it(
    tmp_path: Path, allowed: Path
) -> None:
    link = tmp_path / "linked"
    link.symlink_to(allowed, target_is_directory=True)
    engine = Engine(backends={}, corpus_dirs=[link])
    assert codes(engine, Program.from_dict(rag(str(allowed / "facts.txt")))) == []


def test_a_sibling_directory_sharing_the_name_prefix_is_not_inside(allowed: Path) -> None:
    sibling = allowed.parent / (allowed.name + "-private")
    sibling.mkdir()
    (sibling / "facts.txt").write_text(PASSAGES)
    engine = Engine(backends={}, corpus_dirs=[allowed])
    assert codes(engine, Program.from_dict(rag(str(sibling / "facts.txt")))) == [
        ("modules.r.corpus", "path_not_allowed")
    ]


def test_a_program_without_a_directory_gets_only_corpus_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_text(PASSAGES)
    # the working directory is not trusted on its own
    assert codes(Engine(backends={}), Program.from_dict(rag("here.txt"))) == [
        ("modules.r.corpus", "path_not_allowed")
    ]


def test_relative_corpus_dirs_resolve_against_the_working_directory(
    tmp_path: Path, allowed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = Engine(backends={}, corpus_dirs=[allowed.name])
    assert engine.corpus_dirs == (allowed.resolve(),)
    assert codes(engine, Program.from_dict(rag(str(allowed / "facts.txt")))) == []


def test_a_refused_corpus_is_not_probed_or_echoed_resolved(allowed: Path, secret: Path) -> None:
    (allowed / "innocent.txt").symlink_to(secret)
    missing = Program.from_dict(rag("/no/such/dir/file.txt"))
    linked = Program.from_dict(rag(str(allowed / "innocent.txt")))
    engine = Engine(backends={}, corpus_dirs=[allowed])
    # a missing file outside gets the same answer as an existing one: no existence oracle
    assert codes(engine, missing) == [("modules.r.corpus", "path_not_allowed")]
    (problem,) = engine.validate(linked)
    assert str(secret) not in problem.message


async def test_running_a_refused_program_raises_before_anything_is_read(secret: Path) -> None:
    async with Engine(backends={}, embedder=Words()) as engine:
        with pytest.raises(PathNotAllowedError) as info:
            await engine.run(Program.from_dict(rag(str(secret))), {"q": "x"})
    assert info.value.code == "path_not_allowed"
    assert isinstance(info.value, SecurityError)
    assert "sk-not-for-you" not in str(info.value)


async def test_preparing_a_refused_program_raises(secret: Path) -> None:
    async with Engine(backends={}, embedder=Words()) as engine:
        with pytest.raises(PathNotAllowedError):
            await engine.prepare(Program.from_dict(rag(str(secret))))


def test_an_import_problem_outranks_a_path_problem(secret: Path) -> None:
    spec = rag(str(secret))
    spec["modules"]["f"] = {
        "kind": "python",
        "function": "os:system",
        "signature": "q: str -> out: str",
        "inputs": {"q": "$input.q"},
    }
    spec["outputs"] = {"passages": "r.passages"}
    with pytest.raises(SecurityError) as info:
        Engine(backends={}).check(Program.from_dict(spec))
    assert info.value.code == "import_not_allowed"


def test_corpus_dirs_must_be_a_sequence_not_one_path(allowed: Path) -> None:
    with pytest.raises(ConfigError, match="corpus_dirs"):
        Engine(backends={}, corpus_dirs=str(allowed))
    with pytest.raises(ConfigError, match="corpus_dirs"):
        Engine(backends={}, corpus_dirs=allowed)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the runtime


def runtime(tmp_path: Path, *corpus_dirs: Path) -> Runtime:
    settings = Settings(corpus_dirs=tuple(str(d) for d in corpus_dirs))
    return Runtime.open("memory://", cwd=tmp_path, settings=settings)


async def test_registering_a_mapping_with_a_corpus_outside_is_refused_and_stores_nothing(
    tmp_path: Path, allowed: Path
) -> None:
    async with runtime(tmp_path, allowed) as rt:
        with pytest.raises(PathNotAllowedError, match="corpus"):
            await rt.register(rag("/etc/passwd"))
        assert await rt.list_programs() == []


async def test_registering_a_mapping_with_a_corpus_in_corpus_dirs_is_stored(
    tmp_path: Path, allowed: Path
) -> None:
    async with runtime(tmp_path, allowed) as rt:
        info = await rt.register(rag(str(allowed / "facts.txt")))
        assert info.status == "draft"


async def test_a_mapping_cannot_claim_a_program_directory(tmp_path: Path, secret: Path) -> None:
    claim = rag(str(secret), metadata={PROGRAM_DIR_KEY: str(secret.parent)})
    async with runtime(tmp_path) as rt:
        with pytest.raises(PathNotAllowedError):
            await rt.register(claim)


async def test_a_claimed_program_directory_is_dropped_from_the_stored_spec(
    tmp_path: Path, allowed: Path
) -> None:
    claim = rag(str(allowed / "facts.txt"), metadata={PROGRAM_DIR_KEY: "/", "team": "search"})
    async with runtime(tmp_path, allowed) as rt:
        info = await rt.register(claim)
        program = await rt.load_program(info.name, info.version)
    assert program.to_dict()["metadata"] == {"team": "search"}
    assert program.base_dir is None


async def test_a_program_file_keeps_its_directory_through_the_store(tmp_path: Path) -> None:
    file = write_program(tmp_path / "app", "corpus.txt")
    (tmp_path / "app" / "corpus.txt").write_text(PASSAGES)
    async with runtime(tmp_path) as rt:
        info = await rt.register(file)
        program = await rt.load_program(info.name, info.version)
    assert program.base_dir == (tmp_path / "app").resolve()
    assert program.to_dict()["modules"]["r"]["corpus"] == str(
        (tmp_path / "app" / "corpus.txt").resolve()
    )
    assert Engine(backends={}).validate(program) == []


async def test_registering_a_program_file_reaching_outside_its_directory_is_refused(
    tmp_path: Path, secret: Path
) -> None:
    file = write_program(tmp_path / "app", f"../elsewhere/{secret.name}")
    async with runtime(tmp_path) as rt:
        with pytest.raises(PathNotAllowedError):
            await rt.register(file)


async def test_initializing_a_stored_spec_with_a_corpus_outside_puts_it_in_error(
    tmp_path: Path, allowed: Path, secret: Path
) -> None:
    spec = rag(str(secret))
    async with runtime(tmp_path, allowed) as rt:
        # a spec stored before the rule existed (or by another tool) bypassed registration
        await rt.store.put_program("rag", spec, spec_hash(spec))
        info = await rt.initialize("rag")
    assert info.status == ProgramStatus.ERROR.value
    assert info.error is not None
    assert info.error.startswith("path_not_allowed:")
    assert "sk-not-for-you" not in info.error
