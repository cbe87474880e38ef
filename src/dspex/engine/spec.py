"""The program spec: strict pydantic models for what a YAML/JSON/dict program file says.

These models check *shape* only (names, kinds, numbers in range, kind-specific fields). Whether the
references between modules resolve, the types line up and the graph is acyclic is the graph's job
(:mod:`dspex.engine.graph`). Every shape problem is reported at once as a :class:`SpecError` whose
``errors`` carry dotted paths such as ``modules.generate.timeout``.

A minimal spec::

    name: qa
    signature: "question: str -> answer: str"
    modules:
      answer:
        kind: predict
        signature: "question: str -> answer: str"
        inputs: {question: $input.question}
    outputs: {answer: answer.answer}

``modules`` is a mapping from module name to module spec (order kept), or a list of module specs
each with a ``name``.

A spec is user input of bounded size: :func:`load_yaml_spec` (the one YAML reader of specs, for
files and HTTP bodies alike) refuses aliases, which would let a few hundred bytes expand into
megabytes, and :func:`parse_spec` refuses nesting deeper than :data:`MAX_SPEC_DEPTH`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dspex._strategies import STRATEGIES, CacheMode, Strategy
from dspex.errors import ErrorDetail, SpecError
from dspex.resilience.policy import RetryPolicy

__all__ = [
    "KINDS",
    "MAX_SPEC_DEPTH",
    "STRATEGIES",
    "FailureTolerance",
    "ModuleKind",
    "ModuleSpec",
    "ProgramSpec",
    "RetrySpec",
    "Strategy",
    "load_yaml_spec",
    "module_retry",
    "module_retry_dict",
    "parse_spec",
]

MAX_SPEC_DEPTH = 64
"""The deepest a spec may nest mappings and lists (a module's ``config`` and ``state`` included)."""

ModuleKind = Literal["predict", "chain_of_thought", "retrieve", "python", "dspy"]
KINDS: tuple[str, ...] = ("predict", "chain_of_thought", "retrieve", "python", "dspy")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMPORT_REF = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)
_THRESHOLD_TEXT = re.compile(r"^\s*threshold\s*[:=]\s*(\d+)\s*$")

PositiveFloat = Annotated[float, Field(gt=0)]
SignatureInput = str | dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


RetrySpec = RetryPolicy
"""A module's retry policy: the one :class:`~dspex.resilience.RetryPolicy` (see
:func:`module_retry` for how a spec writes it)."""

MODULE_MAX_ATTEMPTS = 1
"""A module's attempts when its ``retry`` leaves ``max_attempts`` out, or it has no ``retry``."""


def module_retry(value: Any) -> Any:
    """A module's ``retry`` as a spec writes it, made a :class:`RetryPolicy` input.

    An int is shorthand for ``max_attempts``; a table without ``max_attempts`` means
    :data:`MODULE_MAX_ATTEMPTS` (a module retries only when it says how often), unlike a
    ``[coordinators.NAME.retry]`` table. Anything else is left to validation.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return {"max_attempts": value}
    if isinstance(value, Mapping) and "max_attempts" not in value:
        return {"max_attempts": MODULE_MAX_ATTEMPTS, **value}
    return value


def module_retry_dict(policy: RetryPolicy) -> dict[str, Any]:
    """The compact spec form of a module's policy (inverse of :func:`module_retry`)."""
    data = policy.model_dump(mode="json", exclude_defaults=True)
    data.pop("max_attempts", None)
    if policy.max_attempts != MODULE_MAX_ATTEMPTS or not data:
        data = {"max_attempts": policy.max_attempts, **data}
    return data


