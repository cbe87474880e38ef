"""Programs and helpers shared by the runtime tests."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from dspex.backends.base import Backend
from dspex.backends.mock import MockBackend
from dspex.config import DefaultsSettings, Settings
from dspex.runtime import Runtime
from dspex.store.base import Store
from dspex.telemetry import Telemetry

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def slow(signature: str, ms: float, **fields: Any) -> dict[str, Any]:
    return {"kind": "predict", "signature": signature, "config": {"mock_latency_ms": ms}, **fields}


# a(100) and b(300) are independent; c needs a; d needs b and c: the critical path is b -> d.
DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "signature": "q: str -> y: str",
    "modules": {
        "a": slow("q: str -> a1: str", 100),
        "b": slow("q: str -> b1: str", 300),
        "c": slow("a1: str -> c1: str", 100, inputs={"a1": "a.a1"}),
        "d": slow("b1: str, c1: str -> y: str", 100, inputs={"b1": "b.b1", "c1": "c.c1"}),
    },
}


def changed(spec: Mapping[str, Any], **updates: Any) -> dict[str, Any]:
    out = copy.deepcopy(dict(spec))
    out.update(updates)
    return out


def make_runtime(
    store: Store,
    backends: Mapping[str, Backend] | None = None,
    *,
    hooks: Sequence[object] = (),
    telemetry: Telemetry | None = None,
    lease_seconds: float = 30.0,
    worker_id: str = "worker-1",
    defaults: DefaultsSettings | None = None,
    live_steps_seconds: float = 0.5,
) -> Runtime:
    """A runtime over ``store`` (not started: use ``async with``), with the safe ``defaults``
    unless others are given."""
    return Runtime(
        Settings(
            lease_seconds=lease_seconds,
            defaults=defaults or DefaultsSettings(),
            live_steps_seconds=live_steps_seconds,
        ),
        store,
        backends=backends or {"default": MockBackend("default")},
        worker_id=worker_id,
        hooks=hooks,
        telemetry=telemetry or Telemetry(spans=False),
    )


async def ready(rt: Runtime, spec: Mapping[str, Any] = QA) -> str:
    """Register and initialize ``spec``; returns its name."""
    info = await rt.register(spec)
    info = await rt.initialize(info.name, info.version)
    assert info.status == "ready", info.error
    return info.name
