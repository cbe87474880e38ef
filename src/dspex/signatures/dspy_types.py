"""DSPy's own field types (``Image``, ``Audio``, ``History``, ``Tool``, ``ToolCalls``, ``Code``).

A signature names them like any other type (``image: Image -> answer: str``). Values travel as
JSON everywhere in dspex (inputs, stored records, outputs); only the ``dspy`` backend turns them
into the DSPy objects its adapter formats (:func:`to_dspy_value`) and turns DSPy objects in a
prediction back into JSON (:func:`from_dspy_value`).

The JSON forms (what :func:`normalize` accepts, and the canonical form it returns):

- ``Image``: an ``http(s)://`` URL or a ``data:image/…;base64,…`` URI, or ``{"url": …}``;
  canonical: the URL string.
- ``Audio``: ``{"data": base64 text, "audio_format": "wav"}`` or a ``data:audio/…;base64,…``
  URI; canonical: the mapping.
- ``History``: ``{"messages": [mapping, …]}`` (one mapping of field values per earlier turn) or
  the list of mappings; canonical: the ``messages`` mapping.
- ``Tool``: ``{"name": identifier, "desc": text, "args": {argument: JSON Schema}}`` (``desc``
  and ``args`` may be left out); canonical: all three keys. The model is shown the tool; it is
  not called by dspex.
- ``ToolCalls``: ``{"tool_calls": [{"name": …, "args": {…}}, …]}`` or the list; canonical: the
  mapping (``args`` always present).
- ``Code`` (or ``Code[javascript]``, naming the language DSPy tells the model; Python when
  not given): a string, or ``{"code": …}``; canonical: the string.

A local file path is never accepted as an image or audio: inputs come from users, and reading
files named by them is not the runtime's business.

Only functions here import DSPy, and only when called.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, get_args

from pydantic_core import PydanticCustomError

__all__ = [
    "DSPY_TYPE_NAMES",
    "DspyTypeName",
    "code_language_of",
    "dspy_class",
    "dspy_type_name_of",
    "from_dspy_value",
    "json_schema",
    "normalize",
    "normalizer",
    "sample",
    "to_dspy_value",
]

DspyTypeName = Literal["Image", "Audio", "History", "Tool", "ToolCalls", "Code"]
DSPY_TYPE_NAMES: Final[tuple[DspyTypeName, ...]] = get_args(DspyTypeName)

_DATA_IMAGE = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]+\Z")
_DATA_AUDIO = re.compile(r"data:audio/([A-Za-z0-9.+-]+);base64,([A-Za-z0-9+/=\s]+)\Z")
_HTTP_URL = re.compile(r"https?://[^\s/?#]+[^\s]*\Z", re.IGNORECASE)


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _image(value: Any) -> str:
    if isinstance(value, Mapping) and set(value) == {"url"}:
        value = value["url"]
    if isinstance(value, str) and (_HTTP_URL.match(value) or _DATA_IMAGE.match(value)):
        return value
    raise _fail(
        "image_type",
        "Input should be an image: an http(s) URL or a data:image/…;base64 URI (or {'url': …})",
    )


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _audio(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        match = _DATA_AUDIO.match(value)
        if match is not None:
            fmt = match.group(1).lower()
            value = {"data": re.sub(r"\s", "", match.group(2)), "audio_format": fmt}
    if (
        isinstance(value, Mapping)
        and set(value) == {"data", "audio_format"}
        and isinstance(value["data"], str)
        and isinstance(value["audio_format"], str)
        and value["audio_format"]
        and value["data"]
        and _is_base64(value["data"])
    ):
        return {"data": value["data"], "audio_format": value["audio_format"]}
    raise _fail(
        "audio_type",
        "Input should be audio: {'data': base64 text, 'audio_format': 'wav'} or a"
        " data:audio/…;base64 URI",
    )


def _history(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping) and set(value) == {"messages"}:
        value = value["messages"]
    if isinstance(value, list) and all(
        isinstance(m, Mapping) and all(isinstance(k, str) for k in m) for m in value
    ):
        return {"messages": [dict(m) for m in value]}
    raise _fail(
        "history_type",
        "Input should be a history: {'messages': [mapping, …]} or a list of mappings",
    )


def _tool(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping) and set(value) <= {"name", "desc", "args"}:
        name, desc, args = value.get("name"), value.get("desc", ""), value.get("args", {})
        if (
            isinstance(name, str)
            and name.isidentifier()
            and isinstance(desc, str | None)
            and isinstance(args, Mapping)
            and all(isinstance(k, str) and isinstance(v, Mapping) for k, v in args.items())
        ):
            return {"name": name, "desc": desc or "", "args": {k: dict(v) for k, v in args.items()}}
    raise _fail(
        "tool_type",
        "Input should be a tool: {'name': identifier, 'desc': text, 'args': {arg: JSON Schema}}",
    )


def _tool_calls(value: Any) -> dict[str, Any]:
    if (
        isinstance(value, Mapping)
        and set(value) <= {"tool_calls", "tool_call_results"}
        and value.get("tool_call_results") is None
    ):
        value = value.get("tool_calls")
    calls: list[dict[str, Any]] = []
    if isinstance(value, list):
        for call in value:
            if not (isinstance(call, Mapping) and set(call) <= {"name", "args", "id"}):
                break
            name, args = call.get("name"), call.get("args", {})
            if not (isinstance(name, str) and name and isinstance(args, Mapping)):
                break
            calls.append({"name": name, "args": dict(args)})
        else:
            return {"tool_calls": calls}
    raise _fail(
        "tool_calls_type",
        "Input should be tool calls: {'tool_calls': [{'name': …, 'args': {…}}, …]} or that list",
    )


def _code(value: Any) -> str:
    if isinstance(value, Mapping) and set(value) == {"code"}:
        value = value["code"]
    if isinstance(value, str):
        return value
    raise _fail("code_type", "Input should be code: a string (or {'code': …})")


_NORMALIZERS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "Image": _image,
    "Audio": _audio,
    "History": _history,
    "Tool": _tool,
    "ToolCalls": _tool_calls,
    "Code": _code,
}


def normalize(name: DspyTypeName, value: Any) -> Any:
    """The canonical JSON form of ``value`` as a ``name``.

    Raises:
        pydantic_core.PydanticCustomError: ``value`` is not a JSON form of ``name``.
    """
    return _NORMALIZERS[name](value)


def normalizer(name: DspyTypeName) -> Callable[[Any], Any]:
    """:func:`normalize` for one type (for a compiled validator)."""
    return _NORMALIZERS[name]


_OBJECT = {"type": "object"}

_SCHEMAS: Final[Mapping[str, dict[str, Any]]] = {
    "Image": {
        "type": "string",
        "anyOf": [
            {"format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"},
            {"pattern": "^data:image/[A-Za-z0-9.+-]+;base64,"},
        ],
    },
    "Audio": {
        "type": "object",
        "properties": {
            "data": {"type": "string", "contentEncoding": "base64"},
            "audio_format": {"type": "string", "minLength": 1},
        },
        "required": ["data", "audio_format"],
        "additionalProperties": False,
    },
    "History": {
        "type": "object",
        "properties": {"messages": {"type": "array", "items": _OBJECT}},
        "required": ["messages"],
        "additionalProperties": False,
    },
    "Tool": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "desc": {"type": "string"},
            "args": {"type": "object", "additionalProperties": _OBJECT},
        },
        "required": ["name"],
        "additionalProperties": False,
    },
    "ToolCalls": {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "minLength": 1}, "args": _OBJECT},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["tool_calls"],
        "additionalProperties": False,
    },
    "Code": {"type": "string"},
}


def json_schema(name: DspyTypeName) -> dict[str, Any]:
    """The JSON Schema of the canonical (and main accepted) JSON form of ``name``."""
    import copy

    return copy.deepcopy(_SCHEMAS[name])


_SAMPLES: Final[Mapping[str, tuple[Any, ...]]] = {
    "Image": ("https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="),
    "Audio": ({"data": "UklGRiQAAABXQVZF", "audio_format": "wav"},),
    "History": (
        {"messages": []},
        {"messages": [{"question": "What is 2 + 2?", "answer": "4"}]},
    ),
    "Tool": ({"name": "search", "desc": "Search the web", "args": {"query": {"type": "string"}}},),
    "ToolCalls": ({"tool_calls": [{"name": "search", "args": {"query": "weather"}}]},),
    "Code": ("print('hello')", "def add(a, b):\n    return a + b\n"),
}


def sample(name: DspyTypeName, index: int) -> Any:
    """One valid canonical value of ``name`` (``index`` picks among a few)."""
    import copy

    values = _SAMPLES[name]
    return copy.deepcopy(values[index % len(values)])


# --- DSPy objects -----------------------------------------------------------------------------


def dspy_class(name: DspyTypeName, language: str | None = None) -> type:
    """The DSPy class of ``name`` (``dspy.Image``, …; ``dspy.Code[language]`` for a language)."""
    import dspy

    if name == "Code" and language is not None:
        return _code_class(language)
    cls: type = getattr(dspy, name)
    return cls


@functools.lru_cache(maxsize=64)
def _code_class(language: str) -> type:
    # DSPy builds a new class on each ``Code[language]``: one per language keeps signatures equal
    import dspy

    cls: type = dspy.Code[language]
    return cls


def code_language_of(annotation: Any) -> str | None:
    """The language of a ``dspy.Code[language]`` class (None for ``dspy.Code`` itself and for
    any other annotation)."""
    import dspy

    if (
        isinstance(annotation, type)
        and issubclass(annotation, dspy.Code)
        and annotation is not dspy.Code
    ):
        language = getattr(annotation, "language", None)
        return language if isinstance(language, str) else None
    return None


def dspy_type_name_of(annotation: Any) -> DspyTypeName | None:
    """The dspex name of a DSPy type class (``dspy.Code["python"]`` is ``Code``), else None."""
    if not isinstance(annotation, type):
        return None
    import dspy

    for name in DSPY_TYPE_NAMES:
        if issubclass(annotation, getattr(dspy, name)):
            return name
    return None


def _no_op(**kwargs: Any) -> None:
    """Stands in for a tool given as JSON: the program only shows it to the model."""


def to_dspy_value(name: DspyTypeName, value: Any) -> Any:
    """The DSPy object for a canonical JSON value of ``name`` (what DSPy's adapters format)."""
    import dspy

    value = normalize(name, value)
    if name == "Image":
        return dspy.Image(url=value)
    if name == "Audio":
        return dspy.Audio(data=value["data"], audio_format=value["audio_format"])
    if name == "History":
        return dspy.History(messages=value["messages"])
    if name == "Tool":
        return dspy.Tool(_no_op, name=value["name"], desc=value["desc"], args=value["args"])
    if name == "ToolCalls":
        return dspy.ToolCalls.model_validate(value)
    return dspy.Code(code=value)


def from_dspy_value(value: Any) -> Any:
    """The canonical JSON form of a DSPy type object; any other value unchanged."""
    import dspy

    if isinstance(value, dspy.Image):
        return value.url
    if isinstance(value, dspy.Audio):
        return {"data": value.data, "audio_format": value.audio_format}
    if isinstance(value, dspy.History):
        return {"messages": [dict(m) for m in value.messages]}
    if isinstance(value, dspy.Tool):
        return {"name": value.name, "desc": value.desc or "", "args": dict(value.args)}
    if isinstance(value, dspy.ToolCalls):
        return {"tool_calls": [{"name": c.name, "args": dict(c.args)} for c in value.tool_calls]}
    if isinstance(value, dspy.Code):
        return value.code
    return value