class FailureTolerance(_Strict):
    """What a failed module does to the run.

    ``strict``: the first failure fails the run and cancels running siblings. ``tolerant``: the
    failed module's dependents are skipped, everything else continues. ``threshold``: tolerant until
    more than ``threshold`` modules have failed, then strict.

    In a spec it is written ``strict``, ``tolerant``, ``{threshold: N}`` or ``"threshold: N"``.
    """

    mode: Literal["strict", "tolerant", "threshold"] = "strict"
    threshold: int = Field(default=0, ge=0)

    def allows(self, failures: int) -> bool:
        """Whether the run may go on after ``failures`` modules have failed."""
        if self.mode == "strict":
            return failures == 0
        if self.mode == "tolerant":
            return True
        return failures <= self.threshold

    def to_spec(self) -> str | dict[str, int]:
        """The compact spec form (inverse of parsing)."""
        return {"threshold": self.threshold} if self.mode == "threshold" else self.mode

    @model_validator(mode="before")
    @classmethod
    def _from_short_forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _THRESHOLD_TEXT.match(value)
            if match:
                return {"mode": "threshold", "threshold": int(match.group(1))}
            return {"mode": value}
        if isinstance(value, Mapping) and set(value) == {"threshold"}:
            return {"mode": "threshold", "threshold": value["threshold"]}
        return value


