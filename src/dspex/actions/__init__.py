"""The operations users call (DESIGN §3). Each returns a typed result model."""

from __future__ import annotations

from dspex.actions.validate_signature import ValidationReport, validate_signature

__all__ = ["ValidationReport", "validate_signature"]
