"""Typed signatures: the type tree, parsing and formatting, validation and schema export.

Submodules import only pydantic (never DSPy); :mod:`dspex.signatures.dspy_interop` is the one
place that converts to and from DSPy signature classes, imported lazily.
"""

from __future__ import annotations

from dspex.signatures.parse import format_type, parse_type
from dspex.signatures.signature import Signature
from dspex.signatures.types import Constraints, FieldSpec, TypeNode

__all__ = ["Constraints", "FieldSpec", "Signature", "TypeNode", "format_type", "parse_type"]
