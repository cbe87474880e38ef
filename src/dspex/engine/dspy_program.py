"""A program as a ``dspy.Module``: what DSPy's optimizers see, and the way back to a spec.

A graph program becomes a :class:`ProgramModule` (built by :func:`program_module`): a
``dspy.Module`` with one attribute per LM module, named as the module is, holding a
``dspy.Predict`` (``predict``) or a ``dspy.ChainOfThought`` (``chain_of_thought``) made from the
module's signature, instructions and demos. ``named_predictors()`` therefore names them
``<module>`` and ``<module>.predict``. Its ``forward`` runs the whole graph on an
:class:`~dspex.engine.Engine` — every kind, the strategy, timeouts, retries and resource limits,
as in production — on the event loop the engine lives on: a call from another thread (an
optimizer runs in one) is handed to that loop, with the caller's context (DSPy's settings, its
trace among them) carried along.

The LM modules' calls reach the program's backends through :class:`PredictorBackend`, a wrapper
that makes each call with the demos and instructions the calling instance's predictor holds *at
that moment* (an optimizer changes them between calls, and on copies of the module), and records
the call in DSPy's trace as the predictor's own call would be (``(predictor, inputs,
prediction)``, what ``BootstrapFewShot`` turns into demos). So every LM call an optimizer makes
through the program goes through the backend chain — retries, breakers, usage — and a plain
backend without an LM (``mock``) works too.

A one-module ``kind: dspy`` program is optimized as itself (its loaded instance); see
:func:`load_dspy_module`.

The way back, :func:`optimized_spec`: the predictors' demos and instructions (or a ``dspy``
module's ``dump_state()``) written into a copy of the program spec.

DSPy is imported inside the functions only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import dataclasses
import importlib
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from dspex._imports import allow_hint, import_allowed
from dspex.backends._loop import running_loop
from dspex.backends.base import Backend, BackendHealth, PredictRequest, PredictResult
from dspex.engine.dspy_modules import build_module
from dspex.errors import ConfigError, ModuleError, SecurityError
from dspex.records import ExecutionStatus
from dspex.signatures.dspy_interop import from_dspy_values, to_dspy_values

if TYPE_CHECKING:
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program
    from dspex.engine.results import RunResult
    from dspex.signatures.signature import Signature

__all__ = [
    "LM_KINDS",
    "PredictorBackend",
    "in_program_call",
    "is_dspy_program",
    "load_dspy_module",
    "optimized_spec",
    "program_module",
]

T = TypeVar("T")

LM_KINDS = ("predict", "chain_of_thought")
"""The module kinds that become predictors of a :class:`ProgramModule`."""

_REASONING = "reasoning"

# the ProgramModule instance whose forward is running (carried into the engine's tasks)
_current: contextvars.ContextVar[Any] = contextvars.ContextVar("dspex_program_module", default=None)
# set while a PredictorBackend call is in flight, so LM callbacks can tell program calls apart
_in_call: contextvars.ContextVar[bool] = contextvars.ContextVar("dspex_program_call", default=False)


def in_program_call() -> bool:
    """Whether the caller runs inside an LM module's call made through a
    :class:`PredictorBackend` (its LM calls are the program's, counted by its runs)."""
    return _in_call.get()


@dataclasses.dataclass(frozen=True, slots=True)
class _Slot:
    """One LM module of the program: its name, kind and signature as the spec says."""

    name: str
    kind: str
    signature: Signature
    initial_instructions: str


class _Shared:
    """What every copy of one :class:`ProgramModule` shares (an optimizer copies modules
    freely): the program, the engine and the loop it runs on. Copying returns itself."""

    def __init__(
        self,
        program: Program,
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        slots: Mapping[str, _Slot],
        on_run: Callable[[RunResult], None] | None,
    ) -> None:
        self.program = program
        self.engine = engine
        self.loop = loop
        self.slots = dict(slots)
        self.on_run = on_run

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self

    def __copy__(self) -> _Shared:
        return self


def _dspy_predictor(kind: str, signature: Signature) -> Any:
    """A ``dspy.Predict`` or ``dspy.ChainOfThought`` as the ``dspy`` backend builds one."""
    import dspy

    dspy_signature: Any = signature.to_dspy()
    if kind == "chain_of_thought" and _REASONING not in signature.output_names:
        return dspy.ChainOfThought(dspy_signature)
    return dspy.Predict(dspy_signature)


def _inner(predictor: Any) -> Any:
    """The ``dspy.Predict`` that holds a module's demos and signature (a CoT's ``predict``)."""
    inner = getattr(predictor, "predict", None)
    return inner if inner is not None else predictor


def _module_class() -> type:
    """The :class:`ProgramModule` class (a ``dspy.Module`` subclass, built on first use)."""
    global _PROGRAM_MODULE
    if _PROGRAM_MODULE is None:
        import dspy

        class ProgramModule(dspy.Module):  # type: ignore[misc]  # dspy is untyped
            """A dspex program as a ``dspy.Module`` (see :mod:`dspex.engine.dspy_program`)."""

            def forward(self, **inputs: Any) -> Any:
                shared: _Shared = self._dspex
                if running_loop() is shared.loop:
                    raise ModuleError(
                        "a program module is called synchronously from its engine's event loop:"
                        " await module.acall(...) there instead"
                    )
                token = _current.set(self)
                try:
                    context = contextvars.copy_context()
                finally:
                    _current.reset(token)
                result = call_in_context(shared.loop, context, lambda: _run(shared, inputs))
                return _prediction(result)

            async def aforward(self, **inputs: Any) -> Any:
                shared: _Shared = self._dspex
                token = _current.set(self)
                try:
                    result = await _run(shared, inputs)
                finally:
                    _current.reset(token)
                return _prediction(result)

        _PROGRAM_MODULE = ProgramModule
    return _PROGRAM_MODULE


_PROGRAM_MODULE: type | None = None


def __getattr__(name: str) -> Any:
    if name == "ProgramModule":
        return _module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_dspy_program(program: Program) -> bool:
    """Whether ``program`` is one ``kind: dspy`` module (optimized as itself)."""
    modules = list(program.modules.values())
    return len(modules) == 1 and modules[0].kind == "dspy"


def program_module(
    program: Program,
    engine: Engine,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    on_run: Callable[[RunResult], None] | None = None,
) -> Any:
    """``program`` as a ``dspy.Module`` whose named predictors are its LM modules.

    Args:
        program: a graph program with at least one ``predict``/``chain_of_thought`` module.
        engine: the engine its forward runs the graph on; its backends must be wrapped in
            :class:`PredictorBackend` for the predictors' demos and instructions to apply.
        loop: the event loop the engine runs on (default: the running one).
        on_run: called (on the loop) with each run's result, for recording.

    Raises:
        ConfigError: the program has no LM module, or a module's name clashes with an attribute
            every ``dspy.Module`` has.
    """
    cls = _module_class()
    slots: dict[str, _Slot] = {}
    instance = cls()
    reserved = set(dir(instance))
    for name, spec in program.modules.items():
        if spec.kind not in LM_KINDS:
            continue
        if name in reserved or name == "_dspex":
            raise ConfigError(
                f"module {name!r} has the name of an attribute of dspy.Module: rename it to"
                " optimize the program"
            )
        signature = program.module_signature(name)
        predictor = _dspy_predictor(spec.kind, signature)
        inner = _inner(predictor)
        if spec.demos:
            inner.demos = [_example(signature, demo) for demo in spec.demos]
        setattr(instance, name, predictor)
        slots[name] = _Slot(name, spec.kind, signature, inner.signature.instructions)
    if not slots:
        raise ConfigError(
            f"program {program.name!r} has no predict or chain_of_thought module for an optimizer"
            " to tune"
        )
    instance._dspex = _Shared(program, engine, loop or asyncio.get_running_loop(), slots, on_run)
    return instance


def _example(signature: Signature, demo: Mapping[str, Any]) -> Any:
    import dspy

    fields = (*signature.input_fields, *signature.output_fields)
    return dspy.Example(**to_dspy_values(fields, demo))


async def _run(shared: _Shared, inputs: Mapping[str, Any]) -> RunResult:
    result = await shared.engine.run(shared.program, inputs)
    if shared.on_run is not None:
        shared.on_run(result)
    return result


def _prediction(result: RunResult) -> Any:
    import dspy

    if result.status is not ExecutionStatus.COMPLETED:
        error = result.error
        detail = f"{error.code}: {error.message}" if error is not None else result.status.value
        raise ModuleError(f"program {result.program!r} run failed: {detail}")
    return dspy.Prediction(**dict(result.outputs))


def call_in_context(
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
    factory: Callable[[], Coroutine[Any, Any, T]],
) -> T:
    """Run ``factory()`` as a task on ``loop`` inside ``context`` and wait for it (from another
    thread: ``asyncio.run_coroutine_threadsafe`` would run it in the loop's own context, without
    the caller's DSPy settings)."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def finish(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            done.cancel()
        elif (exc := task.exception()) is not None:
            done.set_exception(exc)
        else:
            done.set_result(task.result())

    def start() -> None:
        if done.set_running_or_notify_cancel():
            loop.create_task(factory(), context=context).add_done_callback(finish)

    loop.call_soon_threadsafe(start)
    return done.result()


# ------------------------------------------------------------------------------ the backend


class PredictorBackend:
    """A backend whose LM module calls use the calling :class:`ProgramModule`'s predictors.

    Inside a program module's ``forward``, a call from LM module ``m`` is sent to the wrapped
    backend with the demos and instructions of the instance's predictor for ``m``, and is then
    appended to DSPy's trace (when one is being recorded) as that predictor's call. Outside one,
    calls pass through unchanged.

    Args:
        inner: the program's backend (its whole chain: coordinator, retries, breakers, …).
    """

    def __init__(self, inner: Backend) -> None:
        self.name = inner.name
        self.inner = inner

    async def complete(self, request: PredictRequest) -> PredictResult:
        module = _current.get()
        shared: _Shared | None = getattr(module, "_dspex", None) if module is not None else None
        slot = shared.slots.get(request.module) if shared is not None else None
        if slot is None:
            return await self.inner.complete(request)
        predictor = _inner(getattr(module, slot.name))
        instructions = predictor.signature.instructions
        signature = slot.signature
        if instructions != slot.initial_instructions:
            signature = dataclasses.replace(signature, instructions=instructions)
        demos = tuple(_demo_fields(demo) for demo in predictor.demos)
        token = _in_call.set(True)
        try:
            result = await self.inner.complete(
                dataclasses.replace(request, signature=signature, demos=demos)
            )
        finally:
            _in_call.reset(token)
        _record_trace(predictor, signature, request.inputs, result)
        return result

    async def health(self) -> BackendHealth:
        return await self.inner.health()

    async def aclose(self) -> None:
        """Nothing to close: the wrapped backend belongs to its owner."""


def _record_trace(
    predictor: Any, signature: Signature, inputs: Mapping[str, Any], result: PredictResult
) -> None:
    """Append the call to DSPy's trace as ``dspy.Predict`` does for its own calls."""
    import dspy

    trace = dspy.settings.trace
    if trace is None or dspy.settings.max_trace_size <= 0:
        return
    outputs = dict(result.outputs)
    if _REASONING in result.extras and _REASONING not in outputs:
        outputs = {_REASONING: result.extras[_REASONING], **outputs}
    if len(trace) >= dspy.settings.max_trace_size:
        trace.pop(0)
    trace.append(
        (predictor, to_dspy_values(signature.input_fields, inputs), dspy.Prediction(**outputs))
    )


def _demo_fields(demo: Any) -> dict[str, Any]:
    """A demo (a ``dspy.Example`` or a mapping) as field values by name, for a call."""
    items = demo.items() if hasattr(demo, "items") else dict(demo).items()
    return {str(k): from_dspy_values(v) for k, v in items}


def _demo_values(demo: Any) -> dict[str, Any]:
    """A demo as plain JSON values by field name, for a spec."""
    values = _demo_fields(demo)
    plain: dict[str, Any] = json.loads(json.dumps(values, default=_json_default))
    return plain


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return str(value)


# ------------------------------------------------------------------------------ kind: dspy


def load_dspy_module(program: Program, *, allowed_imports: tuple[str, ...]) -> Any:
    """The loaded instance of a one-module ``kind: dspy`` program (blocking: run in a thread).

    Raises:
        SecurityError: the class is not under ``allowed_imports``.
        ConfigError: the module's state is a file path (register the program with its state
            inline to optimize it).
        ModuleError: the class cannot be imported, built, or its state loaded.
    """
    (spec,) = program.modules.values()
    ref = spec.module
    assert ref is not None
    if not import_allowed(ref, allowed_imports):
        raise SecurityError(f"{ref!r} is not in allowed_imports: {allow_hint(ref)}")
    if isinstance(spec.state, str):
        raise ConfigError(
            f"the state of {ref} is the file {spec.state!r}: optimizing writes the state inline,"
            " so register the program with its state inline (dspex program import --state)"
        )
    module_name, _, attr = ref.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise ModuleError(f"cannot import {ref}: {type(exc).__name__}: {exc}") from exc
    return build_module(cls, ref, init=spec.init, state=spec.state)


# ------------------------------------------------------------------------------ the way back


def optimized_spec(
    program: Program, module: Any, *, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The spec of ``program`` with what ``module`` (optimized) learned, as plain data.

    A :class:`ProgramModule`'s predictors give each LM module its ``demos`` (all of them,
    bootstrapped ones marked ``augmented`` as DSPy saves them) and its ``instructions`` (only
    when they differ from the module's signature's); a ``kind: dspy`` program's module gives its
    ``state`` (``dump_state()``). ``metadata`` is merged into the spec's ``metadata``.
    """
    spec = copy.deepcopy(program.to_dict())
    modules: dict[str, Any] = spec["modules"]
    shared: _Shared | None = getattr(module, "_dspex", None)
    if shared is None:
        (name,) = modules
        state = json.loads(json.dumps(module.dump_state(), default=_json_default))
        modules[name]["state"] = state
    else:
        for name, slot in shared.slots.items():
            predictor = _inner(getattr(module, name))
            entry = modules[name]
            demos = [_demo_values(demo) for demo in predictor.demos]
            if demos:
                entry["demos"] = demos
            else:
                entry.pop("demos", None)
            instructions = predictor.signature.instructions
            if instructions != slot.initial_instructions:
                entry["instructions"] = instructions
    if metadata:
        spec["metadata"] = {**spec.get("metadata", {}), **dict(metadata)}
    return spec
