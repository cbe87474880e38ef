"""``Runtime.calls_dspy_lm``: whether running a program goes through a ``dspy.LM``.

The backends are built from a ``dspex.toml`` as the ``dspex`` command builds them (a ``dspy``
backend plain, behind a rate limit and in a coordinator group; ``mock`` and ``openai`` ones),
on SQLite. No LM is called: the answer comes from the program and the backends alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.engine.dspy_native_modules import REF

from dspex.errors import NotFoundError
from dspex.runtime import Runtime

CONFIG = f"""
default_backend = "fake"
allowed_imports = ["{REF}"]

[backends.fake]
kind = "mock"

[backends.http]
kind = "openai"
model = "some-model"
base_url = "http://127.0.0.1:9/v1"

[backends.lm]
kind = "dspy"
model = "openai/some-model"
api_base = "http://127.0.0.1:9/v1"

[backends.limited]
kind = "dspy"
model = "openai/some-model"
api_base = "http://127.0.0.1:9/v1"
rpm = 600

[coordinators.mixed]
backends = ["fake", "lm"]

[coordinators.plain]
backends = ["fake", "http"]
"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    config = tmp_path / "dspex.toml"
    config.write_text(CONFIG)
    async with Runtime.open(f"sqlite:///{tmp_path / 'dspex.db'}", config=config) as rt:
        yield rt


def _program(name: str, **modules: dict[str, Any]) -> dict[str, Any]:
    last = list(modules)[-1]
    return {
        "name": name,
        "signature": "question: str -> answer: str",
        "modules": modules,
        "outputs": {"answer": f"{last}.answer"},
    }


def _predict(backend: str | None = None, kind: str = "predict") -> dict[str, Any]:
    module: dict[str, Any] = {"kind": kind, "signature": "question: str -> answer: str"}
    if backend is not None:
        module["backend"] = backend
    return module


def _dspy(backend: str | None = None) -> dict[str, Any]:
    module: dict[str, Any] = {
        "kind": "dspy",
        "module": f"{REF}:Echo",
        "init": {"suffix": "!"},
        "signature": "question: str -> answer: str",
    }
    if backend is not None:
        module["backend"] = backend
    return module


async def _calls(rt: Runtime, spec: dict[str, Any], **kwargs: Any) -> bool:
    await rt.register(spec)
    return await rt.calls_dspy_lm(spec["name"], **kwargs)


async def test_predictors_on_a_dspy_backend_call_a_dspy_lm(runtime: Runtime) -> None:
    assert await _calls(runtime, _program("plain", answer=_predict("lm")))
    assert await _calls(runtime, _program("cot", answer=_predict("lm", "chain_of_thought")))


async def test_a_rate_limited_dspy_backend_and_a_group_with_one_still_call_a_dspy_lm(
    runtime: Runtime,
) -> None:
    assert await _calls(runtime, _program("limited", answer=_predict("limited")))
    assert await _calls(runtime, _program("mixed", answer=_predict("mixed")))


async def test_mock_and_openai_backends_and_groups_of_them_call_no_dspy_lm(
    runtime: Runtime,
) -> None:
    assert not await _calls(runtime, _program("fake", answer=_predict()))
    assert not await _calls(runtime, _program("http", answer=_predict("http")))
    assert not await _calls(runtime, _program("group", answer=_predict("plain")))


async def test_one_module_on_a_dspy_backend_is_enough(runtime: Runtime) -> None:
    spec = _program("two", first=_predict("fake"), second=_predict("lm"))
    spec["modules"]["second"]["inputs"] = {"question": "first.answer"}
    assert await _calls(runtime, spec)


async def test_a_dspy_module_calls_a_dspy_lm_unless_its_backend_has_none(
    runtime: Runtime,
) -> None:
    # without a backend it runs on the LM its own code configures
    assert await _calls(runtime, _program("own", echo=_dspy()))
    assert await _calls(runtime, _program("on_lm", echo=_dspy("lm")))
    assert not await _calls(runtime, _program("on_http", echo=_dspy("http")))


async def test_a_backend_override_decides_for_every_predictor(runtime: Runtime) -> None:
    spec = _program("over", answer=_predict("fake"))
    assert not await _calls(runtime, spec)
    assert await runtime.calls_dspy_lm("over", backend="lm")
    assert not await runtime.calls_dspy_lm("over", backend="http")


async def test_the_version_asked_for_is_the_one_answered_for(runtime: Runtime) -> None:
    await runtime.register(_program("versions", answer=_predict("fake")))
    await runtime.register(_program("versions", answer=_predict("lm")))
    assert not await runtime.calls_dspy_lm("versions", 1)
    assert await runtime.calls_dspy_lm("versions", 2)
    assert await runtime.calls_dspy_lm("versions")  # none promoted: the newest


async def test_an_unknown_program_is_a_typed_error(runtime: Runtime) -> None:
    with pytest.raises(NotFoundError):
        await runtime.calls_dspy_lm("nowhere")
