"""Export a signature as JSON Schema, an OpenAI strict function tool or an Anthropic tool.

The schema describes the **output** fields by default: that is what an LM must produce, and so
what tool calling and structured outputs need. ``part="inputs"`` describes the inputs instead.

* ``json_schema`` — a draft 2020-12 document (``$schema``, ``title``, ``description``).
* ``openai`` — ``{"type": "function", "function": {name, description, strict, parameters}}``:
  every property required, optional fields nullable, ``additionalProperties: false`` on every
  object, and keywords strict mode does not support removed (dspex still enforces them when it
  validates the answer). A ``dict`` field has open keys, which strict mode cannot express: such
  a tool is exported with ``strict: false``.
* ``anthropic`` — ``{name, description, input_schema}``.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

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
    constraint_applies,
)

if TYPE_CHECKING:
    from dspex.signatures.signature import Signature

__all__ = ["DRAFT_2020_12", "TARGETS", "export_schema", "meta_schema_problems", "type_schema"]

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
TARGETS = ("json_schema", "openai", "anthropic")
_NO_CONSTRAINTS = Constraints()
# Keywords OpenAI's strict structured outputs reject; the validator still enforces them.
_OPENAI_UNSUPPORTED = frozenset(
    {"minLength", "maxLength", "uniqueItems", "minProperties", "maxProperties", "propertyNames"}
)


def _for_option(c: Constraints, node: TypeNode) -> Constraints:
    keep = {
        k: v
        for k, v in c.model_dump(exclude_none=True).items()
        if k != "one_of" and constraint_applies(k, node)
    }
    return Constraints(**keep) if keep else _NO_CONSTRAINTS


def _num(
    out: dict[str, Any], c: Constraints, lo: float | None = None, hi: float | None = None
) -> None:
    minimum = c.minimum if lo is None else (lo if c.minimum is None else max(lo, c.minimum))
    maximum = c.maximum if hi is None else (hi if c.maximum is None else min(hi, c.maximum))
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    if c.multiple_of is not None:
        out["multipleOf"] = c.multiple_of


def _items(out: dict[str, Any], c: Constraints) -> None:
    if c.min_items is not None:
        out["minItems"] = c.min_items
    if c.max_items is not None:
        out["maxItems"] = c.max_items
    if c.unique_items:
        out["uniqueItems"] = True


def type_schema(
    node: TypeNode, c: Constraints = _NO_CONSTRAINTS, defs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON Schema of one type under its constraints.

    Args:
        node: the type.
        c: the field's constraints.
        defs: where nested models' ``$defs`` are collected (they must live at the document root).
    """
    defs = {} if defs is None else defs
    out = _type_schema(node, c, defs)
    if c.one_of is not None and not isinstance(node, OptionalType):
        out["enum"] = list(c.one_of)
    return out


def _type_schema(node: TypeNode, c: Constraints, defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any]
    if isinstance(node, Scalar):
        if node.name == "str":
            out = {"type": "string"}
            if c.min_length is not None:
                out["minLength"] = c.min_length
            if c.max_length is not None:
                out["maxLength"] = c.max_length
            if c.pattern is not None:
                out["pattern"] = c.pattern
            return out
        if node.name == "bool":
            return {"type": "boolean"}
        out = {"type": "integer" if node.name == "int" else "number"}
        _num(out, c)
        return out
    if isinstance(node, Probability | ConfidenceScore):
        out = {"type": "number"}
        _num(out, c, 0.0, 1.0)
        return out
    if isinstance(node, LiteralType):
        out = {"enum": list(node.values)}
        kinds = {_literal_kind(v) for v in node.values}
        if len(kinds) == 1:
            out["type"] = kinds.pop()
        return out
    if isinstance(node, Embedding):
        dim = node.dim if node.dim is not None else c.dim
        out = {"type": "array", "items": {"type": "number"}}
        out["minItems"] = dim if dim is not None else max(1, c.min_items or 1)
        if dim is not None or c.max_items is not None:
            out["maxItems"] = dim if dim is not None else c.max_items
        return out
    if isinstance(node, ReasoningChain):
        out = {"type": "array", "items": {"type": "string"}}
        _items(out, c)
        return out
    if isinstance(node, ListType):
        out = {"type": "array", "items": type_schema(node.item, defs=defs)}
        _items(out, c)
        return out
    if isinstance(node, DictType):
        out = {"type": "object", "additionalProperties": type_schema(node.value, defs=defs)}
        if isinstance(node.key, LiteralType):
            out["propertyNames"] = {"enum": list(node.key.values)}
        if c.min_items is not None:
            out["minProperties"] = c.min_items
        if c.max_items is not None:
            out["maxProperties"] = c.max_items
        return out
    if isinstance(node, UnionType):
        return {"anyOf": [type_schema(o, _for_option(c, o), defs) for o in node.options]}
    if isinstance(node, OptionalType):
        return {"anyOf": [type_schema(node.inner, c, defs), {"type": "null"}]}
    if isinstance(node, ModelType):
        schema = copy.deepcopy(node.model.model_json_schema())
        defs.update(schema.pop("$defs", {}))
        return schema
    if isinstance(node, DspyType):
        return dspy_types.json_schema(node.name)
    raise TypeError(f"not a type node: {node!r}")  # pragma: no cover


