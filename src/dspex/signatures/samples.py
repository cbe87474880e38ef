"""Sample values for signature fields: values that must pass validation and values that must fail.

:func:`valid_sample` walks a field's type tree (:mod:`dspex.signatures.types`) and builds a value of
that type which satisfies the field's constraints. :func:`invalid_samples` lists values a correct
validator must reject, each with the reason. The deep level of signature validation uses both to
check the compiled validator against the type; the mock backend uses :func:`valid_sample` to answer
any signature without a language model.

Samplers are compiled once per field (cached) because the mock backend sits on the benchmark hot
path: a compiled sampler is a small closure that only draws random numbers.

Example:
    >>> import random
    >>> from dspex.signatures.types import Constraints, FieldSpec, Scalar
    >>> spec = FieldSpec("n", Scalar("int"), constraints=Constraints(minimum=1, maximum=3))
    >>> valid_sample(spec, random.Random(0)) in (1, 2, 3)
    True
"""

from __future__ import annotations

import math
import random
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from dspex.errors import ErrorDetail, SignatureError
from dspex.signatures import dspy_types
from dspex.signatures.types import (
    ConfidenceScore,
    Constraints,
    DictType,
    DspyType,
    Embedding,
    FieldSpec,
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

__all__ = ["MAX_SAMPLE_SIZE", "Sampler", "compile_sampler", "invalid_samples", "valid_sample"]

Sampler = Callable[[random.Random], Any]

MAX_SAMPLE_SIZE = 100_000
"""The most values one generated sample may hold: each string character, list item, dict entry,
embedding number and scalar counts one. A field whose smallest valid value is larger cannot be
sampled (``sample_too_large``); an invalid value that would be larger is not generated."""

_WORDS = (
    "alpha", "bravo", "delta", "river", "stone", "cloud", "paris", "answer", "light", "north",
    "model", "graph", "quiet", "green", "seven", "table", "orbit", "maple", "ocean", "lemon",
)  # fmt: skip
_NO_CONSTRAINTS = Constraints()
_DEFAULT_INT_SPAN = 1000
_OPTIONAL_NONE_RATE = 0.2  # optional values are sometimes None, so consumers see both shapes
_MAX_REGEX_REPEAT = 8  # unbounded regex repeats (*, +) draw at most this many
_SENTENCE_SIZE = 6 * (max(map(len, _WORDS)) + 1)  # _sentence_sampler: up to six words
_MAX_WALK_STEPS = 4 * MAX_SAMPLE_SIZE  # characters and repeat turns of one pattern sample

_Built = tuple[Sampler, int]
"""A sampler and the most values one of its samples can hold (see :data:`MAX_SAMPLE_SIZE`)."""


def valid_sample(field: FieldSpec, rng: random.Random) -> Any:
    """A value of ``field``'s type that satisfies its constraints.

    Args:
        field: the field to sample.
        rng: the source of randomness; the same state gives the same value.

    Returns:
        A JSON-friendly value (nested pydantic models come back as dicts).

    Raises:
        SignatureError: the constraints cannot be satisfied together (for example ``minimum`` above
            ``maximum``), so no valid value exists (``unsatisfiable``); or the smallest valid
            value holds more than :data:`MAX_SAMPLE_SIZE` values (``sample_too_large``).
    """
    return compile_sampler(field)(rng)


@lru_cache(maxsize=4096)
def compile_sampler(field: FieldSpec) -> Sampler:
    """Compile (once per field) a closure that draws valid values for ``field``.

    Every value it draws holds at most :data:`MAX_SAMPLE_SIZE` values: when the usual draws could
    be larger, each list, dict, string and embedding is drawn at its smallest allowed size.

    Raises:
        SignatureError: the constraints cannot be satisfied together (``unsatisfiable``), or the
            smallest valid value is too large to generate (``sample_too_large``).
    """
    try:
        sampler, size = _bounded(field.type, field.constraints)
    except _Unsatisfiable as exc:
        raise SignatureError(
            f"field {field.name!r} has no valid value:",
            [ErrorDetail(field.name, "unsatisfiable", str(exc))],
        ) from exc
    if size > MAX_SAMPLE_SIZE:
        raise SignatureError(
            f"field {field.name!r} is too large to sample:",
            [
                ErrorDetail(
                    field.name,
                    "sample_too_large",
                    f"its smallest valid value holds up to {size} values, more than the"
                    f" {MAX_SAMPLE_SIZE} a generated sample may hold",
                )
            ],
        )
    # ``optional`` means the field may be left out, not that it may be null: an explicit None is
    # valid only for an ``optional[T]`` type, which the type walk already handles.
    return sampler


class _Unsatisfiable(Exception):
    """Internal: the constraints of a node admit no value."""


def _bounded(node: TypeNode, c: Constraints) -> _Built:
    """The usual sampler when its samples fit :data:`MAX_SAMPLE_SIZE`, else the smallest draws
    (whose size may still be too large: the caller decides)."""
    built = _build(node, c, small=False)
    if built[1] <= MAX_SAMPLE_SIZE:
        return built
    return _build(node, c, small=True)


# --------------------------------------------------------------------------------------------
# valid values


def _build(node: TypeNode, c: Constraints, *, small: bool) -> _Built:
    """Constraints apply where they fit: through optional and union to the node of their kind.

    With ``small`` every list, dict, string and free-length embedding is drawn at its smallest
    allowed size, so only what the constraints demand makes a sample large.
    """
    if c.one_of is not None:
        return _one_of_sampler(node, c), 1
    match node:
        case Scalar(name="str"):
            return _str_sampler(c, small=small)
        case Scalar(name="int"):
            return _int_sampler(c), 1
        case Scalar(name="float"):
            return _float_sampler(c, default_low=-100.0, default_high=100.0), 1
        case Scalar(name="bool"):
            return (lambda rng: rng.random() < 0.5), 1
        case LiteralType(values=values):
            return (lambda rng: rng.choice(values)), 1
        case Probability() | ConfidenceScore():
            return _float_sampler(c, default_low=0.0, default_high=1.0, hard=(0.0, 1.0)), 1
        case Embedding(dim=dim):
            return _embedding_sampler(dim if dim is not None else c.dim, c, small=small)
        case ReasoningChain():
            sentences = (_sentence_sampler, _SENTENCE_SIZE)
            return _list_sampler(sentences, c, small=small, default_max=4, at_least=1)
        case ListType(item=item):
            items = _build(item, _NO_CONSTRAINTS, small=small)
            return _list_sampler(items, c, small=small, default_max=3)
        case DictType(key=key, value=value):
            return _dict_sampler(key, value, c, small=small)
        case OptionalType(inner=inner):
            sampler, size = _build(inner, c, small=small)
            return _maybe_none(sampler), size
        case UnionType(options=options):
            return _union_sampler(options, c, small=small)
        case ModelType(model=model):
            return _model_sampler(model, small=small)
        case DspyType(name=name):
            return (lambda rng: dspy_types.sample(name, rng.randrange(4))), 1
    raise TypeError(f"unknown type node: {node!r}")  # pragma: no cover - the union is closed


def _node_sampler(node: TypeNode, c: Constraints) -> Sampler:
    """A sampler of ``node`` whose samples fit :data:`MAX_SAMPLE_SIZE`, if any can."""
    return _bounded(node, c)[0]


def _maybe_none(inner: Sampler) -> Sampler:
    def sample(rng: random.Random) -> Any:
        return None if rng.random() < _OPTIONAL_NONE_RATE else inner(rng)

    return sample


def _one_of_sampler(node: TypeNode, c: Constraints) -> Sampler:
    assert c.one_of is not None
    allowed = tuple(v for v in c.one_of if _plain_accepts(node, v))
    if not allowed:
        raise _Unsatisfiable(f"no value of one_of {list(c.one_of)} has the field's type")
    return lambda rng: rng.choice(allowed)


def _sentence_sampler(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))


