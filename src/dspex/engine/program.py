"""``Program``: an immutable, parsed program spec with its graph and plan.

Example:
    >>> program = Program.from_dict({
    ...     "name": "qa",
    ...     "signature": "question: str -> answer: str",
    ...     "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
    ... })
    >>> program.plan().order
    ('answer',)

Loading checks the spec's shape and parses every signature (:class:`~dspex.errors.SpecError`,
listing all problems). The graph is built and validated on first use (:attr:`Program.graph`,
:meth:`Program.plan`, or a run) and cached, raising :class:`~dspex.errors.GraphError`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dspex.engine.analysis import Plan, analyze
from dspex.engine.graph import Graph, build_graph
from dspex.engine.spec import (
    MAX_SPEC_DEPTH,
    ModuleSpec,
    ProgramSpec,
    SignatureInput,
    load_yaml_spec,
    parse_spec,
)
from dspex.errors import ErrorDetail, GraphError, NotFoundError, SignatureError, SpecError
from dspex.signatures.dspy_interop import dspy_value_problems
from dspex.signatures.signature import Signature

__all__ = ["RETRIEVE_SIGNATURE", "Program", "parse_signature"]

RETRIEVE_SIGNATURE = "query: str -> passages: list[str]"
"""The signature of a ``retrieve`` module that does not declare one."""


@lru_cache(maxsize=4096)
def _parse_text(text: str) -> Signature:
    return Signature.parse(text)


@lru_cache(maxsize=1024)
def _parse_json(key: str) -> Signature:
    return Signature.from_dict(json.loads(key))


def parse_signature(value: SignatureInput) -> Signature:
    """A signature from its string or dict form, cached: programs repeat the same few signatures.

    Raises:
        SignatureError: the signature is malformed.
    """
    if isinstance(value, str):
        return _parse_text(value)
    # no sort_keys: the order of a dict form's fields is the order of the prompt's fields
    return _parse_json(json.dumps(value, default=str))


class Program:
    """A program spec, parsed and immutable.

    Build one with :meth:`from_dict` or :meth:`from_file`; equality is by spec.

    Attributes:
        spec: the validated spec model.
        base_dir: the directory relative paths (``retrieve`` corpora) resolve against.
    """

    __slots__ = ("_base_dir", "_graph", "_plan", "_signature", "_signatures", "_spec")

    def __init__(self, spec: ProgramSpec, *, base_dir: Path | None = None) -> None:
        problems: list[ErrorDetail] = []
        signature = _signature_or_problem(spec.signature, "signature", problems)
        signatures: dict[str, Signature] = {}
        for name, module in spec.modules.items():
            raw = module.signature if module.signature is not None else RETRIEVE_SIGNATURE
            parsed = _signature_or_problem(raw, f"modules.{name}.signature", problems)
            if parsed is not None and module.instructions is not None:
                parsed = dataclasses.replace(parsed, instructions=module.instructions)
            if parsed is not None and module.demos:
                fields = (*parsed.input_fields, *parsed.output_fields)
                for i, demo in enumerate(module.demos):
                    where = f"modules.{name}.demos[{i}]"
                    problems.extend(dspy_value_problems(fields, demo, where))
            if parsed is not None:
                signatures[name] = parsed
        if problems or signature is None:
            raise SpecError(f"invalid program spec {spec.name!r}:", problems)
        self._spec = spec
        self._base_dir = base_dir
        self._signature = signature
        self._signatures = MappingProxyType(signatures)
        self._graph: Graph | None = None
        self._plan: Plan | None = None

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path | None = None) -> Program:
        """Load a program from its dict form (as parsed from YAML or JSON).

        Args:
            data: the spec.
            base_dir: where relative corpus paths resolve (default: the working directory).

        Raises:
            SpecError: the spec is malformed; ``errors`` has every problem with its path.
        """
        return cls(parse_spec(data), base_dir=Path(base_dir) if base_dir is not None else None)

    @classmethod
    def from_yaml(cls, text: str | bytes, *, base_dir: str | Path | None = None) -> Program:
        """Load a program from a YAML document (the reader :meth:`from_file` uses).

        Aliases (``*name``) are refused, since a few bytes of them can stand for megabytes of
        spec, and so is nesting deeper than 64 levels.

        Args:
            text: the YAML spec.
            base_dir: where relative corpus paths resolve (default: the working directory).

        Raises:
            SpecError: the YAML does not parse (``yaml_invalid``), uses an alias
                (``yaml_alias``), nests too deep (``too_deep``), or the spec is malformed.
        """
        return cls.from_dict(load_yaml_spec(text), base_dir=base_dir)

    @classmethod
    def from_file(cls, path: str | Path) -> Program:
        """Load a program from a YAML (``.yaml``/``.yml``) or JSON file.

        Relative corpus paths in the spec resolve against the file's directory. YAML is read
        as by :meth:`from_yaml` (no aliases).

        Raises:
            NotFoundError: the file does not exist.
            SpecError: the file does not parse or the spec is malformed.
        """
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFoundError(f"program file not found: {file}") from None
        if file.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecError(
                    f"cannot parse {file}:", [ErrorDetail("", "parse_error", str(exc))]
                ) from None
            except RecursionError:  # the parser's own limit, far past MAX_SPEC_DEPTH
                problem = f"a spec may nest at most {MAX_SPEC_DEPTH} levels"
                raise SpecError(
                    f"cannot parse {file}:", [ErrorDetail("", "too_deep", problem)]
                ) from None
        else:
            data = load_yaml_spec(text, source=str(file))
        return cls.from_dict(data, base_dir=file.resolve().parent)

    @classmethod
    def from_dspy(
        cls,
        module: Any,
        *,
        name: str,
        signature: str | Mapping[str, Any] | Signature | type | None = None,
        init: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | str | Path | None = None,
        backend: str | None = None,
        allowed_imports: Sequence[str] | None = None,
    ) -> Program:
        """A one-module program around an existing DSPy module.

        A ``dspy.Module`` (an instance, a class, or ``"pkg.mod:Class"``) becomes a ``dspy``
        module: its class is referenced by name (so it must be importable, and allow-listed
        where it runs), built with ``init`` and loaded with its state. An instance's state is
        taken from it (``dump_state()``); for a class, ``state`` is a state mapping or the
        ``.json`` file ``Module.save`` wrote. The state is checked against a module built with
        ``init`` and stored inline, so the program carries its optimized demos and instructions.
        A bare ``dspy.Predict`` or ``dspy.ChainOfThought`` becomes a native ``predict`` or
        ``chain_of_thought`` module with its demos.

        The signature is derived when the module has one predictor (its outputs, and inputs as
        ``forward`` takes them); otherwise give it.

        Example:
            >>> program = Program.from_dspy(optimized_qa, name="qa")  # doctest: +SKIP
            >>> program = Program.from_dspy(  # doctest: +SKIP
            ...     RAG, name="rag", init={"k": 3}, state="rag.json"
            ... )

        Args:
            module: a ``dspy.Module`` instance or class, or ``"pkg.mod:Class"``.
            name: the program name.
            signature: the program's signature (required for several predictors).
            init: constructor keyword arguments (JSON values).
            state: with a class: a state mapping or a ``.json`` state file.
            backend: the backend the module runs on (default ``"default"``).
            allowed_imports: with ``"pkg.mod:Class"``: the prefixes it must be under before it
                is imported (``None``: no check, the caller trusts it).

        Raises:
            SecurityError: the reference is outside ``allowed_imports`` (the message names the
                entry that would permit it); nothing was imported.
            SpecError: the module cannot be imported or built, its state does not fit it, or
                its signature cannot be derived.
        """
        from dspex.engine.dspy_modules import program_spec

        spec = program_spec(
            module,
            name=name,
            signature=signature,
            init=init,
            state=state,
            backend=backend,
            allowed_imports=allowed_imports,
        )
        return cls.from_dict(spec)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data; ``Program.from_dict(p.to_dict()) == p``."""
        return self._spec.to_dict()

    # ------------------------------------------------------------------------------ reading

    @property
    def spec(self) -> ProgramSpec:
        return self._spec

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    @property
    def signature(self) -> Signature:
        """The program's external contract."""
        return self._signature

    @property
    def modules(self) -> Mapping[str, ModuleSpec]:
        """Module specs by name, in spec order."""
        return self._spec.modules

    def module_signature(self, name: str) -> Signature:
        """The parsed signature of module ``name``.

        Raises:
            KeyError: no such module.
        """
        return self._signatures[name]

    @property
    def graph(self) -> Graph:
        """The validated graph (built once).

        Raises:
            GraphCycleError: the modules form a cycle.
            GraphError: references, types or outputs are wrong (``errors`` lists all).
        """
        if self._graph is None:
            self._graph = build_graph(
                self._signature, self._spec.modules, self._signatures, self._spec.outputs
            )
        return self._graph

    def validate(self) -> list[ErrorDetail]:
        """Every graph problem, without raising (empty when the graph is valid)."""
        try:
            self.graph  # noqa: B018 - building the graph is the validation
        except GraphError as exc:
            return list(exc.errors)
        return []

    def plan(self, durations: Mapping[str, float] | None = None) -> Plan:
        """Analyse the graph: order, levels, critical path, slack, width.

        Args:
            durations: recorded durations in ms by module name (for example from history);
                modules without one use their ``estimated_ms`` or a per-kind default.

        Raises:
            GraphError: the graph is invalid (see :attr:`graph`).
        """
        if durations is None and self._plan is not None:
            return self._plan
        plan = analyze(self.graph, tuple(self._spec.modules.values()), durations)
        if durations is None:
            self._plan = plan
        return plan

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Program):
            return NotImplemented
        return self._spec == other._spec

    __hash__ = None  # type: ignore[assignment]  # mutable-looking dict fields; equality by value

    def __repr__(self) -> str:
        return f"Program(name={self.name!r}, modules={len(self._spec.modules)})"


def _signature_or_problem(
    value: SignatureInput, path: str, problems: list[ErrorDetail]
) -> Signature | None:
    try:
        return parse_signature(value)
    except SignatureError as exc:
        details = exc.errors or [ErrorDetail("", exc.code, exc.message)]
        for detail in details:
            where = f"{path}.{detail.field}" if detail.field else path
            problems.append(ErrorDetail(where, detail.code, detail.message))
        return None
