"""Frozen, slotted dataclasses built through their slot descriptors behave as generated ones."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest

from dspex._slots import fast_frozen_init
from dspex.backends.base import BackendAttempt, PredictRequest, PredictResult, Usage
from dspex.engine.results import RunError, RunResult, StepResult
from dspex.records import (
    AttemptRecord,
    BatchRecord,
    ExecutionRecord,
    FinishRequest,
    ProgramRecord,
    StepRecord,
    StepStatus,
)


def _twin(fast: bool) -> Any:
    @dataclass(frozen=True, slots=True)
    class Sample:
        name: str
        count: int = 1
        tags: list[str] = field(default_factory=list)
        note: str | None = field(default=None, kw_only=True)
        meta: dict[str, Any] = field(default_factory=dict, kw_only=True)

    return fast_frozen_init(Sample) if fast else Sample


SLOW, FAST = _twin(False), _twin(True)


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("a",), {}),
        (("a", 3), {}),
        (("a", 3, ["x"]), {"note": "n", "meta": {"k": 1}}),
        ((), {"name": "a", "tags": ["y"]}),
    ],
)
def test_same_values_as_the_generated_init(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    assert _fields(FAST(*args, **kwargs)) == _fields(SLOW(*args, **kwargs))
    assert repr(FAST(*args, **kwargs)).endswith(repr(SLOW(*args, **kwargs)).split(".")[-1])


def test_factories_give_each_instance_its_own_value() -> None:
    one, two = FAST("a"), FAST("b")
    assert one.tags == []
    assert one.meta == {}
    assert one.tags is not two.tags
    assert one.meta is not two.meta


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), (("a", 1, [], "note"), {}), (("a",), {"unknown": 1}), (("a",), {"name": "b"})],
)
def test_wrong_calls_fail_as_they_would(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        SLOW(*args, **kwargs)
    with pytest.raises(TypeError):
        FAST(*args, **kwargs)


def test_the_signature_is_the_generated_one() -> None:
    slow = inspect.signature(SLOW)
    fast = inspect.signature(FAST)
    assert [
        (p.name, p.kind, p.default if p.default is None else repr(p.default))
        for p in slow.parameters.values()
    ] == [
        (p.name, p.kind, p.default if p.default is None else repr(p.default))
        for p in fast.parameters.values()
    ]


def test_instances_stay_frozen_comparable_and_picklable() -> None:
    item = FAST("a", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.name = "b"
    assert item == FAST("a", 2)
    assert dataclasses.replace(item, count=5) == FAST("a", 5)
    record = StepRecord(module="m", status=StepStatus.COMPLETED, usage={"mock": {"a": 1}})
    assert pickle.loads(pickle.dumps(record)) == record  # workers send records across


def test_classes_it_cannot_build_are_refused() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        name: str

    @dataclass(slots=True)
    class NotFrozen:
        name: str

    @dataclass(frozen=True, slots=True)
    class Computed:
        name: str
        size: int = field(init=False, default=0)

    for cls in (NoSlots, NotFrozen, Computed):
        with pytest.raises(TypeError):
            fast_frozen_init(cls)


@pytest.mark.parametrize(
    "cls",
    [
        BackendAttempt,
        PredictRequest,
        PredictResult,
        Usage,
        RunError,
        RunResult,
        StepResult,
        AttemptRecord,
        BatchRecord,
        ExecutionRecord,
        FinishRequest,
        ProgramRecord,
        StepRecord,
    ],
)
def test_the_records_keep_their_dataclass_signatures(cls: type) -> None:
    init = vars(cls)["__init__"]
    assert init.__qualname__ == f"{cls.__qualname__}.__init__"
    params = list(inspect.signature(cls).parameters.values())
    fields = list(dataclasses.fields(cls))
    assert [p.name for p in params] == [f.name for f in fields if not f.kw_only] + [
        f.name for f in fields if f.kw_only
    ]
    for p, f in zip(params, fields, strict=False):
        if f.default is not dataclasses.MISSING:
            assert p.default == f.default
        elif f.default_factory is dataclasses.MISSING:
            assert p.default is inspect.Parameter.empty