def _literal_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _object(fields: tuple[FieldSpec, ...], *, all_required: bool) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for f in fields:
        prop = type_schema(f.type, f.constraints, defs)
        if f.description:
            prop = {"description": f.description, **prop}
        properties[f.name] = prop
    required = [f.name for f in fields if all_required or not f.optional]
    out: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    if defs:
        out["$defs"] = defs
    return out


def _description(sig: Signature, part: str) -> str:
    if sig.instructions:
        return sig.instructions
    ins = ", ".join(f"`{n}`" for n in sig.input_names)
    outs = ", ".join(f"`{n}`" for n in sig.output_names)
    if part == "inputs":
        return f"The inputs of {sig.name}: {ins}." if ins else f"The inputs of {sig.name}."
    return (
        f"Given the fields {ins}, produce the fields {outs}."
        if ins
        else f"Produce the fields {outs}."
    )


def _tool_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]
    return cleaned or "signature"


def _strictify(schema: Any) -> bool:
    """Make every object strict (all required, closed) in place; False if one cannot be."""
    ok = True
    if isinstance(schema, dict):
        for key in _OPENAI_UNSUPPORTED & schema.keys():
            del schema[key]
        if schema.get("type") == "object" or "properties" in schema:
            extra = schema.get("additionalProperties")
            if (
                isinstance(extra, dict)
                or (extra is None and "properties" not in schema)
                or extra is True
            ):
                ok = False
            else:
                props = schema.setdefault("properties", {})
                required = set(schema.get("required", []))
                for name, prop in list(props.items()):
                    if name not in required and not _nullable(prop):
                        props[name] = {"anyOf": [prop, {"type": "null"}]}
                schema["required"] = list(props)
                schema["additionalProperties"] = False
        for value in list(schema.values()):
            ok = _strictify(value) and ok
    elif isinstance(schema, list):
        for value in schema:
            ok = _strictify(value) and ok
    return ok


def _nullable(prop: Any) -> bool:
    if not isinstance(prop, dict):
        return False
    if prop.get("type") == "null" or (
        isinstance(prop.get("type"), list) and "null" in prop["type"]
    ):
        return True
    return any(isinstance(o, dict) and o.get("type") == "null" for o in prop.get("anyOf", []))


def export_schema(
    sig: Signature, target: str = "json_schema", *, part: str = "outputs"
) -> dict[str, Any]:
    """The schema of ``sig``'s ``part`` fields for ``target``; see the module docstring.

    Raises:
        ValueError: unknown ``target`` or ``part``.
    """
    if part not in ("outputs", "inputs"):
        raise ValueError(f"part must be 'outputs' or 'inputs', not {part!r}")
    fields = sig.output_fields if part == "outputs" else sig.input_fields
    description = _description(sig, part)
    if target == "json_schema":
        body = _object(fields, all_required=False)
        return {"$schema": DRAFT_2020_12, "title": sig.name, "description": description, **body}
    if target == "openai":
        params = _object(fields, all_required=True)
        strict = _strictify(params)
        return {
            "type": "function",
            "function": {
                "name": _tool_name(sig.name),
                "description": description,
                "strict": strict,
                "parameters": params,
            },
        }
    if target == "anthropic":
        return {
            "name": _tool_name(sig.name),
            "description": description,
            "input_schema": _object(fields, all_required=False),
        }
    raise ValueError(f"unknown schema target {target!r} (known: {', '.join(TARGETS)})")


def schema_body(exported: dict[str, Any], target: str) -> dict[str, Any]:
    """The JSON Schema inside an export (the document itself, parameters or input_schema)."""
    if target == "openai":
        body: dict[str, Any] = exported["function"]["parameters"]
        return body
    if target == "anthropic":
        result: dict[str, Any] = exported["input_schema"]
        return result
    return exported


def meta_schema_problems(exported: dict[str, Any], target: str) -> list[str]:
    """Why the schema of an export is not valid draft 2020-12 JSON Schema (empty when it is)."""
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    validator = Draft202012Validator(Draft202012Validator.META_SCHEMA)
    body = schema_body(exported, target)
    problems = [
        f"{'/'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in validator.iter_errors(body)
    ]
    if target in ("openai", "anthropic"):
        name = exported["function"]["name"] if target == "openai" else exported["name"]
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            problems.append(f"tool name {name!r} is not 1-64 letters, digits, '_' or '-'")
        if body.get("type") != "object":
            problems.append("a tool's schema must be an object")
    return problems
