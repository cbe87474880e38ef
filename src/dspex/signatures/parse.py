"""Type expressions and the signature string form: parse and format.

Type grammar (whitespace is free)::

    type     := option ("|" option)*
    option   := NAME ("[" args "]")?
    NAME     := str | int | float | bool | embedding | probability | confidence_score
              | reasoning_chain | list | List | dict | Dict | optional | Optional | Union
              | Literal | enum | None
              | Image | Audio | History | Tool | ToolCalls | Code      (DSPy's own types;
                                                        Code[LANGUAGE] names a language)

``T | None``, ``optional[T]`` and ``Optional[T]`` all mean :class:`OptionalType`; unions are
flattened and deduplicated, and a ``None`` anywhere in a union makes the whole union optional, so
every spelling of a type has one tree and ``parse_type(format_type(t)) == t``.

Signature string (the DSPy form plus our types and descriptions)::

    question: str 'the user question', k: int -> answer: str, confidence: probability

A field is ``name``, ``name: type`` or either followed by a quoted description. A field without a
type is ``str``, as in DSPy.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from dspex.errors import ErrorDetail, SignatureError
from dspex.signatures.dspy_types import DSPY_TYPE_NAMES
from dspex.signatures.types import (
    ConfidenceScore,
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

__all__ = [
    "MAX_EMBEDDING_DIM",
    "MAX_TYPE_DEPTH",
    "ParsedField",
    "ParsedSignature",
    "format_field",
    "format_signature",
    "format_type",
    "make_optional",
    "make_union",
    "parse_signature_text",
    "parse_type",
    "try_parse_type",
]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    |(?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    |(?P<name>[A-Za-z_][A-Za-z_0-9]*)
    |(?P<punct>->|[\[\],|:])
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

MAX_EMBEDDING_DIM = 65_536
"""The largest ``embedding[dim]`` (and ``dim`` constraint): a dimension is also the length of
every value generated for the field, so it is bounded like every other input."""

MAX_TYPE_DEPTH = 32
"""The deepest a type expression may nest its brackets (``list[list[…]]``)."""

_SCALARS = {"str": "str", "int": "int", "float": "float", "bool": "bool"}
_ATOMS: dict[str, TypeNode] = {
    "probability": Probability(),
    "confidence_score": ConfidenceScore(),
    "reasoning_chain": ReasoningChain(),
}
_LANGUAGE = re.compile(r"[A-Za-z][A-Za-z0-9_+#.-]{0,31}")
KNOWN_TYPE_NAMES = [
    "str",
    "int",
    "float",
    "bool",
    "embedding",
    "probability",
    "confidence_score",
    "reasoning_chain",
    "list",
    "List",
    "dict",
    "Dict",
    "optional",
    "Optional",
    "Union",
    "Literal",
    "enum",
    *DSPY_TYPE_NAMES,
]


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    pos: int


class _TypeSyntaxError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "other"
        if kind != "ws":
            out.append(_Tok(kind, m.group(), m.start()))
    return out


class _None:
    """Marker for the ``None`` option of a union while parsing."""


_NONE = _None()


def make_optional(inner: TypeNode) -> OptionalType:
    """``optional[inner]``, collapsing ``optional[optional[T]]`` to ``optional[T]``."""
    return inner if isinstance(inner, OptionalType) else OptionalType(inner)


def make_union(options: list[TypeNode | _None] | tuple[TypeNode, ...]) -> TypeNode:
    """The canonical union of ``options``: flattened, deduplicated, ``None`` lifted to optional.

    Raises:
        ValueError: when no option remains (``None`` alone or nothing at all).
    """
    flat: list[TypeNode] = []
    nullable = False

    def add(opt: TypeNode | _None) -> None:
        nonlocal nullable
        if isinstance(opt, _None):
            nullable = True
        elif isinstance(opt, OptionalType):
            nullable = True
            add(opt.inner)
        elif isinstance(opt, UnionType):
            for o in opt.options:
                add(o)
        elif opt not in flat:
            flat.append(opt)

    for opt in options:
        add(opt)
    if not flat:
        raise ValueError("a union needs at least one type other than None")
    node: TypeNode = flat[0] if len(flat) == 1 else UnionType(tuple(flat))
    return OptionalType(node) if nullable else node


class _TypeParser:
    def __init__(self, toks: list[_Tok], source: str) -> None:
        self.toks = toks
        self.i = 0
        self.source = source
        self.depth = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise _TypeSyntaxError("syntax", f"unexpected end of type {self.source!r}")
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.next()
        if tok.text != text:
            raise _TypeSyntaxError(
                "syntax", f"expected {text!r} but found {tok.text!r} in type {self.source!r}"
            )

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text == text

    def union(self) -> TypeNode | _None:
        options = [self.option()]
        while self.at("|"):
            self.i += 1
            options.append(self.option())
        if len(options) == 1:
            return options[0]
        try:
            return make_union(options)
        except ValueError as exc:
            raise _TypeSyntaxError("empty_union", f"{exc} in {self.source!r}") from None

    def args(self) -> list[TypeNode | _None]:
        self.expect("[")
        if self.at("]"):
            self.i += 1
            return []
        self.depth += 1
        if self.depth > MAX_TYPE_DEPTH:
            raise _TypeSyntaxError(
                "too_deep", f"a type may nest at most {MAX_TYPE_DEPTH} levels of brackets"
            )
        out = [self.union()]
        while self.at(","):
            self.i += 1
            out.append(self.union())
        self.expect("]")
        self.depth -= 1
        return out

    def type_arg(self, opt: TypeNode | _None, where: str) -> TypeNode:
        if isinstance(opt, _None):
            raise _TypeSyntaxError("invalid_type", f"None alone is not a type (in {where})")
        return opt

    def option(self) -> TypeNode | _None:
        tok = self.next()
        if tok.kind != "name":
            raise _TypeSyntaxError(
                "syntax", f"expected a type name but found {tok.text!r} in type {self.source!r}"
            )
        name = tok.text
        has_args = self.at("[")
        if name == "None":
            return _NONE
        if name in _SCALARS or name in _ATOMS:
            if has_args:
                raise _TypeSyntaxError("invalid_type", f"{name} takes no parameters")
            return Scalar(_SCALARS[name]) if name in _SCALARS else _ATOMS[name]  # type: ignore[arg-type]
        if name in DSPY_TYPE_NAMES:
            if has_args and name == "Code":
                return DspyType("Code", self.code_language())
            if has_args:
                raise _TypeSyntaxError("invalid_type", f"{name} takes no parameters")
            return DspyType(name)
        if name == "embedding":
            return self.embedding() if has_args else Embedding()
        if name in ("Literal", "enum"):
            return self.literal(name)
        if not has_args:
            if name in KNOWN_TYPE_NAMES:
                raise _TypeSyntaxError("invalid_type", f"{name} needs type parameters: {name}[…]")
            raise _TypeSyntaxError("unknown_type", _unknown_type_message(name))
        args = self.args()
        if name in ("list", "List"):
            if len(args) != 1:
                raise _TypeSyntaxError("invalid_type", f"list takes one item type, got {len(args)}")
            return ListType(self.type_arg(args[0], "list[…]"))
        if name in ("dict", "Dict"):
            if len(args) != 2:
                raise _TypeSyntaxError(
                    "invalid_type", f"dict takes a key and a value type, got {len(args)}"
                )
            return DictType(
                self.type_arg(args[0], "dict key"), self.type_arg(args[1], "dict value")
            )
        if name in ("optional", "Optional"):
            if len(args) != 1:
                raise _TypeSyntaxError("invalid_type", f"optional takes one type, got {len(args)}")
            return make_optional(self.type_arg(args[0], "optional[…]"))
        if name == "Union":
            if not args:
                raise _TypeSyntaxError("empty_union", "Union[] has no options")
            try:
                return make_union(args)
            except ValueError as exc:
                raise _TypeSyntaxError("empty_union", str(exc)) from None
        raise _TypeSyntaxError("unknown_type", _unknown_type_message(name))

    def embedding(self) -> Embedding:
        self.expect("[")
        tok = self.next()
        digits = tok.text.lstrip("0")
        if tok.kind != "number" or not re.fullmatch(r"\d+", tok.text) or not digits:
            raise _TypeSyntaxError(
                "invalid_type",
                f"embedding[…] takes a positive whole dimension, got {_shorten(tok.text)}",
            )
        # the length first: int() refuses numbers of thousands of digits
        if len(digits) > len(str(MAX_EMBEDDING_DIM)) or int(digits) > MAX_EMBEDDING_DIM:
            raise _TypeSyntaxError(
                "invalid_type",
                f"embedding[…] takes a dimension of at most {MAX_EMBEDDING_DIM},"
                f" got {_shorten(tok.text)}",
            )
        self.expect("]")
        return Embedding(int(digits))

    def code_language(self) -> str:
        self.expect("[")
        tok = self.next()
        language = ast.literal_eval(tok.text) if tok.kind == "string" else tok.text
        if tok.kind not in ("name", "string") or not _LANGUAGE.fullmatch(language):
            raise _TypeSyntaxError(
                "invalid_type",
                f"Code[…] takes a programming language name, got {_shorten(tok.text)}",
            )
        self.expect("]")
        return str(language)

    def literal(self, name: str) -> LiteralType:
        self.expect("[")
        values: list[str | int | float | bool] = []
        while not self.at("]"):
            tok = self.next()
            value: str | int | float | bool
            if tok.kind == "string" or tok.kind == "number":
                try:
                    value = ast.literal_eval(tok.text)
                except (SyntaxError, ValueError):  # a number of thousands of digits
                    raise _TypeSyntaxError(
                        "invalid_type", f"{name}[…] value {_shorten(tok.text)} is too long"
                    ) from None
            elif tok.text in ("True", "true"):
                value = True
            elif tok.text in ("False", "false"):
                value = False
            elif tok.kind == "name" and tok.text != "None":
                value = tok.text  # enum[red, green]: bare words are strings
            else:
                raise _TypeSyntaxError(
                    "invalid_type", f"{name}[…] values must be strings, numbers or booleans"
                )
            if any(type(v) is type(value) and v == value for v in values):
                raise _TypeSyntaxError("invalid_type", f"{name}[…] repeats the value {value!r}")
            values.append(value)
            if not self.at("]"):
                self.expect(",")
        self.i += 1
        if not values:
            raise _TypeSyntaxError("invalid_type", f"{name}[] needs at least one value")
        return LiteralType(tuple(values))


def _shorten(text: str, keep: int = 24) -> str:
    """``text`` quoted for a message, cut when long (a type may hold a huge number)."""
    return repr(text) if len(text) <= keep else repr(text[:keep]) + f"… ({len(text)} characters)"


def _unknown_type_message(name: str) -> str:
    known = sorted(set(KNOWN_TYPE_NAMES) - {"List", "Dict", "Optional"})
    return f"unknown type {name!r} (known: {', '.join(known)})"


def _parse_type_tokens(toks: list[_Tok], source: str) -> TypeNode:
    if not toks:
        raise _TypeSyntaxError("syntax", "empty type")
    parser = _TypeParser(toks, source)
    node = parser.union()
    if parser.peek() is not None:
        raise _TypeSyntaxError(
            "syntax",
            f"unexpected {parser.peek().text!r} in type {source!r}",  # type: ignore[union-attr]
        )
    if isinstance(node, _None):
        raise _TypeSyntaxError("invalid_type", "None alone is not a type")
    return node


def try_parse_type(text: str) -> tuple[TypeNode | None, ErrorDetail | None]:
    """Parse ``text``; return ``(node, None)`` or ``(None, problem)`` instead of raising."""
    try:
        return _parse_type_tokens(_tokenize(text), text.strip()), None
    except _TypeSyntaxError as exc:
        return None, ErrorDetail("", exc.code, exc.message)


def parse_type(text: str) -> TypeNode:
    """Parse a type expression such as ``list[dict[str, int | float]]``.

    Raises:
        SignatureError: the expression is malformed or names an unknown type.
    """
    node, problem = try_parse_type(text)
    if problem is not None or node is None:
        raise SignatureError(f"invalid type {text!r}:", [problem] if problem else [])
    return node


def _format_literal(value: str | int | float | bool) -> str:
    return repr(value)


def format_type(node: TypeNode) -> str:
    """The canonical string of a type; ``parse_type(format_type(t)) == t`` (models excepted)."""
    if isinstance(node, Scalar):
        return node.name
    if isinstance(node, LiteralType):
        return "Literal[" + ", ".join(_format_literal(v) for v in node.values) + "]"
    if isinstance(node, Embedding):
        return "embedding" if node.dim is None else f"embedding[{node.dim}]"
    if isinstance(node, Probability):
        return "probability"
    if isinstance(node, ConfidenceScore):
        return "confidence_score"
    if isinstance(node, ReasoningChain):
        return "reasoning_chain"
    if isinstance(node, ListType):
        return f"list[{format_type(node.item)}]"
    if isinstance(node, DictType):
        return f"dict[{format_type(node.key)}, {format_type(node.value)}]"
    if isinstance(node, UnionType):
        return " | ".join(format_type(o) for o in node.options)
    if isinstance(node, OptionalType):
        return f"optional[{format_type(node.inner)}]"
    if isinstance(node, ModelType):
        return node.model.__name__
    if isinstance(node, DspyType):
        return node.name if node.language is None else f"{node.name}[{node.language}]"
    raise TypeError(f"not a type node: {node!r}")


# ---------------------------------------------------------------------------------------------
# signature strings


@dataclass(frozen=True, slots=True)
class ParsedField:
    """One field as written in a signature string (before any structural checks)."""

    name: str
    type: TypeNode
    description: str = ""


@dataclass(slots=True)
class ParsedSignature:
    """The fields a signature string names, plus every problem found while reading it."""

    inputs: list[ParsedField] = field(default_factory=list)
    outputs: list[ParsedField] = field(default_factory=list)
    problems: list[ErrorDetail] = field(default_factory=list)
    # names of fields whose type did not parse: name rules still apply to them
    unparsed_names: list[str] = field(default_factory=list)


def _split_top(text: str, toks: list[_Tok], sep: str) -> Iterator[list[_Tok]]:
    depth = 0
    part: list[_Tok] = []
    for tok in toks:
        if tok.text == "[":
            depth += 1
        elif tok.text == "]":
            depth -= 1
        if tok.text == sep and depth == 0:
            yield part
            part = []
        else:
            part.append(tok)
    yield part


def _field_name_text(source: str, toks: list[_Tok]) -> str:
    """The raw text before the field's ``:`` (or all of it), for messages about bad names."""
    end = next((t.pos for t in toks if t.text == ":"), None)
    start = toks[0].pos
    stop = end if end is not None else toks[-1].pos + len(toks[-1].text)
    return source[start:stop].strip()


