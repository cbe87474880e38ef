"""A ``dspy.ChatAdapter`` that writes the same messages with less work per call.

:class:`FastChatAdapter` formats prompts byte for byte like DSPy's ``ChatAdapter`` and parses
answers into the same values (and the same errors); it differs only in what it recomputes:

* the system message depends only on the signature class, so it is built once per class, with
  the class's input fields, output fields and output-format reminder (all rebuilt when the
  class's instructions or fields object change);
* a field value is serialized as DSPy's ``serialize_for_json`` does, but with one pydantic
  ``TypeAdapter`` per value type, kept, instead of a new one per value;
* a call with neither demos nor a conversation history takes a direct path that reads the
  per-class entry. Any other call goes through DSPy's own ``Adapter.format`` (with the two
  faster pieces above);
* ``parse`` is ``ChatAdapter.parse`` reading the output fields from the per-class entry instead
  of rebuilding them from the class three times per answer.

Everything else is ``ChatAdapter``'s: the call pipeline, native features, callbacks (``format``
and ``parse`` are wrapped once, as on ``ChatAdapter``) and the JSON-adapter fallback when an
answer cannot be parsed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.adapters._legacy_type_markers import _expand_legacy_custom_type_markers_in_chat_message
from dspy.adapters.chat_adapter import field_header_pattern
from dspy.adapters.types import History
from dspy.adapters.utils import (
    _format_input_list_field_value,
    apply_output_field_defaults,
    parse_value,
)
from dspy.utils.exceptions import AdapterParseError
from pydantic import TypeAdapter

__all__ = ["FastChatAdapter", "format_field_value", "is_default_chat_adapter", "serialize_for_json"]

_CACHE_SIZE = 256
_TYPE_CACHE_SIZE = 1024

# the stock pieces; ``format`` without the callback wrapper DSPy puts around it
_STOCK_FORMAT: Any = inspect.unwrap(dspy.ChatAdapter.format)
_STOCK_FORMAT_SYSTEM: Any = dspy.ChatAdapter.format_system_message
_EXPAND = _expand_legacy_custom_type_markers_in_chat_message

# value type -> (its TypeAdapter, the type's pydantic serializer when it has one)
_TYPE_ADAPTERS: dict[type, tuple[TypeAdapter[Any], Any]] = {}


def serialize_for_json(value: Any) -> Any:
    """``dspy.adapters.utils.serialize_for_json``, with one ``TypeAdapter`` per value type.

    A ``str`` is returned as is (what pydantic's JSON-mode dump of a ``str`` returns). An
    adapter is reused while the type's pydantic serializer is the one it was built with (a
    rebuilt model gets a new adapter); a type pydantic cannot adapt is retried on every call,
    as DSPy does.
    """
    kind = type(value)
    if kind is str:
        return value
    serializer = getattr(kind, "__pydantic_serializer__", None)
    try:
        cached = _TYPE_ADAPTERS.get(kind)
    except TypeError:  # a class whose metaclass makes it unhashable: no cache
        cached = None
    if cached is None or cached[1] is not serializer:
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(kind)
        except Exception:
            return str(value)
        if len(_TYPE_ADAPTERS) >= _TYPE_CACHE_SIZE:
            _TYPE_ADAPTERS.clear()
        with contextlib.suppress(TypeError):
            _TYPE_ADAPTERS[kind] = (adapter, serializer)
    else:
        adapter = cached[0]
    try:
        return adapter.dump_python(value, mode="json", fallback=str)
    except Exception:
        return str(value)


def format_field_value(field_info: Any, value: Any) -> str:
    """``dspy.adapters.utils.format_field_value`` (text form), with :func:`serialize_for_json`."""
    if isinstance(value, list) and field_info.annotation is str:
        return str(_format_input_list_field_value(value))
    jsonable = serialize_for_json(value)
    if isinstance(jsonable, dict | list):
        return json.dumps(jsonable, ensure_ascii=False)
    return str(jsonable)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the messages of one signature class share across calls."""

    doc: Any
    fields: Any
    system: str
    inputs: tuple[tuple[str, Any], ...]
    outputs: dict[str, Any]
    has_history: bool
    requirements: str | None


def _fields_of(signature: Any) -> Any:
    return getattr(signature, "__pydantic_fields__", None)


