"""What a model's tokens cost: LiteLLM's cost map, overridden by ``[prices."MODEL"]``.

Prices are US dollars per token, under LiteLLM's names (``input_cost_per_token``,
``output_cost_per_token``) and keyed by LiteLLM's model names (``openai/gpt-4o-mini`` or
``gpt-4o-mini``). A model is looked up in the overrides first, then in LiteLLM's map; each time
under its full name, then without its ``provider/`` prefix. A model found nowhere (the ``mock``
backend's, a local model) costs nothing, and :meth:`PriceTable.known` says so.

LiteLLM's map is ``litellm.model_cost`` when LiteLLM is already imported (DSPy imports it);
otherwise the copy LiteLLM ships inside its package, the same file it loads itself with
``LITELLM_LOCAL_MODEL_COST_MAP=true``, is read without importing LiteLLM (which takes seconds):
a process that only runs the ``mock`` or ``openai`` transports does not pay for it. Nothing is
fetched from the network.

Example:
    >>> table = PriceTable({"mock": Price(input_cost_per_token=1e-6, output_cost_per_token=2e-6)})
    >>> table.cost({"mock": Usage(prompt_tokens=1000, completion_tokens=500)})
    0.002
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspex.backends.base import Usage

__all__ = ["Price", "PriceTable", "litellm_cost_map"]

log = logging.getLogger("dspex.pricing")

_BUNDLED = "model_prices_and_context_window_backup.json"
_lock = threading.Lock()
_loaded: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per prompt (input) and completion (output) token."""

    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_cost_per_token
            + completion_tokens * self.output_cost_per_token
        )


def litellm_cost_map() -> Mapping[str, Any]:
    """LiteLLM's model cost map (empty when LiteLLM is not installed). Read once per process."""
    global _loaded
    module = sys.modules.get("litellm")
    if module is not None:
        cost_map = getattr(module, "model_cost", None)
        if isinstance(cost_map, Mapping):
            return cost_map
    with _lock:
        if _loaded is None:
            _loaded = _read_bundled()
        return _loaded


def _read_bundled() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _BUNDLED
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    log.info("LiteLLM's cost map was not found: models without a [prices] entry cost nothing")
    return {}


def _price_of(entry: Any) -> Price | None:
    if not isinstance(entry, Mapping):
        return None
    values = (entry.get("input_cost_per_token"), entry.get("output_cost_per_token"))
    if not any(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    prompt, completion = (
        float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0 for v in values
    )
    return Price(prompt, completion)


class PriceTable:
    """Prices by model: ``overrides`` (``[prices."MODEL"]``) before LiteLLM's cost map.

    Args:
        overrides: prices by model name that win over LiteLLM's.
        use_litellm: also look models up in LiteLLM's cost map (``False``: overrides only).
    """

    def __init__(self, overrides: Mapping[str, Price] | None = None, *, use_litellm: bool = True):
        self._overrides = dict(overrides or {})
        self._use_litellm = use_litellm
        self._cache: dict[str, Price | None] = {}

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or ``None`` when no table knows it."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._lookup(model)
        self._cache[model] = found
        return found

    def known(self, model: str) -> bool:
        """Whether ``model`` has a price (a model without one is counted at no cost)."""
        return self.price(model) is not None

    def _lookup(self, model: str) -> Price | None:
        names = [model]
        if "/" in model:
            names.append(model.split("/", 1)[1])
        for name in names:
            if name in self._overrides:
                return self._overrides[name]
        if not self._use_litellm or model == "mock":
            return None
        cost_map = litellm_cost_map()
        for name in names:
            found = _price_of(cost_map.get(name))
            if found is not None:
                return found
        return None

    def cost(self, usage: Mapping[str, Usage]) -> float:
        """US dollars of ``usage`` (tokens by model); models without a price cost nothing."""
        total = 0.0
        for model, used in usage.items():
            price = self.price(model)
            if price is not None:
                total += price.cost(used.prompt_tokens, used.completion_tokens)
        return total

    def cost_of_counts(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """US dollars of one model's token counts."""
        price = self.price(model)
        return 0.0 if price is None else price.cost(prompt_tokens, completion_tokens)