def _str_sampler(c: Constraints, *, small: bool) -> _Built:
    low = c.min_length or 0
    high = c.max_length if c.max_length is not None else max(low, 1) + 24
    if low > high:
        raise _Unsatisfiable(f"min_length {low} is above max_length {high}")
    if c.pattern is not None:
        return _pattern_sampler(c.pattern, low, high)
    shortest = max(low, min(high, 3)) if high > 0 else 0
    longest = shortest if small else high

    def sample(rng: random.Random) -> str:
        target = rng.randint(shortest, longest) if high > 0 else 0
        words: list[str] = []
        size = 0
        while size < target:
            word = rng.choice(_WORDS)
            words.append(word)
            size += len(word) + 1
        return " ".join(words)[:target].rstrip().ljust(target, "x")

    return sample, longest


def _pattern_sampler(pattern: str, low: int, high: int) -> _Built:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise _Unsatisfiable(f"pattern {pattern!r} cannot be sampled: {exc}") from exc
    tree: _Seq = ()
    tries = 200
    try:
        tree = _RegexParser(pattern).parse()
    except _UnsupportedRegex:
        tries = 0  # outside the subset the walk knows: sampling finds no string
    if low > MAX_SAMPLE_SIZE:
        return _never, low  # too large to generate: compile_sampler says so
    room = min(high, MAX_SAMPLE_SIZE)

    def sample(rng: random.Random) -> str:
        # Rejection sampling: the regex walk ignores lengths, so retry until both hold. A walk
        # stops as soon as it is longer than ``room``; all the walks of one sample share a
        # budget of work, so a pattern that cannot fit gives up instead of running on.
        walk = _Walk(rng)
        for _ in range(tries):
            walk.room = room
            try:
                text = _regex_walk(tree, walk)
            except _UnsupportedRegex:
                break
            except _Overlong:
                if walk.steps < 0:
                    break
                continue
            if low <= len(text) <= high and compiled.fullmatch(text):
                return text
        raise SignatureError(
            f"no string of length {low}..{high} matching {pattern!r} was found",
            [ErrorDetail("pattern", "unsatisfiable", f"pattern {pattern!r} with lengths")],
        )

    return sample, room


def _never(rng: random.Random) -> Any:  # pragma: no cover - compile_sampler refuses it first
    raise AssertionError("a sampler too large to use was called")


