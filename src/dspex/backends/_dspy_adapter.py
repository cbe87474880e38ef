"""A ``dspy.ChatAdapter`` that writes the same messages with less work per call.

:class:`FastChatAdapter` formats prompts byte for byte like DSPy's ``ChatAdapter`` and parses
answers into the same values (and the same errors). It is built on DSPy's and pydantic's public
API only (the adapter's documented methods, ``dspy.adapters.utils``, ``dspy.context``,
``TypeAdapter``, ``model_dump``); it differs from ``ChatAdapter`` only in what it recomputes:

* the system message depends only on the signature class, so it is built once per class, with
  the class's input fields, output fields and output-format reminder (all rebuilt when the
  class's instructions or its ``model_fields`` object change);
* a field value is serialized as DSPy's ``serialize_for_json`` does, but with one pydantic
  ``TypeAdapter`` per value type, kept, instead of a new one per value (a pydantic model is
  dumped with its own ``model_dump``, which is what its adapter would call);
* ``parse`` is ``ChatAdapter.parse`` reading the output fields from the per-class entry instead
  of rebuilding them from the class three times per answer.

A call with a conversation history, or whose messages carry a custom-type payload (an image,
audio, a file), is formatted by a stock ``dspy.ChatAdapter`` itself, with the callbacks this
adapter's own ``format`` already reported switched off for that inner call. Everything else is
``ChatAdapter``'s: the call pipeline, native features, callbacks (``format`` and ``parse`` are
reported once each, as on ``ChatAdapter``) and the JSON-adapter fallback when an answer cannot be
parsed.

``tests/backends/test_dspy_fast_adapter.py`` holds the proof: the messages and parse results of
both adapters are compared byte for byte over more than fifty signatures.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.adapters.chat_adapter import field_header_pattern
from dspy.adapters.types.base_type import CUSTOM_TYPE_START_IDENTIFIER
from dspy.adapters.utils import apply_output_field_defaults, parse_value
from dspy.adapters.utils import format_field_value as stock_format_field_value
from dspy.utils.exceptions import AdapterParseError
from pydantic import BaseModel, TypeAdapter
from pydantic.dataclasses import is_pydantic_dataclass

__all__ = ["FastChatAdapter", "format_field_value", "serialize_for_json"]

_TYPE_CACHE_SIZE = 1024

# value type -> its TypeAdapter (types whose pydantic schema cannot change after creation)
_TYPE_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def serialize_for_json(value: Any) -> Any:
    """``dspy.adapters.utils.serialize_for_json``, with one ``TypeAdapter`` per value type.

    A ``str`` is returned as is (what pydantic's JSON-mode dump of a ``str`` returns) and a
    pydantic model is dumped with ``model_dump`` (what its ``TypeAdapter`` does, without building
    one). A pydantic dataclass, which can be rebuilt, gets a new adapter on every call, as in DSPy;
    a type pydantic cannot adapt is retried on every call, as DSPy does.
    """
    kind = type(value)
    if kind is str:
        return value
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json", fallback=str)
        except Exception:
            return str(value)
    try:
        adapter = _TYPE_ADAPTERS.get(kind)
    except TypeError:  # a class whose metaclass makes it unhashable: no cache
        adapter = None
    if adapter is None:
        try:
            adapter = TypeAdapter(kind)
        except Exception:
            return str(value)
        if not is_pydantic_dataclass(kind):
            if len(_TYPE_ADAPTERS) >= _TYPE_CACHE_SIZE:
                _TYPE_ADAPTERS.clear()
            with contextlib.suppress(TypeError):
                _TYPE_ADAPTERS[kind] = adapter
    try:
        return adapter.dump_python(value, mode="json", fallback=str)
    except Exception:
        return str(value)


def format_field_value(field_info: Any, value: Any) -> str:
    """``dspy.adapters.utils.format_field_value`` (text form), with :func:`serialize_for_json`."""
    if isinstance(value, list) and field_info.annotation is str:
        # DSPy's numbered list of passages; no pydantic work on this path
        return str(stock_format_field_value(field_info, value))
    jsonable = serialize_for_json(value)
    if isinstance(jsonable, dict | list):
        return json.dumps(jsonable, ensure_ascii=False)
    return str(jsonable)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the messages of one signature class share across calls."""

    instructions: str
    fields: Any
    system: str
    inputs: tuple[tuple[str, Any], ...]
    outputs: dict[str, Any]
    has_history: bool
    requirements: str | None


EXCHANGE: ContextVar[list[Any] | None] = ContextVar("dspex_lm_exchange", default=None)
"""Where a call that wants its LM exchange asks :class:`FastChatAdapter` to leave it: a list
``[messages, completion]`` set for the call (``None``: nobody asked). The adapter keeps the
last messages it formatted and the last completion it parsed in it."""


class FastChatAdapter(dspy.ChatAdapter):  # type: ignore[misc]
    """DSPy's ``ChatAdapter`` with its default settings, working from a per-class cache.

    The messages are the ones ``dspy.ChatAdapter().format(...)`` returns and ``parse`` returns
    (or raises) what ``dspy.ChatAdapter().parse(...)`` does; the JSON fallback and callbacks
    are ``ChatAdapter``'s own.

    Example:
        >>> sig = dspy.Signature("question -> answer")
        >>> messages = FastChatAdapter().format(sig, [], {"question": "6 * 7?"})
        >>> messages == dspy.ChatAdapter().format(sig, [], {"question": "6 * 7?"})
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self._plans: weakref.WeakKeyDictionary[type, _Plan] = weakref.WeakKeyDictionary()

    def __getstate__(self) -> dict[str, Any]:
        # the cache holds signature classes, which are often built at run time (not importable)
        return {key: value for key, value in self.__dict__.items() if key != "_plans"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._plans = weakref.WeakKeyDictionary()

    # --- the per-class cache ------------------------------------------------------------------

    def _plan(self, signature: Any) -> _Plan:
        plan = self._plans.get(signature)
        instructions, fields = signature.instructions, signature.model_fields
        if plan is not None and plan.fields is fields and plan.instructions == instructions:
            return plan
        inputs = tuple(signature.input_fields.items())
        plan = _Plan(
            instructions=instructions,
            fields=fields,
            system=super().format_system_message(signature),
            inputs=inputs,
            outputs=signature.output_fields,
            has_history=any(info.annotation == dspy.History for _, info in inputs),
            requirements=self.user_message_output_requirements(signature),
        )
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
        messages = self._format(signature, demos, inputs)
        slot = EXCHANGE.get()
        if slot is not None:
            slot[0] = messages
        return messages

    def _format(
        self, signature: Any, demos: list[dict[str, Any]], inputs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        plan = self._plan(signature)
        if plan.has_history:
            return _stock_format(signature, demos, inputs)
        messages: list[dict[str, Any]] = [{"role": "system", "content": plan.system}]
        if demos:
            messages.extend(self.format_demos(signature, demos))
        content = _user_content(plan.inputs, inputs, plan.requirements)
        if content:
            messages.append({"role": "user", "content": content})
        for message in messages:
            if message["role"] == "user" and CUSTOM_TYPE_START_IDENTIFIER in message["content"]:
                # DSPy splits such a payload into content blocks
                return _stock_format(signature, demos, inputs)
        return messages

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

    def format_field_with_value(self, fields_with_values: dict[Any, Any]) -> str:
        """``ChatAdapter.format_field_with_value`` with the faster value formatting."""
        output = [
            f"[[ ## {field.name} ## ]]\n{format_field_value(field.info, value)}"
            for field, value in fields_with_values.items()
        ]
        return "\n\n".join(output).strip()

    # --- parsing ------------------------------------------------------------------------------

    def parse(self, signature: Any, completion: str) -> dict[str, Any]:
        """``ChatAdapter.parse``, reading the output fields from the per-class entry."""
        slot = EXCHANGE.get()
        if slot is not None:
            slot[1] = completion
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


def _stock_format(
    signature: Any, demos: list[dict[str, Any]], inputs: dict[str, Any]
) -> list[dict[str, Any]]:
    """DSPy's own ``ChatAdapter.format``; the calling ``format`` has reported the callbacks."""
    with dspy.context(callbacks=[]):
        messages: list[dict[str, Any]] = dspy.ChatAdapter().format(signature, demos, inputs)
    return messages


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
