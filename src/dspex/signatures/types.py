"""The dspex type system: an immutable tree of type nodes, field constraints and field specs.

A type expression string such as ``list[dict[str, int | float]]`` parses into a tree of the node
classes below. The tree is the one representation every other part uses: the validator compiler
(:mod:`dspex.signatures.compile`), schema export, DSPy conversion, sample generation and the mock
backend. Nodes are frozen and hashable so compiled validators can be cached by type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ConfidenceScore",
    "Constraints",
    "DictType",
    "DspyType",
    "Embedding",
    "FieldSpec",
    "ListType",
    "LiteralType",
    "ModelType",
    "OptionalType",
    "Probability",
    "ReasoningChain",
    "Scalar",
    "ScalarName",
    "TypeNode",
    "UnionType",
    "constraint_applies",
    "kinds_of",
]

ScalarName = Literal["str", "int", "float", "bool"]


@dataclass(frozen=True, slots=True)
class Scalar:
    """``str``, ``int``, ``float`` or ``bool``."""

    name: ScalarName


@dataclass(frozen=True, slots=True)
class LiteralType:
    """``Literal['a', 'b']`` (also written ``enum['a', 'b']``): one of fixed values."""

    values: tuple[str | int | float | bool, ...]


@dataclass(frozen=True, slots=True)
class Embedding:
    """A non-empty list of numbers; ``dim`` fixes its length when given (``embedding[384]``)."""

    dim: int | None = None


@dataclass(frozen=True, slots=True)
class Probability:
    """A float in [0, 1]."""


@dataclass(frozen=True, slots=True)
class ConfidenceScore:
    """A float in [0, 1], meant as the model's confidence in its own answer."""


@dataclass(frozen=True, slots=True)
class ReasoningChain:
    """A list of reasoning steps (strings)."""


@dataclass(frozen=True, slots=True)
class ListType:
    item: TypeNode


@dataclass(frozen=True, slots=True)
class DictType:
    key: TypeNode
    value: TypeNode


@dataclass(frozen=True, slots=True)
class UnionType:
    """``A | B | …`` with at least two options (flattened, no duplicates)."""

    options: tuple[TypeNode, ...]


@dataclass(frozen=True, slots=True)
class OptionalType:
    """``optional[T]``: ``T`` or ``None``."""

    inner: TypeNode


@dataclass(frozen=True, slots=True)
class ModelType:
    """A nested pydantic model, available from Python and DSPy signatures (not from strings)."""

    model: type[BaseModel]


@dataclass(frozen=True, slots=True)
class DspyType:
    """One of DSPy's own field types: ``Image``, ``Audio``, ``History``, ``Tool``, ``ToolCalls``
    or ``Code``. Values are JSON (see :mod:`dspex.signatures.dspy_types` for the forms)."""

    name: Literal["Image", "Audio", "History", "Tool", "ToolCalls", "Code"]
    language: str | None = None
    """``Code`` only: the programming language (``Code[javascript]``); DSPy's default is Python."""


TypeNode: TypeAlias = (
    Scalar
    | LiteralType
    | Embedding
    | Probability
    | ConfidenceScore
    | ReasoningChain
    | ListType
    | DictType
    | UnionType
    | OptionalType
    | ModelType
    | DspyType
)


class Constraints(BaseModel):
    """Per-field limits. Each one applies only to the types it fits (checked at validation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: float | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique_items: bool | None = None
    one_of: tuple[Any, ...] | None = None
    dim: int | None = None

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One input or output field of a signature.

    ``sensitive`` fields are recorded as ``"[redacted]"`` wherever a run is traced (steps,
    attempts' messages and responses, spans); the run itself sees the real value.
    """

    name: str
    type: TypeNode
    description: str = ""
    constraints: Constraints = field(default_factory=Constraints)
    optional: bool = False
    sensitive: bool = False


# ------------------------------------------------------------- which constraints fit which types

_SCALAR_KIND = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_STRING_CONSTRAINTS = ("min_length", "max_length", "pattern")
_NUMBER_CONSTRAINTS = ("minimum", "maximum", "multiple_of")
_ITEMS_CONSTRAINTS = ("min_items", "max_items")


def kinds_of(node: TypeNode) -> frozenset[str]:
    """The JSON kinds a type's values can have: string, integer, number, boolean, array, object."""
    if isinstance(node, Scalar):
        return frozenset({_SCALAR_KIND[node.name]})
    if isinstance(node, Probability | ConfidenceScore):
        return frozenset({"number"})
    if isinstance(node, LiteralType):
        out: set[str] = set()
        for v in node.values:
            if isinstance(v, bool):
                out.add("boolean")
            elif isinstance(v, int):
                out.add("integer")
            elif isinstance(v, float):
                out.add("number")
            else:
                out.add("string")
        return frozenset(out)
    if isinstance(node, Embedding | ReasoningChain | ListType):
        return frozenset({"array"})
    if isinstance(node, DictType | ModelType):
        return frozenset({"object"})
    if isinstance(node, DspyType):
        return frozenset({"string" if node.name in ("Image", "Code") else "object"})
    if isinstance(node, UnionType):
        return frozenset().union(*(kinds_of(o) for o in node.options))
    if isinstance(node, OptionalType):
        return kinds_of(node.inner)
    raise TypeError(f"not a type node: {node!r}")  # pragma: no cover


def constraint_applies(name: str, node: TypeNode) -> bool:
    """Whether constraint ``name`` means something for values of ``node`` (unions: any option)."""
    if isinstance(node, OptionalType):
        return constraint_applies(name, node.inner)
    if isinstance(node, UnionType):
        return any(constraint_applies(name, o) for o in node.options)
    if isinstance(node, DspyType):
        return False  # DSPy's types have fixed JSON forms; limits on them mean nothing
    if name == "dim":
        return isinstance(node, Embedding)
    if name == "one_of":
        return not isinstance(node, Embedding | ReasoningChain | ListType | DictType | ModelType)
    kinds = kinds_of(node)
    if isinstance(node, LiteralType):
        return False  # a literal's values are already fixed
    if name in _STRING_CONSTRAINTS:
        return "string" in kinds
    if name in _NUMBER_CONSTRAINTS:
        return bool(kinds & {"integer", "number"})
    if name in _ITEMS_CONSTRAINTS:
        return "array" in kinds or isinstance(node, DictType)
    if name == "unique_items":
        return "array" in kinds
    return False  # pragma: no cover - Constraints forbids other names
