"""Type compatibility between fields: can a producer's output feed a consumer's input?

The graph engine checks every edge of a program before it runs: ``retrieve.passages`` may feed
``generate.context`` only if every value the producer can emit is a value the consumer accepts.
The rule is *value-set inclusion* on the type tree, ignoring constraints (those are enforced at run
time by the validators):

- identical types, and ``int`` into ``float`` (widening; ``bool`` is never an ``int`` here);
- ``probability``/``confidence_score`` into ``float`` and into each other (both are floats in
  [0, 1]);
- a ``Literal`` into the scalar all its values belong to, or into a ``Literal`` with more values;
- ``embedding`` into ``list[float]`` (and ``embedding[n]`` into ``embedding`` or ``embedding[n]``);
- ``reasoning_chain`` into ``list[str]`` and back;
- ``X`` into ``optional[X]`` and into a union that accepts ``X``; a union only where each of its
  options fits; an ``optional`` source only into an ``optional`` destination;
- ``list`` and ``dict`` covariantly; a pydantic model into itself or a base class;
- a DSPy type into itself (``Code`` of any language into ``Code``); ``Image`` and ``Code`` into
  ``str`` (their values are strings).

Example:
    >>> from dspex.signatures.types import ListType, Scalar
    >>> is_assignable(ListType(Scalar("int")), ListType(Scalar("float")))
    True
    >>> is_assignable(Scalar("float"), Scalar("int"))
    False
"""

from __future__ import annotations

from functools import lru_cache

from dspex.signatures.types import (
    ConfidenceScore,
    DictType,
    DspyType,
    Embedding,
    ListType,
    LiteralType,
    ModelType,
    OptionalType,
    Probability,
    ReasoningChain,
    Scalar,
    TypeNode,
    UnionType,
)

__all__ = ["is_assignable"]

_FLOAT = Scalar("float")
_STR = Scalar("str")


def is_assignable(src: TypeNode, dst: TypeNode) -> bool:
    """Whether every value of type ``src`` is a valid value of type ``dst``.

    Args:
        src: the producer's output type.
        dst: the consumer's input type.

    Returns:
        ``True`` when the edge is type-safe (constraints aside).
    """
    # ``Literal[True] == Literal[1]`` as tuples compare ``True == 1``: the reprs tell them apart.
    try:
        return _assignable(src, dst, repr(src), repr(dst))
    except TypeError:  # an unhashable node (a model type with odd metadata): decide uncached
        return _check(src, dst)


@lru_cache(maxsize=4096)
def _assignable(src: TypeNode, dst: TypeNode, src_repr: str, dst_repr: str) -> bool:
    return _check(src, dst)


def _check(src: TypeNode, dst: TypeNode) -> bool:
    if src == dst and repr(src) == repr(dst):
        return True
    # Destinations that widen the value set come first: optional and union.
    if isinstance(dst, OptionalType):
        inner_src = src.inner if isinstance(src, OptionalType) else src
        return is_assignable(inner_src, dst.inner)
    if isinstance(src, OptionalType):
        return False  # None would reach a consumer that does not accept it
    if isinstance(src, UnionType):
        return all(is_assignable(option, dst) for option in src.options)
    if isinstance(dst, UnionType):
        return any(is_assignable(src, option) for option in dst.options)
    return _check_plain(src, dst)


def _check_plain(src: TypeNode, dst: TypeNode) -> bool:
    """Neither side is optional or a union."""
    if isinstance(dst, Scalar):
        return _into_scalar(src, dst)
    if isinstance(dst, Probability | ConfidenceScore):
        return isinstance(src, Probability | ConfidenceScore)
    if isinstance(dst, LiteralType):
        return isinstance(src, LiteralType) and all(
            _literal_member(value, dst.values) for value in src.values
        )
    if isinstance(dst, Embedding):
        return isinstance(src, Embedding) and (dst.dim is None or dst.dim == src.dim)
    if isinstance(dst, ReasoningChain):
        return isinstance(src, ListType) and is_assignable(src.item, _STR)
    if isinstance(dst, ListType):
        if isinstance(src, Embedding):
            return is_assignable(_FLOAT, dst.item)
        if isinstance(src, ReasoningChain):
            return is_assignable(_STR, dst.item)
        return isinstance(src, ListType) and is_assignable(src.item, dst.item)
    if isinstance(dst, DictType):
        return (
            isinstance(src, DictType)
            and is_assignable(src.key, dst.key)
            and is_assignable(src.value, dst.value)
        )
    if isinstance(dst, ModelType):
        return isinstance(src, ModelType) and issubclass(src.model, dst.model)
    if isinstance(dst, DspyType):
        # values are the same JSON whatever language a Code names
        return isinstance(src, DspyType) and src.name == dst.name
    return False


def _into_scalar(src: TypeNode, dst: Scalar) -> bool:
    if isinstance(src, Scalar):
        return src.name == dst.name or (src.name == "int" and dst.name == "float")
    if isinstance(src, Probability | ConfidenceScore):
        return dst.name == "float"
    if isinstance(src, LiteralType):
        return all(_value_fits_scalar(value, dst.name) for value in src.values)
    if isinstance(src, DspyType):
        return src.name in ("Image", "Code") and dst.name == "str"  # both are strings in JSON
    return False


def _value_fits_scalar(value: object, scalar: str) -> bool:
    # bool is a subclass of int in Python, but not in dspex's type system.
    if isinstance(value, bool):
        return scalar == "bool"
    if isinstance(value, int):
        return scalar in ("int", "float")
    if isinstance(value, float):
        return scalar == "float"
    return isinstance(value, str) and scalar == "str"


def _literal_member(value: object, values: tuple[object, ...]) -> bool:
    # ``True == 1`` in Python; compare type families too so Literal[True] is not Literal[1].
    return any(value == other and type(value) is type(other) for other in values)