class FastChatAdapter(dspy.ChatAdapter):  # type: ignore[misc]
    """DSPy's ``ChatAdapter`` with its default settings, working from a per-class cache.

    The messages are the ones ``dspy.ChatAdapter().format(...)`` returns and ``parse`` returns
    (or raises) what ``dspy.ChatAdapter().parse(...)`` does; the JSON fallback and callbacks
    are ``ChatAdapter``'s own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._plans: dict[type, _Plan] = {}

    def __getstate__(self) -> dict[str, Any]:
        # the cache holds signature classes, which are often built at run time (not importable)
        return {**self.__dict__, "_plans": {}}

    # --- the per-class cache ------------------------------------------------------------------

    def _plan(self, signature: Any) -> _Plan:
        plan = self._plans.get(signature)
        doc, fields = signature.__doc__, _fields_of(signature)
        if plan is not None and plan.doc is doc and plan.fields is fields:
            return plan
        inputs = tuple(signature.input_fields.items())
        plan = _Plan(
            doc=doc,
            fields=fields,
            system=_STOCK_FORMAT_SYSTEM(self, signature),
            inputs=inputs,
            outputs=signature.output_fields,
            has_history=any(info.annotation == History for _, info in inputs),
            requirements=self.user_message_output_requirements(signature),
        )
        if len(self._plans) >= _CACHE_SIZE:
            self._plans.clear()
        self._plans[signature] = plan
        return plan

    def format_system_message(self, signature: Any) -> str:
        """``Adapter.format_system_message``, built once per signature class."""
        return self._plan(signature).system

    # --- formatting ---------------------------------------------------------------------------

    def format(
        self, signature: Any, demos: list[dict[str, Any]], inputs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The messages for one call, as ``ChatAdapter.format`` writes them."""
        plan = self._plan(signature)
        if demos or plan.has_history:
            messages: list[dict[str, Any]] = _STOCK_FORMAT(self, signature, demos, inputs)
            return messages
        content = _user_content(plan.inputs, inputs, plan.requirements)
        messages = [{"role": "system", "content": plan.system}]
        if content:
            messages.append({"role": "user", "content": content})
        return [_EXPAND(message) for message in messages]

    def format_user_message_content(
        self,
        signature: Any,
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        """``ChatAdapter.format_user_message_content`` with the faster value formatting."""
        requirements = self.user_message_output_requirements(signature) if main_request else None
        return _user_content(
            tuple(signature.input_fields.items()), inputs, requirements, prefix, suffix
        )

    # --- parsing ------------------------------------------------------------------------------

    def parse(self, signature: Any, completion: str) -> dict[str, Any]:
        """``ChatAdapter.parse``, reading the output fields from the per-class entry."""
        outputs = self._plan(signature).outputs
        sections: list[tuple[str | None, list[str]]] = [(None, [])]
        for line in completion.splitlines():
            match = field_header_pattern.match(line.strip())
            if match:
                header = match.group(1)
                remaining = line[match.end() :].strip()
                sections.append((header, [remaining] if remaining else []))
            else:
                sections[-1][1].append(line)
        fields: dict[str, Any] = {}
        for name, lines in sections:
            if name not in fields and name in outputs:
                text = "\n".join(lines).strip()
                try:
                    fields[name] = parse_value(text, outputs[name].annotation)
                except ValueError as e:
                    raise AdapterParseError(
                        adapter_name="ChatAdapter",
                        signature=signature,
                        lm_response=completion,
                        message=f"Failed to parse field {name} with value {text} from the LM "
                        f"response. Error message: {e}",
                    ) from e
        fields = apply_output_field_defaults(signature, fields)
        if fields.keys() != outputs.keys():
            raise AdapterParseError(
                adapter_name="ChatAdapter",
                signature=signature,
                lm_response=completion,
                parsed_result=fields,
            )
        return fields

    def format_field_with_value(self, fields_with_values: dict[Any, Any]) -> str:
        """``ChatAdapter.format_field_with_value`` with the faster value formatting."""
        output = [
            f"[[ ## {field.name} ## ]]\n{format_field_value(field.info, value)}"
            for field, value in fields_with_values.items()
        ]
        return "\n\n".join(output).strip()


def _user_content(
    fields: tuple[tuple[str, Any], ...],
    inputs: dict[str, Any],
    requirements: str | None,
    prefix: str = "",
    suffix: str = "",
) -> str:
    parts = [prefix]
    for name, info in fields:
        if name in inputs:
            parts.append(f"[[ ## {name} ## ]]\n{format_field_value(info, inputs.get(name))}")
    if requirements is not None:
        parts.append(requirements)
    parts.append(suffix)
    return "\n\n".join(parts).strip()


def is_default_chat_adapter(adapter: Any) -> bool:
    """Whether ``adapter`` is exactly a ``dspy.ChatAdapter()`` with every setting at its default.

    Such an adapter formats and parses exactly as :class:`FastChatAdapter` does, so the faster
    one may stand in for it. A subclass, an adapter with callbacks of its own, native function
    calling, other native response types, no JSON fallback, a parallel-tool-calls setting or
    any attribute set on the instance beyond those is used as given.
    """
    if type(adapter) is not dspy.ChatAdapter:
        return False
    state = vars(adapter)
    return (
        state.keys() == _DEFAULT_STATE.keys()
        and not adapter.callbacks
        and adapter.use_native_function_calling is False
        and adapter.use_json_adapter_fallback is True
        and adapter.parallel_tool_calls is None
        and list(adapter.native_response_types) == list(_DEFAULT_STATE["native_response_types"])
    )


_DEFAULT_STATE: dict[str, Any] = dict(vars(dspy.ChatAdapter()))