def _parse_field(
    source: str, toks: list[_Tok], side: str
) -> tuple[ParsedField | None, list[ErrorDetail]]:
    if not toks:
        return None, [ErrorDetail("", "empty_field", f"empty field in the {side} (stray comma?)")]
    first = toks[0]
    rest = toks[1:]
    if first.kind != "name" or (rest and rest[0].text not in (":",) and rest[0].kind != "string"):
        name = _field_name_text(source, toks)
        return None, [
            ErrorDetail(name, "invalid_name", f"field name {name!r} is not a valid identifier")
        ]
    name = first.text
    description = ""
    if rest and rest[-1].kind == "string":
        description = ast.literal_eval(rest[-1].text)
        rest = rest[:-1]
    if not rest:
        return ParsedField(name, Scalar("str"), description), []
    if rest[0].text != ":":
        return None, [
            ErrorDetail(name, "syntax", f"field {name!r}: unexpected text after its description")
        ]
    type_toks = rest[1:]
    if not type_toks:
        return None, [ErrorDetail(name, "syntax", f"field {name!r} has ':' but no type")]
    type_src = source[type_toks[0].pos : type_toks[-1].pos + len(type_toks[-1].text)]
    try:
        node = _parse_type_tokens(type_toks, type_src)
    except _TypeSyntaxError as exc:
        return None, [ErrorDetail(name, exc.code, f"field {name!r}: {exc.message}")]
    return ParsedField(name, node, description), []