class ModuleSpec(_Strict):
    """One module of a program.

    Attributes:
        kind: ``predict``, ``chain_of_thought``, ``retrieve``, ``python`` or ``dspy``.
        signature: the module's own signature (string or dict form). Required except for
            ``retrieve``, which defaults to ``query: str -> passages: list[str]``.
        inputs: input field → ``$input.FIELD`` (a program input) or ``MODULE.FIELD``. A module
            input left out defaults to ``$input.<field>`` when the program has an input of that
            name and no module outputs a field of that name; optional inputs may stay unmapped.
        after: modules that must finish first although no input comes from them.
        backend: the backend name for ``predict``/``chain_of_thought``/``dspy`` (default
            ``"default"``).
        timeout: seconds one attempt may take (default: the runtime's ``[defaults] timeout``,
            30 s, for a module that calls a backend).
        retry: a retry policy (:class:`~dspex.resilience.RetryPolicy`), or an int as shorthand
            for ``max_attempts``; ``max_attempts`` left out is 1. Without ``retry`` a module that
            calls a backend gets the runtime's ``[defaults.retry]`` (3 attempts). On a
            coordinator group the group's policy retries the calls and this one makes a single
            attempt (its
            ``deadline`` still applies): see :mod:`dspex.resilience.policy`.
        resources: needs for the resource manager (``{"lm_slots": 1}``).
        config: per-call LM settings (``temperature``, ``max_tokens``, …).
        corpus: ``retrieve`` only: the corpus file, relative to the program file's directory.
        k: ``retrieve`` only: how many passages to return.
        function: ``python`` only: ``pkg.mod:function`` (must be allow-listed by the engine).
        module: ``dspy`` only: ``pkg.mod:Class`` of a ``dspy.Module`` (allow-listed).
        init: ``dspy`` only: keyword arguments for the class's constructor (JSON values).
        state: ``dspy`` only: the module's learned state as DSPy's ``.save("x.json")`` writes
            it, inline as a mapping or as the path of that file (confined like ``corpus``;
            registration stores it inline). A directory saved with ``save_program=True`` (or a
            ``.pkl`` state) runs pickled code and loads only where the engine allows pickle.
        demos: ``predict``/``chain_of_thought`` only: few-shot examples (input and output
            field values by name) put before the inputs, as a ``dspy.Predict``'s ``demos``.
        instructions: ``predict``/``chain_of_thought`` only: the task instructions, in place of
            those of the module's signature (DSPy's signature instructions).
        cache: ``predict``/``chain_of_thought`` only: how this module uses the response cache
            (``off``, ``read_only``, ``read_write``); wins over its backend's mode, a run's
            ``--cache`` wins over it (see :mod:`dspex.resilience.cache`).
        estimated_ms: expected duration for planning when no history exists.
        description: free text.
    """

    kind: ModuleKind
    signature: SignatureInput | None = None
    inputs: dict[str, str] = Field(default_factory=dict)
    after: tuple[str, ...] = ()
    backend: str | None = None
    timeout: PositiveFloat | None = None
    retry: RetrySpec | None = None
    resources: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    corpus: str | None = None
    k: int = Field(default=3, ge=1, le=1000)
    function: str | None = None
    module: str | None = None
    init: dict[str, Any] | None = None
    state: dict[str, Any] | str | None = None
    demos: list[dict[str, Any]] | None = None
    instructions: str | None = None
    cache: CacheMode | None = None
    estimated_ms: Annotated[float, Field(ge=0)] | None = None
    description: str = ""

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_shorthand(cls, value: Any) -> Any:
        return module_retry(value)

    @field_validator("after", mode="before")
    @classmethod
    def _after_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _kind_fields(self) -> ModuleSpec:
        problems: list[str] = []
        needs_signature = self.kind != "retrieve"
        if needs_signature and self.signature is None:
            problems.append(f"a {self.kind} module needs a signature")
        _only_for(problems, self.kind, "retrieve", corpus=self.corpus)
        _only_for(problems, self.kind, "python", function=self.function)
        _only_for(problems, self.kind, "dspy", module=self.module, init=self.init, state=self.state)
        if self.demos is not None and self.kind not in ("predict", "chain_of_thought"):
            problems.append("'demos' applies only to predict and chain_of_thought modules")
        if self.instructions is not None and self.kind not in ("predict", "chain_of_thought"):
            problems.append("'instructions' applies only to predict and chain_of_thought modules")
        if self.cache is not None and self.kind not in ("predict", "chain_of_thought"):
            problems.append("'cache' applies only to predict and chain_of_thought modules")
        if self.kind == "retrieve" and not self.corpus:
            problems.append("a retrieve module needs a corpus file")
        if self.kind == "python" and not self.function:
            problems.append("a python module needs function: 'pkg.mod:function'")
        if self.kind == "dspy" and not self.module:
            problems.append("a dspy module needs module: 'pkg.mod:Class'")
        for ref in (self.function, self.module):
            if ref is not None and not _IMPORT_REF.match(ref):
                problems.append(f"{ref!r} is not an import reference of the form 'pkg.mod:name'")
        if self.kind == "python" and self.backend is not None:
            problems.append("a python module does not use a backend")
        problems.extend(_state_problems(self.state))
        for name, value in (("init", self.init), ("state", self.state), ("demos", self.demos)):
            if value is not None and not _is_json(value):
                problems.append(f"{name!r} must hold JSON values only (strings, numbers, …)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def backend_name(self) -> str:
        """The backend this module calls (``"default"`` unless set)."""
        return self.backend or "default"


def _only_for(problems: list[str], kind: str, allowed: str, **fields: object) -> None:
    for name, value in fields.items():
        if value is not None and kind != allowed:
            problems.append(f"{name!r} applies only to {allowed} modules")


def _state_problems(state: Mapping[str, Any] | str | None) -> list[str]:
    """What is wrong with the shape of a ``state`` (its fit to the module is checked when the
    module is built)."""
    if isinstance(state, str):
        return [] if state.strip() else ["'state' must be a file path or a mapping"]
    if state is None:
        return []
    # DSPy's .save() writes one entry per predictor, plus its own "metadata"
    bad = [k for k, value in state.items() if k != "metadata" and not isinstance(value, Mapping)]
    if bad:
        return [f"'state' entries must be predictor states (mappings): {bad[:5]}"]
    return []


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


class ProgramSpec(_Strict):
    """A whole program: external signature, modules, output mapping and run policy.

    Attributes:
        name: the program name (letters, digits, ``_``, ``-``, ``.``).
        signature: the program's external contract (string or dict form).
        modules: module name → :class:`ModuleSpec`, in spec order.
        outputs: program output field → ``MODULE.FIELD`` or ``$input.FIELD``. An output left out
            defaults to the one module that outputs a field of that name.
        strategy: ``sequential``, ``parallel``, ``optimized`` (default) or ``resource_aware``.
        failure_tolerance: see :class:`FailureTolerance`.
        description: free text.
        metadata: free JSON for tools (tags, owners, …).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", max_length=200)
    signature: SignatureInput
    modules: dict[str, ModuleSpec] = Field(min_length=1)
    outputs: dict[str, str] = Field(default_factory=dict)
    strategy: Strategy = "optimized"
    failure_tolerance: FailureTolerance = Field(default_factory=FailureTolerance)
    description: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("modules", mode="before")
    @classmethod
    def _modules_as_mapping(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out: dict[str, Any] = {}
        for position, item in enumerate(value):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise ValueError(f"modules[{position}] needs a string 'name'")
            name = item["name"]
            if name in out:
                raise ValueError(f"duplicate module name {name!r}")
            out[name] = {k: v for k, v in item.items() if k != "name"}
        return out

    @field_validator("modules", mode="after")
    @classmethod
    def _module_names(cls, value: dict[str, ModuleSpec]) -> dict[str, ModuleSpec]:
        bad = [name for name in value if not _NAME.match(name) or name == "$input"]
        if bad:
            raise ValueError(f"module names must be identifiers: {bad[:5]}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """The JSON-friendly spec (defaults left out), which :func:`parse_spec` reads back."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        if "failure_tolerance" in data:
            data["failure_tolerance"] = self.failure_tolerance.to_spec()
        for name, module in self.modules.items():
            retry = module.retry
            entry = data["modules"][name]
            if retry is not None:
                entry["retry"] = module_retry_dict(retry)
        return data


def parse_spec(data: Mapping[str, Any]) -> ProgramSpec:
    """Validate a spec mapping.

    Raises:
        SpecError: with one :class:`~dspex.errors.ErrorDetail` per problem (dotted paths); a spec
            nested deeper than :data:`MAX_SPEC_DEPTH` is refused first (``too_deep``).
    """
    if not isinstance(data, Mapping):
        raise SpecError(
            "program spec must be a mapping:",
            [ErrorDetail("", "type", f"expected a mapping, got {type(data).__name__}")],
        )
    if _deeper_than(data, MAX_SPEC_DEPTH):
        raise SpecError("invalid program spec:", [_too_deep()])
    try:
        return ProgramSpec.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        details = ErrorDetail.from_pydantic(exc, skip_after={"signature"})
        raise SpecError("invalid program spec:", details) from None


def _too_deep() -> ErrorDetail:
    return ErrorDetail("", "too_deep", f"a spec may nest at most {MAX_SPEC_DEPTH} levels")


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether mappings and lists nest deeper than ``limit`` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, Mapping) else value
        for child in children:
            if isinstance(child, Mapping | list | tuple):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