class _UnsupportedRegex(Exception):
    pass


class _Overlong(Exception):
    """Internal: a regex walk passed the length (or the work) one sample may take."""


class _Walk:
    """The walks of one sample: the random source, the characters the current walk may still
    add, and the work (characters and repeat turns) left to all of them."""

    __slots__ = ("rng", "room", "steps")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.room = 0
        self.steps = _MAX_WALK_STEPS

    def spend(self, characters: int) -> None:
        self.room -= characters
        self.steps -= max(characters, 1)  # a turn of an empty repeat costs too
        if self.room < 0 or self.steps < 0:
            raise _Overlong


# The regex subset the sampler generates strings for, parsed here (the regex engine's own parser
# is private): literals, classes ``[...]``, ``\d \w \s``, ``.``, groups ``(...)`` ``(?:...)``
# ``(?P<name>...)``, alternation ``|``, quantifiers ``* + ? {m,n}`` (lazy or possessive too) and the
# anchors ``^ $``. Anything else is refused with _UnsupportedRegex; every string a walk makes is
# still checked with ``re.fullmatch``, so a wrong one is never returned.


@dataclass(frozen=True, slots=True)
class _Chars:
    """One character, drawn from ``choices``."""

    choices: str


@dataclass(frozen=True, slots=True)
class _Repeat:
    lo: int
    hi: int | None  # None: unbounded
    body: _Seq


@dataclass(frozen=True, slots=True)
class _Branch:
    """A group: one of its alternatives."""

    options: tuple[_Seq, ...]


_Node = _Chars | _Repeat | _Branch
_Seq = tuple[_Node, ...]

_ANY_CHARS = "abcxyz019"  # what ``.`` draws
_CATEGORY_CHARS = {
    "d": "0123456789",
    "w": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
    "s": " ",
}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_NEGATED_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 -_."  # what ``[^...]`` draws from
_MAX_RANGE = 200  # a class range draws from at most its first 200 characters
_QUANTIFIER = re.compile(r"\{(\d*)(,?)(\d*)\}")