def parse_signature_text(text: str) -> ParsedSignature:
    """Read a signature string, collecting every problem instead of stopping at the first.

    Name rules (keywords, reserved names, duplicates) are not checked here; see
    :mod:`dspex.signatures.rules`.
    """
    out = ParsedSignature()
    if not isinstance(text, str):
        out.problems.append(ErrorDetail("", "syntax", "a signature string must be a string"))
        return out
    toks = _tokenize(text)
    sides = list(_split_top(text, toks, "->"))
    if len(sides) == 1:
        out.problems.append(
            ErrorDetail("", "missing_arrow", "a signature needs '->' between inputs and outputs")
        )
        return out
    if len(sides) > 2:
        out.problems.append(
            ErrorDetail("", "syntax", f"a signature has exactly one '->', found {len(sides) - 1}")
        )
        return out
    for side_name, side_toks, target in (
        ("inputs", sides[0], out.inputs),
        ("outputs", sides[1], out.outputs),
    ):
        if not side_toks:
            continue
        for part in _split_top(text, side_toks, ","):
            parsed, problems = _parse_field(text, part, side_name)
            out.problems.extend(problems)
            if parsed is not None:
                target.append(parsed)
            elif part and part[0].kind == "name" and len(part) > 1 and part[1].text == ":":
                out.unparsed_names.append(part[0].text)
    return out


def format_field(spec: FieldSpec | ParsedField) -> str:
    """``name: type 'description'`` (the description only when there is one)."""
    text = f"{spec.name}: {format_type(spec.type)}"
    if spec.description:
        text += " " + repr(spec.description)
    return text


def format_signature(
    inputs: tuple[FieldSpec, ...] | list[FieldSpec],
    outputs: tuple[FieldSpec, ...] | list[FieldSpec],
) -> str:
    """The string form of a signature's fields, the inverse of :func:`parse_signature_text`."""
    left = ", ".join(format_field(f) for f in inputs)
    right = ", ".join(format_field(f) for f in outputs)
    return f"{left} -> {right}".strip()