class _Refused(yaml.MarkedYAMLError):
    """YAML the spec reader refuses although it parses: ``code`` says why."""

    def __init__(self, code: str, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.code = code


class _SpecLoader(yaml.SafeLoader):
    """The safe loader without aliases and with a bounded depth, refused as they are composed
    (before anything is expanded or built)."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            problem = "YAML aliases (*name) are not allowed in a spec"
            raise _Refused("yaml_alias", problem, self._mark())
        self._depth += 1
        try:
            # a leaf sits one below its mapping or list; parse_spec applies the exact limit
            if self._depth > MAX_SPEC_DEPTH + 1:
                raise _Refused("too_deep", _too_deep().message, self._mark())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _mark(self) -> yaml.Mark | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        mark: yaml.Mark | None = getattr(event, "start_mark", None)
        return mark


def load_yaml_spec(text: str | bytes, *, source: str = "the spec") -> Any:
    """The data of a YAML spec document, read with the safe loader.

    Aliases (``*name``, merge keys ``<<: *name`` included) are refused: each copies a whole
    subtree, so a few hundred bytes of anchors can stand for megabytes of spec. Nesting deeper
    than :data:`MAX_SPEC_DEPTH` is refused too. Both are found while the document is read,
    before anything is expanded.

    Args:
        text: the YAML document.
        source: what to call it in the error message (a file name).

    Raises:
        SpecError: the document does not parse (``yaml_invalid``), uses an alias
            (``yaml_alias``) or nests too deep (``too_deep``).
    """
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise SpecError(f"cannot read {source}:", [ErrorDetail("", exc.code, str(exc))]) from None
    except yaml.YAMLError as exc:
        raise SpecError(
            f"cannot parse {source}:", [ErrorDetail("", "yaml_invalid", str(exc))]
        ) from None
    finally:
        loader.dispose()
