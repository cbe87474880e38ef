"""Prices per model: [prices] overrides over LiteLLM's local cost map."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dspex.backends import pricing
from dspex.backends.base import Usage
from dspex.backends.pricing import Price, PriceTable, litellm_cost_map


def test_litellm_prices_a_known_model_under_its_provider_name() -> None:
    entry = litellm_cost_map()["gpt-4o-mini"]
    price = PriceTable().price("openai/gpt-4o-mini")
    assert price == Price(entry["input_cost_per_token"], entry["output_cost_per_token"])
    assert price.input_cost_per_token > 0


def test_an_override_wins_over_litellm() -> None:
    table = PriceTable({"openai/gpt-4o-mini": Price(1.0, 2.0)})
    assert table.cost({"openai/gpt-4o-mini": Usage(3, 4)}) == pytest.approx(11.0)


def test_an_override_without_the_provider_prefix_applies_to_the_prefixed_name() -> None:
    table = PriceTable({"my-model": Price(0.5, 0.0)})
    assert table.cost_of_counts("local/my-model", 4, 100) == pytest.approx(2.0)


def test_models_without_a_price_cost_nothing_and_are_known_as_such() -> None:
    table = PriceTable()
    assert not table.known("mock")
    assert not table.known("no-such-provider/no-such-model-xyz")
    assert table.cost({"mock": Usage(1000, 1000), "gpt-4o-mini": Usage(0, 0)}) == 0.0


def test_litellm_can_be_left_out() -> None:
    assert PriceTable(use_litellm=False).price("gpt-4o-mini") is None


def test_cost_adds_every_model() -> None:
    table = PriceTable({"a": Price(1e-6, 2e-6), "b": Price(3e-6, 0.0)}, use_litellm=False)
    usage = {"a": Usage(1000, 500), "b": Usage(100, 7)}
    assert table.cost(usage) == pytest.approx(0.001 + 0.001 + 0.0003)


def test_a_process_without_litellm_imported_reads_its_bundled_cost_map_without_importing_it() -> (
    None
):
    code = (
        "import sys; from dspex.backends.pricing import PriceTable; "
        "price = PriceTable().price('openai/gpt-4o-mini'); "
        "print(price is not None and price.input_cost_per_token > 0, 'litellm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["True", "False"]


def test_entries_without_token_prices_are_no_price(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {
        "junk": "not a table",
        "embedding": {"mode": "chat"},
        "half": {"input_cost_per_token": 2},
    }
    monkeypatch.setattr(pricing, "litellm_cost_map", lambda: fake)
    table = PriceTable()
    assert table.price("junk") is None
    assert table.price("embedding") is None
    assert table.price("half") == Price(2.0, 0.0)


def test_without_litellm_installed_every_model_is_unpriced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing.importlib.util, "find_spec", lambda name: None)
    assert pricing._read_bundled() == {}