class _RegexParser:
    """A recursive-descent parser of the subset above, for a pattern ``re.compile`` accepted."""

    __slots__ = ("at", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.at = 0

    def parse(self) -> _Seq:
        options = self._alternation()
        if self.at != len(self.pattern):  # pragma: no cover - re.compile refuses it
            raise _UnsupportedRegex(f"unexpected {self._peek()!r} at {self.at}")
        return options[0] if len(options) == 1 else (_Branch(options),)

    def _peek(self) -> str:
        return self.pattern[self.at] if self.at < len(self.pattern) else ""

    def _alternation(self) -> tuple[_Seq, ...]:
        options = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            options.append(self._sequence())
        return tuple(options)

    def _sequence(self) -> _Seq:
        nodes: list[_Node] = []
        while self._peek() not in ("", "|", ")"):
            atom = self._atom()
            if atom is not None:
                nodes.append(self._quantified(atom))
        return tuple(nodes)

    def _atom(self) -> _Node | None:
        ch = self._peek()
        self.at += 1
        if ch == "(":
            return self._group()
        if ch == "[":
            return _Chars(self._class())
        if ch == ".":
            return _Chars(_ANY_CHARS)
        if ch in "^$":
            return None  # anchors add no characters; fullmatch checks them
        repeat = ch in "*+?" or (ch == "{" and self._quantifier(self.at - 1) is not None)
        if repeat:  # pragma: no cover - re.compile refuses it
            raise _UnsupportedRegex(f"nothing to repeat at {self.at - 1}")
        if ch == "\\":
            return _Chars(self._escape())
        return _Chars(ch)

    def _group(self) -> _Branch:
        if self.pattern.startswith("?:", self.at):
            self.at += 2
        elif self.pattern.startswith("?P<", self.at):
            self.at = self.pattern.index(">", self.at) + 1  # re.compile checked the name
        elif self._peek() == "?":
            raise _UnsupportedRegex(f"group extension at {self.at - 1}")
        options = self._alternation()
        if self._peek() != ")":  # pragma: no cover - re.compile refuses it
            raise _UnsupportedRegex(f"unclosed group at {self.at}")
        self.at += 1
        return _Branch(options)

    def _escape(self) -> str:
        """The characters an escape (after its backslash) stands for."""
        ch = self._peek()
        self.at += 1
        if ch in _CATEGORY_CHARS:
            return _CATEGORY_CHARS[ch]
        if ch in _CHAR_ESCAPES:
            return _CHAR_ESCAPES[ch]
        if not ch or (ch.isascii() and ch.isalnum()):
            raise _UnsupportedRegex(f"escape \\{ch} is not supported")
        return ch  # an escaped punctuation character stands for itself

    def _class(self) -> str:
        negate = self._peek() == "^"
        if negate:
            self.at += 1
        choices: list[str] = []
        first = True
        while True:
            ch = self._peek()
            if not ch:  # pragma: no cover - re.compile refuses it
                raise _UnsupportedRegex("unclosed character class")
            self.at += 1
            if ch == "]" and not first:
                break
            first = False
            if ch == "\\":
                ch = self._escape()
            if self._peek() == "-" and self.pattern[self.at + 1 : self.at + 2] not in ("", "]"):
                self.at += 1
                hi = self._peek()
                self.at += 1
                if hi == "\\":
                    hi = self._escape()
                if len(ch) != 1 or len(hi) != 1:  # pragma: no cover - re.compile refuses it
                    raise _UnsupportedRegex("a class range needs two characters")
                start = ord(ch)
                choices.extend(chr(i) for i in range(start, min(ord(hi), start + _MAX_RANGE) + 1))
            else:
                choices.extend(ch)
        if negate:
            excluded = set(choices)
            choices = [ch for ch in _NEGATED_CHARS if ch not in excluded]
        if not choices:
            raise _UnsupportedRegex("empty character class")
        return "".join(choices)

    def _quantifier(self, at: int) -> tuple[int, int | None, int] | None:
        """The repeat bounds at ``at`` and where it ends, or None when there is no quantifier
        (``{`` not followed by ``m``, ``m,``, ``,n``, ``m,n`` or ``,`` and ``}`` is a literal)."""
        ch = self.pattern[at : at + 1]
        if ch in ("*", "+", "?"):
            return (0 if ch != "+" else 1), (1 if ch == "?" else None), at + 1
        if ch != "{":
            return None
        match = _QUANTIFIER.match(self.pattern, at)
        if match is None or match.group() == "{}":
            return None
        lo_text, comma, hi_text = match.groups()
        lo = int(lo_text) if lo_text else 0
        hi = int(hi_text) if hi_text else (None if comma else lo)
        return lo, hi, match.end()

    def _quantified(self, atom: _Node) -> _Node:
        quantifier = self._quantifier(self.at)
        if quantifier is None:
            return atom
        lo, hi, self.at = quantifier
        if self._peek() in ("?", "+"):
            self.at += 1  # lazy or possessive: the same strings match
        return _Repeat(lo, hi, (atom,))


def _regex_walk(seq: _Seq, walk: _Walk) -> str:
    rng = walk.rng
    out: list[str] = []
    for node in seq:
        if isinstance(node, _Chars):
            walk.spend(1)
            out.append(rng.choice(node.choices))
        elif isinstance(node, _Repeat):
            if node.lo > MAX_SAMPLE_SIZE:
                raise _UnsupportedRegex(f"a repeat of at least {node.lo} is longer than a sample")
            hi = node.lo + _MAX_REGEX_REPEAT if node.hi is None else node.hi
            for _ in range(rng.randint(node.lo, hi)):
                walk.spend(0)
                out.append(_regex_walk(node.body, walk))
        else:
            out.append(_regex_walk(rng.choice(node.options), walk))
    return "".join(out)


def _int_sampler(c: Constraints) -> Sampler:
    low = math.ceil(c.minimum) if c.minimum is not None else None
    high = math.floor(c.maximum) if c.maximum is not None else None
    if low is None and high is None:
        low, high = -_DEFAULT_INT_SPAN, _DEFAULT_INT_SPAN
    elif low is None:
        assert high is not None
        low = high - _DEFAULT_INT_SPAN
    elif high is None:
        high = low + _DEFAULT_INT_SPAN
    if low > high:
        raise _Unsatisfiable(f"no integer between minimum {c.minimum} and maximum {c.maximum}")
    step = c.multiple_of
    if step is None:
        lo, hi = low, high
        return lambda rng: rng.randint(lo, hi)
    if step <= 0:
        raise _Unsatisfiable(f"multiple_of must be positive, got {step}")
    if float(step) != int(step):
        # A fractional step (0.5, 2.5): list the integers on its grid in a bounded window.
        grid = [n for n in range(low, min(high, low + 10_000) + 1) if n % step == 0]
        if not grid:
            raise _Unsatisfiable(f"no integer multiple of {step} between {low} and {high}")
        return lambda rng: rng.choice(grid)
    k = int(step)
    first, last = math.ceil(low / k), math.floor(high / k)
    if first > last:
        raise _Unsatisfiable(f"no multiple of {k} between {low} and {high}")
    return lambda rng: rng.randint(first, last) * k


def _float_sampler(
    c: Constraints,
    *,
    default_low: float,
    default_high: float,
    hard: tuple[float, float] | None = None,
) -> Sampler:
    low = c.minimum if c.minimum is not None else None
    high = c.maximum if c.maximum is not None else None
    if hard is not None:
        low = max(hard[0], low) if low is not None else hard[0]
        high = min(hard[1], high) if high is not None else hard[1]
    if low is None and high is None:
        low, high = default_low, default_high
    elif low is None:
        assert high is not None
        low = high - (default_high - default_low)
    elif high is None:
        high = low + (default_high - default_low)
    assert low is not None
    assert high is not None
    if low > high:
        raise _Unsatisfiable(f"no number between minimum {low} and maximum {high}")
    step = c.multiple_of
    if step is not None:
        if step <= 0:
            raise _Unsatisfiable(f"multiple_of must be positive, got {step}")
        first, last = math.ceil(low / step), math.floor(high / step)
        if first > last:
            raise _Unsatisfiable(f"no multiple of {step} between {low} and {high}")
        return lambda rng: _round_multiple(rng.randint(first, last), step)
    lo, hi = low, high
    return lambda rng: round(rng.uniform(lo, hi), 4) if hi - lo > 1e-3 else lo


def _round_multiple(k: int, step: float) -> float:
    # k*step can land a hair off the grid (0.1*3); rounding to the step's decimals fixes that.
    decimals = max(0, -math.floor(math.log10(step)) + 2)
    return float(round(k * step, decimals))


def _embedding_sampler(dim: int | None, c: Constraints, *, small: bool) -> _Built:
    # A dim fixes the length; item limits only apply to embeddings of free length.
    if dim is not None:
        low = high = dim
    else:
        low = max(1, c.min_items or 0)
        high = c.max_items if c.max_items is not None else low + 7
    if low < 1 or low > high:
        raise _Unsatisfiable(f"no embedding length fits dim {dim} and the item limits")
    longest = low if small else high

    def sample(rng: random.Random) -> list[float]:
        size = rng.randint(low, longest) if low != longest else low
        return [round(rng.uniform(-1.0, 1.0), 6) for _ in range(size)]

    return sample, longest


def _list_sampler(
    item_built: _Built, c: Constraints, *, small: bool, default_max: int, at_least: int = 0
) -> _Built:
    item, item_size = item_built
    high = c.max_items if c.max_items is not None else max(c.min_items or 0, 1) + default_max
    low = max(c.min_items or 0, min(at_least, high))
    if low > high:
        raise _Unsatisfiable(f"min_items {low} is above max_items {high}")
    longest = low if small else high
    unique = bool(c.unique_items)

    def sample(rng: random.Random) -> list[Any]:
        size = rng.randint(low, longest)
        if not unique:
            return [item(rng) for _ in range(size)]
        out: list[Any] = []
        seen: set[str] = set()
        for _ in range(size * 20 + 20):
            if len(out) == size:
                break
            value = item(rng)
            key = repr(value)
            if key not in seen:
                seen.add(key)
                out.append(value)
        if len(out) < low:
            raise SignatureError(
                f"could not draw {low} unique items",
                [ErrorDetail("unique_items", "unsatisfiable", "too few distinct item values")],
            )
        return out

    return sample, 1 + longest * item_size


def _dict_sampler(key: TypeNode, value: TypeNode, c: Constraints, *, small: bool) -> _Built:
    low = c.min_items or 0
    high = c.max_items if c.max_items is not None else max(low, 1) + 2
    if isinstance(key, LiteralType):
        high = min(high, len(set(key.values)))
    if low > high:
        raise _Unsatisfiable(f"a dict cannot have between {low} and {high} distinct keys")
    draw_key, key_size = _build(key, _NO_CONSTRAINTS, small=small)
    draw_value, value_size = _build(value, _NO_CONSTRAINTS, small=small)
    longest = low if small else high

    def sample(rng: random.Random) -> dict[Any, Any]:
        size = rng.randint(low, longest)
        out: dict[Any, Any] = {}
        for attempt in range(size * 20 + 20):
            if len(out) >= size:
                break
            # Distinct keys: a word-based key gets a numeric suffix once collisions start.
            k = draw_key(rng)
            if k in out and isinstance(k, str) and not isinstance(key, LiteralType):
                k = f"{k}_{attempt}"
            out.setdefault(k, draw_value(rng))
        return out

    # the suffix of a colliding key is counted with its entry
    return sample, 1 + longest * (1 + key_size + value_size)


def _union_sampler(options: tuple[TypeNode, ...], c: Constraints, *, small: bool) -> _Built:
    samplers: list[Sampler] = []
    size = 0
    for option in options:
        try:
            sampler, option_size = _build(option, _constraints_for(option, c), small=small)
        except _Unsatisfiable:
            continue
        samplers.append(sampler)
        size = max(size, option_size)
    if not samplers:
        raise _Unsatisfiable("no option of the union can satisfy the constraints")
    return (lambda rng: rng.choice(samplers)(rng)), size


_STRING_KEYS = frozenset({"min_length", "max_length", "pattern"})
_NUMBER_KEYS = frozenset({"minimum", "maximum", "multiple_of"})
_ITEM_KEYS = frozenset({"min_items", "max_items"})


def _constraints_for(node: TypeNode, c: Constraints) -> Constraints:
    """The part of a union's constraints that speaks about one of its options."""
    data = c.model_dump(exclude_none=True)
    if not data:
        return c
    match node:
        case Scalar(name="str"):
            keep = _STRING_KEYS | {"one_of"}
        case Scalar(name="int" | "float") | Probability() | ConfidenceScore():
            keep = _NUMBER_KEYS | {"one_of"}
        case Scalar(name="bool") | LiteralType():
            keep = frozenset({"one_of"})
        case ListType() | ReasoningChain():
            keep = _ITEM_KEYS | {"unique_items"}
        case Embedding():
            keep = _ITEM_KEYS | {"unique_items", "dim"}
        case DictType():
            keep = _ITEM_KEYS
        case OptionalType(inner=inner):
            return _constraints_for(inner, c)
        case _:
            keep = frozenset()
    return Constraints(**{k: v for k, v in data.items() if k in keep})


def _model_sampler(model: type[BaseModel], *, small: bool) -> _Built:
    fields: list[tuple[str, Sampler]] = []
    size = 1
    for name, info in model.model_fields.items():
        node, constraints = _annotation_to_node(info.annotation, list(info.metadata))
        sampler, field_size = _build(node, constraints, small=small)
        fields.append((info.alias or name, sampler))
        size += 1 + field_size

    def sample(rng: random.Random) -> dict[str, Any]:
        return {name: draw(rng) for name, draw in fields}

    return sample, size


def _annotation_to_node(annotation: Any, metadata: list[Any]) -> tuple[TypeNode, Constraints]:
    """Map a pydantic field annotation onto the type tree (enough for sampling)."""
    return _annotation_node(annotation), _metadata_constraints(metadata)


def _annotation_node(annotation: Any) -> TypeNode:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in (str, int, float, bool):
        return Scalar(annotation.__name__)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ModelType(annotation)
    if origin is typing.Literal:
        return LiteralType(tuple(args))
    if origin is list:
        return ListType(_annotation_node(args[0]) if args else Scalar("str"))
    if origin is dict:
        if len(args) == 2:
            return DictType(_annotation_node(args[0]), _annotation_node(args[1]))
        return DictType(Scalar("str"), Scalar("str"))
    if origin in (typing.Union, types.UnionType):
        options = tuple(a for a in args if a is not type(None))
        inner = (
            _annotation_node(options[0])
            if len(options) == 1
            else UnionType(tuple(_annotation_node(a) for a in options))
        )
        return OptionalType(inner) if len(options) < len(args) else inner
    if origin is typing.Annotated:
        return _annotation_node(args[0])
    return Scalar("str")


def _metadata_constraints(metadata: list[Any]) -> Constraints:
    values: dict[str, Any] = {}
    for item in metadata:
        for attr, key in (("ge", "minimum"), ("le", "maximum"), ("multiple_of", "multiple_of")):
            if getattr(item, attr, None) is not None:
                values[key] = getattr(item, attr)
        if getattr(item, "gt", None) is not None:
            values["minimum"] = item.gt + (1 if isinstance(item.gt, int) else 1e-6)
        if getattr(item, "lt", None) is not None:
            values["maximum"] = item.lt - (1 if isinstance(item.lt, int) else 1e-6)
        if getattr(item, "min_length", None) is not None:
            values["min_length"] = values["min_items"] = item.min_length
        if getattr(item, "max_length", None) is not None:
            values["max_length"] = values["max_items"] = item.max_length
    return Constraints(**values)


# --------------------------------------------------------------------------------------------
# invalid values


def invalid_samples(field: FieldSpec, rng: random.Random) -> list[tuple[Any, str]]:
    """Values a correct validator must reject for ``field``, each with the reason.

    The list covers wrong types (including the usual lax-coercion traps such as ``"42"``, ``42.5``
    and ``True`` for an integer), and each constraint the field declares (one value just outside
    each bound).

    Args:
        field: the field to attack.
        rng: the source of randomness for values built from valid ones.

    Returns:
        ``(value, reason)`` pairs; ``None`` appears unless the type is ``optional[T]`` (an optional
        field may be left out, but not set to null).
    """
    out: list[tuple[Any, str]] = []
    node = field.type
    if not isinstance(node, OptionalType):
        out.append((None, "null for a required field"))
    while isinstance(node, OptionalType):
        node = node.inner
    out.extend(_invalid_for(node, field.constraints, rng))
    return out


_WRONG_KIND_POOL: tuple[tuple[Any, str], ...] = (
    ("not a value", "a string"),
    (42.5, "a fractional number"),
    (True, "a boolean"),
    ([1, 2], "a list"),
    ({"unexpected": 1}, "an object"),
)


def _invalid_for(node: TypeNode, c: Constraints, rng: random.Random) -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    match node:
        case Scalar(name="str"):
            out += [([1, 2], "a list for a string"), ({"a": 1}, "an object for a string")]
            out += [(42, "an integer for a string")]
            out += _invalid_string_constraints(c, rng)
        case Scalar(name="int"):
            out += [
                ("42", "a numeric string for an integer"),
                (42.5, "a fractional number for an integer"),
                (True, "a boolean for an integer"),
                ("abc", "a string for an integer"),
                ([1], "a list for an integer"),
            ]
            out += _invalid_number_constraints(c, integer=True)
        case Scalar(name="float"):
            out += [
                ("3.14", "a numeric string for a float"),
                ("abc", "a string for a float"),
                (True, "a boolean for a float"),
                ([1.0], "a list for a float"),
            ]
            out += _invalid_number_constraints(c, integer=False)
        case Scalar(name="bool"):
            out += [
                ("true", "a string for a boolean"),
                (1, "an integer for a boolean"),
                (0.0, "a float for a boolean"),
                ("yes", "a word for a boolean"),
            ]
        case LiteralType(values=values):
            out.append((_not_in(values), "a value outside the literal's options"))
            out.append(([values[0]], "a list for a literal"))
        case Probability() | ConfidenceScore():
            out += [
                (1.5, "above 1 for a probability"),
                (-0.1, "below 0 for a probability"),
                ("0.5", "a string for a probability"),
                (True, "a boolean for a probability"),
            ]
            out += _invalid_number_constraints(c, integer=False)
        case Embedding(dim=dim):
            real_dim = dim if dim is not None else c.dim
            out += [
                ([], "an empty embedding"),
                ("0.1, 0.2", "a string for an embedding"),
                ([0.1, "x"], "a non-number inside an embedding"),
                (0.5, "a number for an embedding"),
            ]
            few = c.min_items
            if few is not None and few > 1 and real_dim is None and _fits(few - 1):
                out.append(([0.5] * (few - 1), f"fewer than {few} values"))
            if c.max_items is not None and real_dim is None and _fits(c.max_items + 1):
                out.append(([0.5] * (c.max_items + 1), f"more than {c.max_items} values"))
            if real_dim is not None and _fits(real_dim + 1):
                out.append(([0.0] * (real_dim + 1), f"{real_dim + 1} values for dim {real_dim}"))
                if real_dim > 1:
                    out.append(
                        ([0.0] * (real_dim - 1), f"{real_dim - 1} values for dim {real_dim}")
                    )
        case ReasoningChain():
            out += [(42, "a number for a reasoning chain"), ([1, 2], "numbers as reasoning steps")]
            out += _invalid_list_constraints((_sentence_sampler, _SENTENCE_SIZE), c, rng)
        case ListType(item=item):
            out += [("not a list", "a string for a list"), (42, "a number for a list")]
            bad_items = _invalid_for(item, _NO_CONSTRAINTS, rng)
            if bad_items:
                value, reason = bad_items[0]
                out.append(([value], f"an item that is {reason}"))
            out += _invalid_list_constraints(_bounded(item, _NO_CONSTRAINTS), c, rng)
        case DictType(key=key, value=value):
            out += [("not a dict", "a string for a dict"), ([1, 2], "a list for a dict")]
            bad_values = _invalid_for(value, _NO_CONSTRAINTS, rng)
            good_key = _node_sampler(key, _NO_CONSTRAINTS)(rng)
            if bad_values and _hashable(good_key):
                bad, reason = bad_values[0]
                out.append(({good_key: bad}, f"a dict value that is {reason}"))
            draw_value, value_size = _bounded(value, _NO_CONSTRAINTS)
            if (
                c.max_items is not None
                and not isinstance(key, LiteralType)
                and _fits(c.max_items + 1, 2 + value_size)
            ):
                size = c.max_items + 1
                too_many = {f"key{i}": draw_value(rng) for i in range(size)}
                if key == Scalar("str"):
                    out.append((too_many, f"more than {c.max_items} entries"))
            if c.min_items:
                fewer = _bounded(DictType(key, value), Constraints(max_items=c.min_items - 1))
                if fewer[1] <= MAX_SAMPLE_SIZE:
                    out.append((fewer[0](rng), f"fewer than {c.min_items} entries"))
        case UnionType(options=options):
            for value, reason in _WRONG_KIND_POOL:
                if not any(_plain_accepts(option, value) for option in options):
                    out.append((value, f"{reason} for a union that has no such option"))
        case ModelType(model=model):
            out += [("not an object", "a string for an object"), ([1], "a list for an object")]
            out += _invalid_model(model, rng)
        case DspyType(name=name):
            out += _invalid_dspy(name)
        case OptionalType(inner=inner):
            out += [(v, r) for v, r in _invalid_for(inner, c, rng) if v is not None]
        case _:  # pragma: no cover - the union is closed
            raise TypeError(f"unknown type node: {node!r}")
    if c.one_of is not None:
        candidate = _not_in(c.one_of)
        if _plain_accepts(node, candidate):
            out.append((candidate, "a value outside one_of"))
    return out


def _invalid_dspy(name: str) -> list[tuple[Any, str]]:
    if name == "Image":
        return [("/etc/passwd", "a file path for an image"), (42.5, "a number for an image")]
    if name == "Code":
        return [(["print(1)"], "a list for code"), (True, "a boolean for code")]
    if name == "History":
        return [([1, 2], "a list of numbers for a history"), ("hello", "a string for a history")]
    if name == "Audio":
        return [({"data": "not base64!", "audio_format": "wav"}, "audio data that is not base64")]
    if name == "Tool":
        return [({"name": "no spaces allowed"}, "a tool name that is not an identifier")]
    return [({"tool_calls": [{"args": {}}]}, "a tool call without a name")]


def _not_in(values: tuple[Any, ...]) -> Any:
    if all(isinstance(v, str) for v in values):
        return "__none_of_these__"
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers and len(numbers) == len(values):
        return max(numbers) + 1
    return "__none_of_these__"


def _fits(count: int, each: int = 1) -> bool:
    """Whether ``count`` values of ``each`` values fit one sample (:data:`MAX_SAMPLE_SIZE`)."""
    return count * each <= MAX_SAMPLE_SIZE


def _invalid_string_constraints(c: Constraints, rng: random.Random) -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    if c.min_length is not None and c.min_length > 0 and _fits(c.min_length - 1):
        out.append(("a" * (c.min_length - 1), f"shorter than min_length {c.min_length}"))
    if c.max_length is not None and _fits(c.max_length + 1):
        out.append(("a" * (c.max_length + 1), f"longer than max_length {c.max_length}"))
    if c.pattern is not None and _fits(c.min_length or 0):
        compiled = re.compile(c.pattern)
        low = c.min_length or 0
        high = c.max_length if c.max_length is not None else low + 24
        # Lengths inside the bounds so the pattern is the only reason to reject.
        for candidate in ("", "!", "~~~", " ", "0", "a", "Z9 -", "\u00e9\u00e9"):
            text = (candidate * max(1, low))[: max(high, 0)] if candidate else ""
            if low <= len(text) <= high and not compiled.search(text):
                out.append((text, f"does not match pattern {c.pattern!r}"))
                break
    return out


def _invalid_number_constraints(c: Constraints, *, integer: bool) -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    if c.minimum is not None:
        below = math.ceil(c.minimum) - 1 if integer else c.minimum - 0.5
        out.append((below, f"below minimum {c.minimum}"))
    if c.maximum is not None:
        above = math.floor(c.maximum) + 1 if integer else c.maximum + 0.5
        out.append((above, f"above maximum {c.maximum}"))
    step = c.multiple_of
    if step is not None and step > 0:
        # Halfway between two grid points (inside the bounds when possible): off the grid only.
        first = math.ceil(c.minimum / step) if c.minimum is not None else 0
        halfway = first * step + step / 2
        if not integer:
            out.append((halfway, f"not a multiple of {step}"))
        else:
            start = math.floor(halfway)
            # None when every integer is on the grid (a step of 0.5).
            off = next((n for n in range(start, start + math.ceil(step) + 2) if n % step), None)
            if off is not None:
                out.append((off, f"not a multiple of {step}"))
    return out


def _invalid_list_constraints(
    item_built: _Built, c: Constraints, rng: random.Random
) -> list[tuple[Any, str]]:
    item, item_size = item_built
    out: list[tuple[Any, str]] = []
    if c.min_items is not None and c.min_items > 0 and _fits(c.min_items - 1, item_size):
        out.append(([item(rng) for _ in range(c.min_items - 1)], f"fewer than {c.min_items} items"))
    if c.max_items is not None and _fits(c.max_items + 1, item_size):
        out.append(([item(rng) for _ in range(c.max_items + 1)], f"more than {c.max_items} items"))
    if c.unique_items:
        value = item(rng)
        if c.max_items is None or c.max_items >= 2:
            out.append(([value, value], "repeated items where items must be unique"))
    return out


def _invalid_model(model: type[BaseModel], rng: random.Random) -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    sampler, size = _bounded(ModelType(model), _NO_CONSTRAINTS)
    if size > MAX_SAMPLE_SIZE:
        return out  # no valid value to break: too large to generate
    valid = sampler(rng)
    for name, info in model.model_fields.items():
        key = info.alias or name
        if info.is_required():
            missing = {k: v for k, v in valid.items() if k != key}
            out.append((missing, f"an object missing required field {name!r}"))
            break
    for name, info in model.model_fields.items():
        key = info.alias or name
        node, constraints = _annotation_to_node(info.annotation, list(info.metadata))
        # The model validates its own fields in its own (often lax) mode, so it is the judge of
        # which wrong values it must reject: "42" passes a lax int field.
        for value, reason in _invalid_for(node, constraints, rng):
            broken = {**valid, key: value}
            if not _model_accepts(model, broken):
                out.append((broken, f"field {name!r} is {reason}"))
                break
    return out


def _model_accepts(model: type[BaseModel], value: dict[str, Any]) -> bool:
    try:
        model.model_validate(value)
    except ValueError:  # pydantic.ValidationError is a ValueError
        return False
    return True


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _plain_accepts(node: TypeNode, value: Any) -> bool:
    """Whether ``value`` has ``node``'s kind, by the strict rules (constraints not checked)."""
    match node:
        case Scalar(name="str"):
            return isinstance(value, str)
        case Scalar(name="int"):
            return (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, float) and value.is_integer()
            )
        case Scalar(name="float"):
            return isinstance(value, int | float) and not isinstance(value, bool)
        case Scalar(name="bool"):
            return isinstance(value, bool)
        case LiteralType(values=values):
            return any(value == v and type(value) is type(v) for v in values)
        case Probability() | ConfidenceScore():
            return (
                isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
            )
        case Embedding() | ReasoningChain() | ListType():
            return isinstance(value, list)
        case DictType() | ModelType():
            return isinstance(value, dict)
        case DspyType(name=name):
            try:
                dspy_types.normalize(name, value)
            except ValueError:
                return False
            return True
        case OptionalType(inner=inner):
            return value is None or _plain_accepts(inner, value)
        case UnionType(options=options):
            return any(_plain_accepts(o, value) for o in options)
    return False  # pragma: no cover - the union is closed
