"""``dspy.Module`` classes as dspex builds, runs and describes them.

Building one (the ``dspy`` kind, once per engine and distinct ``module``/``init``/``state``):
construct the allow-listed class with the spec's ``init``, check that the ``state`` (DSPy's
``.save("x.json")`` format) fits its predictors, and load it with DSPy's own ``load_state``. A
directory saved with ``save_program=True`` loads with ``dspy.load`` instead, and a ``.pkl``
state with ``Module.load``: both unpickle, so only an engine that allows pickle does either.

Running one: calls take an instance from a :class:`ModulePool`, so no two calls share one.
Inside a call, DSPy's callback interface reports each predictor call and each LM call to the
call's :class:`CallRecorder`, through hooks set on the instances concerned only (the pooled
instance's predictors, and a copy of the backend's LM: :func:`recorded_lm`), so that DSPy does
not call back for every module, adapter and LM call. A predictor call becomes a child step
``<module>.<predictor name>`` (its name as ``named_predictors()`` gives it, mapped once per
pooled instance), with the tokens DSPy's usage tracker counted during it, in whichever thread
it ran (``dspy.Parallel``'s included); each LM call one of its attempts.

Describing one (:meth:`dspex.Program.from_dspy`): the program spec around a module instance or
class, its signature derived from its one predictor and its ``forward`` parameters, and a bare
``dspy.Predict``/``dspy.ChainOfThought`` turned into a native ``predict``/``chain_of_thought``
module with its demos.

An LM saved in a JSON state (a predictor's ``lm``) is not restored: a module runs on its
backend, so its calls are routed, retried and recorded like every other call.

DSPy is imported inside the functions only.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dspex._imports import allow_hint, import_allowed, is_reference
from dspex.backends._loop import own_task
from dspex.backends.base import BackendAttempt, LMExchange, Usage
from dspex.backends.streaming import stream_dspy
from dspex.engine.results import PREDICTOR_KIND, StepResult
from dspex.errors import ErrorDetail, ModuleError, SecurityError, SpecError, error_code
from dspex.records import AttemptOutcome, StepStatus
from dspex.signatures.signature import Signature

__all__ = [
    "CallRecorder",
    "ModulePool",
    "allow_hint",
    "build_module",
    "import_allowed",
    "is_pickled",
    "lm_hook",
    "program_spec",
    "read_state_file",
    "recorded_lm",
    "runs_async",
]

_REASONING = "reasoning"
_METADATA = "metadata"  # what DSPy's .save() adds next to the predictor states
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEFAULT_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


# --------------------------------------------------------------------------------- states


def is_pickled(path: Path) -> bool:
    """Whether a state path holds pickled code: a ``save_program=True`` directory or ``.pkl``."""
    return path.is_dir() or path.suffix == ".pkl"


def read_state_file(path: Path) -> dict[str, Any]:
    """The state in a ``.json`` file written by DSPy's ``Module.save``.

    Raises:
        SpecError: the file is missing or unreadable (``state_not_found``), is not JSON or not
            a mapping (``state_invalid``), or is not a ``.json`` file (``state_invalid``).
    """
    where = "state"
    if path.suffix != ".json":
        raise SpecError(
            f"cannot read the state {str(path)!r}:",
            [
                ErrorDetail(
                    where,
                    "state_invalid",
                    "a state is the .json file Module.save('x.json') writes (or, where pickle is"
                    " allowed, a .pkl file or a directory saved with save_program=True)",
                )
            ],
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"cannot read the state {str(path)!r}:",
            [ErrorDetail(where, "state_not_found", f"{type(exc).__name__}: {exc}")],
        ) from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SpecError(
            f"cannot read the state {str(path)!r}:",
            [ErrorDetail(where, "state_invalid", f"not JSON: {exc}")],
        ) from None
    if not isinstance(data, dict):
        raise SpecError(
            f"cannot read the state {str(path)!r}:",
            [ErrorDetail(where, "state_invalid", "a state file holds a JSON object")],
        )
    return data


def state_mismatch(instance: Any, state: Mapping[str, Any]) -> str | None:
    """Why ``state`` does not fit ``instance``'s predictors, or ``None`` when it does.

    DSPy's ``load_state`` raises ``KeyError`` for a missing entry and ignores extra ones; an extra
    entry means the state was saved from a module built differently (other ``init``), whose
    optimized demos would silently be lost, so both are refused here.
    """
    names = [name for name, _ in instance.named_parameters()]
    known = set(names)
    missing = [name for name in names if name not in state]
    extra = [key for key in state if key != _METADATA and key not in known]
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"it has no entry for {missing[:5]}")
    if extra:
        parts.append(f"its entries {extra[:5]} are not predictors of the module")
    return "; ".join(parts) + f" (the module's predictors: {names[:10]})"


def _without_lm(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state with each predictor's saved LM left out (a module runs on its backend)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Mapping) and value.get("lm") is not None:
            value = {**value, "lm": None}
        out[key] = value
    return out


# --------------------------------------------------------------------------------- building


def runs_async(cls: type) -> bool:
    """Whether calls run ``aforward`` (else ``forward``, in a thread).

    ``aforward`` is used when the class defines it at least as far down as ``forward``: a
    subclass of ``dspy.ChainOfThought`` that overrides only ``forward`` runs its own ``forward``,
    not the inherited ``aforward`` that would skip it.
    """
    forward = _defined_in(cls, "forward")
    aforward = _defined_in(cls, "aforward")
    if aforward is None:
        return False
    return forward is None or issubclass(aforward, forward)


def _defined_in(cls: type, name: str) -> type | None:
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass
    return None


def build_module(
    cls: Any,
    ref: str,
    *,
    init: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    state_path: Path | None = None,
    allow_pickle: bool = False,
) -> Any:
    """Construct ``cls(**init)`` and load its state (blocking: run it in a thread).

    Args:
        cls: the imported class (``ref`` names it in errors).
        ref: ``pkg.mod:Class``.
        init: constructor keyword arguments.
        state: a state mapping (inline, or read from a ``.json`` file).
        state_path: a pickled state instead: a ``save_program=True`` directory or a ``.pkl``.
        allow_pickle: whether ``state_path`` may be unpickled.

    Raises:
        ModuleError: the class cannot be constructed, is not a ``dspy.Module``, its state does not
            fit or cannot be loaded.
        SecurityError: a pickled state where pickle is not allowed.
    """
    import dspy

    if state_path is not None and not allow_pickle:
        raise SecurityError(_pickle_refusal(state_path))
    if state_path is not None and state_path.is_dir():
        try:
            instance = dspy.load(str(state_path), allow_pickle=True)
        except Exception as exc:
            raise ModuleError(
                f"cannot load the program saved in {str(state_path)!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(instance, cls) or not isinstance(instance, dspy.Module):
            raise ModuleError(
                f"the program saved in {str(state_path)!r} is a {type(instance).__name__},"
                f" not {ref}"
            )
        return instance
    try:
        instance = cls(**dict(init or {}))
    except Exception as exc:
        raise ModuleError(f"cannot instantiate {ref}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(instance, dspy.Module):
        raise ModuleError(f"{ref} is not a dspy.Module")
    if state_path is not None:
        try:
            instance.load(str(state_path), allow_pickle=True)
        except Exception as exc:
            raise ModuleError(
                f"cannot load the state {str(state_path)!r} into {ref}: {type(exc).__name__}: {exc}"
            ) from exc
    elif state is not None:
        problem = state_mismatch(instance, state)
        if problem is not None:
            raise ModuleError(f"the state does not fit {ref}: {problem}")
        try:
            instance.load_state(_without_lm(state))
        except Exception as exc:
            raise ModuleError(
                f"cannot load the state into {ref}: {type(exc).__name__}: {exc}"
            ) from exc
    return instance


def _pickle_refusal(path: Path) -> str:
    what = "a directory saved with save_program=True" if path.is_dir() else "a pickled state"
    return (
        f"state {str(path)!r} is {what}: loading it runs the code pickled in it, which"
        " only allow_pickle = true in dspex.toml permits"
    )


class ModulePool:
    """Instances of one built module, so that no two calls ever share one.

    DSPy's own ``Parallel`` and ``Evaluate`` call one instance from many threads. That is safe
    for DSPy's predictors but not for a module that keeps per-call state on ``self`` (and an
    ``aforward`` interleaves with other calls at every ``await``). Here each call takes an
    instance no other call holds and gives it back when it succeeds (one that failed is dropped,
    its state unknown). Instances are made with DSPy's ``deepcopy`` from a prototype that never
    runs, once each: there are as many as calls ever ran at once, never one per call.

    ``acquire``/``release`` may be called from any thread (deque ``pop``/``append`` are atomic).

    Args:
        prototype: the built module (constructed, state loaded).
    """

    __slots__ = ("_free", "_hooks", "_prototype", "runs_async")

    def __init__(self, prototype: Any) -> None:
        self._prototype = prototype
        self.runs_async = runs_async(type(prototype))
        # one ready copy: the first call does not pay for a copy
        self._free: deque[Any] = deque((prototype.deepcopy(),))
        # each instance's hook on its predictors, by id (made on its first recorded call)
        self._hooks: dict[int, Any] = {}

    def acquire(self) -> Any:
        """An instance no other call is using."""
        try:
            return self._free.pop()
        except IndexError:
            return self._prototype.deepcopy()

    def release(self, instance: Any) -> None:
        """Give back an instance whose call succeeded."""
        self._free.append(instance)

    def _hook(self, instance: Any) -> Any:
        hook = self._hooks.get(id(instance))
        if hook is None:
            hook = self._hooks[id(instance)] = _install_hook(instance)
        return hook

    def _drop(self, instance: Any) -> None:
        self._hooks.pop(id(instance), None)

    def call_sync(self, inputs: Mapping[str, Any], recorder: CallRecorder | None = None) -> Any:
        """Run ``forward`` (through ``Module.__call__``: callbacks, usage tracking) on a free
        instance; blocking, for the engine's thread helper. ``recorder`` collects its predictor
        and LM calls."""
        with self._checked_out(recorder) as instance:
            return instance(**inputs)

    async def call_async(
        self, inputs: Mapping[str, Any], recorder: CallRecorder | None = None
    ) -> Any:
        """Run ``aforward`` (through ``Module.acall``) on a free instance."""
        with self._checked_out(recorder) as instance:
            # as a task of its own, its wake-ups do not walk the engine's frames above
            return await own_task(instance.acall(**inputs))

    async def call_streaming(
        self,
        inputs: Mapping[str, Any],
        recorder: CallRecorder | None,
        fields: Sequence[str],
        on_token: Callable[[str, str], None],
    ) -> Any:
        """Run a free instance under ``dspy.streamify`` with a stream listener per output field
        in ``fields`` (:func:`~dspex.backends.streaming.stream_dspy`): ``aforward`` on the loop,
        else ``forward`` in DSPy's own async helper, as streamify runs it."""
        with self._checked_out(recorder) as instance:
            return await stream_dspy(
                instance, dict(inputs), fields, on_token, is_async=self.runs_async
            )

    @contextmanager
    def _checked_out(self, recorder: CallRecorder | None) -> Iterator[Any]:
        """A free instance for one call, its predictors reporting to ``recorder``: given back
        when the call succeeds, dropped when it raises (or is cancelled)."""
        instance = self.acquire()
        hook = None
        try:
            if recorder is not None:
                hook = self._hook(instance)
                recorder.names = hook.names
                hook.recorder = recorder
            yield instance
        except BaseException:
            self._drop(instance)
            raise
        finally:
            if hook is not None:
                hook.recorder = None
            if recorder is not None:
                recorder.close()
        self.release(instance)


# --------------------------------------------------------------------------------- recording

# The open predictor and LM calls of every recorder, by DSPy's call id: how the hook on a shared
# LM finds the recorder of the predictor call an LM call is made in.
_ACTIVE: dict[str, CallRecorder] = {}


class _Open:
    """A predictor call or LM call that has started and not yet ended, with the usage tracker
    in force where it started and how many entries it held then, by model."""

    __slots__ = (
        "attempts",
        "inputs",
        "marks",
        "name",
        "outputs",
        "perf",
        "tracker",
        "usage",
        "wall",
    )

    def __init__(self, name: str, tracker: Any, inputs: Any = None) -> None:
        self.name = name
        # what DSPy passed the call and what it returned (the runner records them, redacted)
        self.inputs: Any = inputs
        self.outputs: Any = None
        self.wall = time.time()
        self.perf = time.perf_counter()
        self.usage: dict[str, Usage] = {}
        self.attempts: list[BackendAttempt] = []
        self.tracker = tracker
        self.marks: dict[str, int] = (
            {model: len(entries) for model, entries in list(tracker.usage_data.items())}
            if tracker is not None
            else {}
        )


class CallRecorder:
    """The predictor calls and LM calls made inside one ``dspy`` module call.

    DSPy reports them through its callback interface, to hooks set on the instances concerned
    only, so that it calls back for nothing else: the pool's hook on the running instance's
    predictors (which follow them into any thread, ``dspy.Parallel``'s included) and, when
    ``backend`` is given, the hook on the LM the module runs on (:func:`recorded_lm`). Each
    predictor call is a child :class:`~dspex.engine.results.StepResult` named
    ``<module>.<predictor>``; each LM call made directly by a predictor is one attempt of that
    step.

    Tokens come from DSPy's usage trackers (:attr:`tracker` is the call's own): a call counts
    the tracker entries added, where it runs, between its start and its end, and each entry
    is counted once. ``dspy.Parallel`` gives each worker thread a copy of the tracker that is
    never merged back; what predictor calls count there is added to the module's total
    (:meth:`usage`). Calls overlapping on one tracker (threads sharing it, tasks of an
    ``aforward``) may have their tokens counted on a sibling; the total stays exact.

    Args:
        module: the module's name in the program.
        backend: the backend the LM calls go to, or ``None`` to keep no attempts (behind a
            coordinator group, the group records them).
    """

    __slots__ = (
        "_claimed",
        "_lms",
        "_lock",
        "_open",
        "backend",
        "done",
        "module",
        "names",
        "tracker",
    )

    def __init__(self, module: str, backend: str | None) -> None:
        self.module = module
        self.backend = backend
        self.names: Mapping[int, str] = {}  # id(predictor) -> its name
        self.tracker: Any = None  # the call's own usage tracker
        self.done: list[tuple[_Open, float, BaseException | None]] = []  # call, its end, error
        self._open: dict[str, _Open] = {}  # call id -> predictor call
        self._lms: dict[str, tuple[_Open, _Open]] = {}  # call id -> (predictor call, LM call)
        self._claimed: dict[int, tuple[str, Mapping[str, Any]]] = {}  # tracker entries counted
        self._lock = threading.Lock()

    def children(self) -> tuple[StepResult, ...]:
        """The predictor calls that ended, in start order, as child steps timed in ms from now.

        Their offsets end at or before 0 (now): the runner shifts them onto its run's clock by
        when the module ended (:meth:`StepResult.shifted`), which is about now. Durations are
        measured on the monotonic clock of the thread that made each call.
        """
        now = time.perf_counter()
        ordered = sorted(self.done, key=lambda d: d[0].perf)
        return tuple(_child(self.module, self.backend, now, *entry) for entry in ordered)

    def usage(self) -> dict[str, Usage]:
        """The module's tokens: every entry of :attr:`tracker` (LM calls outside predictors
        included), and those predictor calls counted on trackers whose entries never reached
        it (a ``dspy.Parallel`` worker's copy)."""
        counts: dict[str, Usage] = {}
        home: set[int] = set()
        if self.tracker is not None:
            for model, entries in list(self.tracker.usage_data.items()):
                for entry in entries:
                    home.add(id(entry))
                    _add(counts, model, entry)
        for key, (model, entry) in list(self._claimed.items()):
            if key not in home:
                _add(counts, model, entry)
        return counts

    def close(self) -> None:
        """Forget the calls still open (the module call ended without them: it failed)."""
        for call_id in (*self._open, *self._lms):
            _ACTIVE.pop(call_id, None)

    # callbacks (called by DSPy, from whichever thread runs the call)

    def _module_start(self, call_id: str, instance: Any, tracker: Any, inputs: Any = None) -> None:
        name = self.names.get(id(instance))
        if name is not None:
            self._open[call_id] = _Open(name, tracker, inputs)
            if self.backend is not None:
                _ACTIVE[call_id] = self

    def _module_end(
        self, call_id: str, exception: BaseException | None, outputs: Any = None
    ) -> None:
        call = self._open.pop(call_id, None)
        if call is not None:
            call.outputs = outputs
            _ACTIVE.pop(call_id, None)
            _merge(call.usage, self._claim(call))
            self.done.append((call, time.perf_counter(), exception))

    def _lm_start(
        self, call_id: str, parent: str, tracker: Any, model: str, inputs: Any = None
    ) -> None:
        predictor = self._open.get(parent)
        if predictor is not None:
            self._lms[call_id] = (predictor, _Open(model, tracker, inputs))
            _ACTIVE[call_id] = self

    def _lm_end(self, call_id: str, exception: BaseException | None, outputs: Any = None) -> None:
        _ACTIVE.pop(call_id, None)
        entry = self._lms.pop(call_id, None)
        if entry is None or self.backend is None:
            return
        predictor, lm = entry
        lm.outputs = outputs
        usage = self._claim(lm)
        _merge(predictor.usage, usage)
        wall, perf = time.time(), time.perf_counter()
        code = message = None
        if exception is not None:
            error = _translated(exception, self.backend)
            code, message = error_code(error), str(error) or type(error).__name__
        predictor.attempts.append(
            BackendAttempt(
                backend=self.backend,
                attempt=len(predictor.attempts) + 1,
                outcome=AttemptOutcome.SUCCEEDED if exception is None else AttemptOutcome.FAILED,
                started_at=lm.wall,
                ended_at=wall,
                duration_ms=round((perf - lm.perf) * 1000.0, 3),
                error_code=code,
                error_message=message,
                usage=usage,
                module=f"{self.module}.{predictor.name}",
                exchange=_lm_exchange(lm),
            )
        )

    def _claim(self, call: _Open) -> dict[str, Usage]:
        """The tokens of the entries added to ``call``'s tracker since it started that no
        call counted yet (they are counted now)."""
        tracker = call.tracker
        if tracker is None:
            return {}
        found: dict[str, Usage] = {}
        with self._lock:
            for model, entries in list(tracker.usage_data.items()):
                for entry in entries[call.marks.get(model, 0) :]:
                    if id(entry) not in self._claimed:
                        self._claimed[id(entry)] = (model, entry)
                        _add(found, model, entry)
        return found


def _add(counts: dict[str, Usage], model: str, entry: Mapping[str, Any]) -> None:
    used = Usage(int(entry.get("prompt_tokens") or 0), int(entry.get("completion_tokens") or 0))
    previous = counts.get(model)
    counts[model] = used if previous is None else previous + used


def _merge(into: dict[str, Usage], usage: Mapping[str, Usage]) -> None:
    for model, used in usage.items():
        previous = into.get(model)
        into[model] = used if previous is None else previous + used


def recorded_lm(lm: Any) -> Any:
    """``lm`` as a ``dspy`` module call with a recorder runs on it, or ``None`` if it cannot
    be copied.

    A copy (DSPy's ``BaseLM.copy``) with the hook that reports each of its calls to the
    recorder of the predictor call making it, so that DSPy calls back for the LM calls only,
    not for every module, adapter and LM call. The copy shares ``lm``'s history and keyword
    arguments: ``lm.history`` still shows every call. Keep it: copying costs.
    """
    try:
        copied = lm.copy()
        copied.callbacks = [*copied.callbacks, lm_hook()]
        copied.history = lm.history
        copied.kwargs = lm.kwargs
    except Exception:  # not a BaseLM as DSPy defines it
        return None
    return copied


def lm_hook() -> Any:
    """The ``dspy.utils.callback.BaseCallback`` that reports LM calls made inside recorded
    predictor calls to their recorder (one for the process; it does nothing for other calls).
    """
    return _hooks()[2]


def _install_hook(instance: Any) -> Any:
    """Put a hook on each of ``instance``'s predictors (a pooled copy, which no other code
    holds): DSPy reports their calls to it, and it to the recorder it is given."""
    predictors = {
        id(predictor): (name, predictor) for name, predictor in instance.named_predictors()
    }
    hook = _hooks()[0]({key: name for key, (name, _) in predictors.items()})
    for _, predictor in predictors.values():
        predictor.callbacks = [*(predictor.callbacks or ()), hook]
    return hook


@functools.cache
def _hooks() -> tuple[type, type, Any]:
    """The callback classes hooks are made of, and the one LM hook (DSPy imported late)."""
    import dspy
    from dspy.utils.callback import ACTIVE_CALL_ID, BaseCallback

    settings = dspy.settings

    class PredictorHook(BaseCallback):  # type: ignore[misc]
        """On a pooled instance's predictors: their calls, to the recorder of the call that
        holds the instance (none between calls)."""

        def __init__(self, names: dict[int, str]) -> None:
            self.names = names
            self.recorder: CallRecorder | None = None

        def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            recorder = self.recorder
            if recorder is not None:
                recorder._module_start(call_id, instance, settings.usage_tracker, inputs)

        def on_module_end(
            self, call_id: str, outputs: Any | None, exception: Exception | None = None
        ) -> None:
            recorder = self.recorder
            if recorder is not None:
                recorder._module_end(call_id, exception, outputs)

    class LMHook(BaseCallback):  # type: ignore[misc]
        """On the LM a recorded module runs on: each call made inside a recorded predictor
        call (DSPy's active call id), to that call's recorder."""

        def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            parent = ACTIVE_CALL_ID.get()
            recorder = _ACTIVE.get(parent) if parent is not None else None
            if recorder is not None:
                model = str(getattr(instance, "model", None))
                recorder._lm_start(call_id, parent, settings.usage_tracker, model, inputs)

        def on_lm_end(
            self, call_id: str, outputs: Any | None, exception: Exception | None = None
        ) -> None:
            recorder = _ACTIVE.get(call_id)
            if recorder is not None:
                recorder._lm_end(call_id, exception, outputs)

    return PredictorHook, LMHook, LMHook()


def _child(
    module: str,
    backend: str | None,
    now: float,
    call: _Open,
    perf: float,
    exception: BaseException | None,
) -> StepResult:
    code = message = None
    if exception is not None:
        error = _translated(exception, backend) if backend is not None else exception
        code = error_code(error)
        message = str(error) or type(error).__name__
    attempts = tuple(call.attempts)
    return StepResult(
        name=f"{module}.{call.name}",
        kind=PREDICTOR_KIND,
        status=StepStatus.COMPLETED if exception is None else StepStatus.FAILED,
        error_code=code,
        error_message=message,
        started_ms=round((call.perf - now) * 1000.0, 3),
        ended_ms=round((perf - now) * 1000.0, 3),
        duration_ms=round((perf - call.perf) * 1000.0, 3),
        attempts=len(attempts),
        usage=call.usage,
        backend=backend,
        attempt_details=attempts,
        # as DSPy reported them; the runner keeps what its trace records of them (redacted)
        recorded_inputs=_call_inputs(call.inputs),
        recorded_outputs=_fields(call.outputs) if exception is None else None,
    )


_CALL_OPTIONS = frozenset({"config", "demos", "signature", "lm", "new_signature"})


def _call_inputs(inputs: Any) -> dict[str, Any] | None:
    """A predictor call's field values: the keyword arguments DSPy reports it was called with
    (``{"args": …, "kwargs": …}``), less the predictor's own options (``config``, ``demos``…)."""
    if not isinstance(inputs, Mapping):
        return None
    kwargs = inputs.get("kwargs")
    values = kwargs if isinstance(kwargs, Mapping) else inputs
    return {str(k): v for k, v in values.items() if k not in _CALL_OPTIONS and k != "args"}


def _fields(value: Any) -> dict[str, Any] | None:
    """A predictor call's inputs or outputs (a ``dspy.Prediction``) as a plain mapping."""
    if value is None:
        return None
    to_dict = getattr(value, "toDict", None)
    if callable(to_dict):
        value = to_dict()
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return None


def _lm_exchange(lm: _Open) -> LMExchange | None:
    """An LM call's messages (or prompt) and completions, as DSPy passed and returned them."""
    inputs = lm.inputs if isinstance(lm.inputs, Mapping) else {}
    messages = inputs.get("messages")
    if not messages and isinstance(inputs.get("prompt"), str):
        messages = [{"role": "user", "content": inputs["prompt"]}]
    model = lm.name if lm.name != "None" else None
    provider = model.split("/", 1)[0] if model and "/" in model else None
    return LMExchange(
        messages=list(messages) if isinstance(messages, list | tuple) else [],
        response=lm.outputs,
        model=model,
        provider=provider,
    )


def _translated(exc: BaseException, backend: str) -> BaseException:
    """``exc`` as the dspex error it stands for (DSPy wraps what the LM raised)."""
    from dspex.backends.dspy_lm import dspex_cause
    from dspex.backends.errors_map import translate

    cause = dspex_cause(exc)
    if cause is not None:
        return cause
    if isinstance(exc, Exception):
        return translate(exc, backend)
    return exc


# --------------------------------------------------------------------------------- describing


def program_spec(
    obj: Any,
    *,
    name: str,
    signature: Any = None,
    init: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | str | Path | None = None,
    backend: str | None = None,
    allowed_imports: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The spec of a one-module program around a DSPy module (see :meth:`Program.from_dspy`).

    Raises:
        SecurityError: ``obj`` is a reference outside ``allowed_imports``.
        SpecError: ``obj`` is not a DSPy module, cannot be imported or built, its state does not
            fit it, or its signature cannot be derived and was not given.
    """
    import dspy

    if isinstance(obj, str):
        obj = _import_class(obj, allowed_imports)
    if type(obj) in (dspy.Predict, dspy.ChainOfThought):
        if init or state is not None:
            raise _spec_error(
                "init" if init else "state",
                "module_invalid",
                "a bare Predict or ChainOfThought becomes a native module: its demos are taken"
                " from the object itself, with no init or state",
            )
        return _native_spec(obj, name=name, signature=signature, backend=backend)
    if isinstance(obj, dspy.Module):
        if state is not None:
            raise _spec_error(
                "state",
                "module_invalid",
                "an instance carries its own state: give state= with a class, not an instance",
            )
        cls: type = type(obj)
        state = obj.dump_state()
    elif isinstance(obj, type) and issubclass(obj, dspy.Module):
        cls = obj
    else:
        raise _spec_error(
            "module",
            "module_invalid",
            f"expected a dspy.Module instance or class, got {type(obj).__name__}",
        )
    ref = _module_ref(cls)
    fresh = _fresh_instance(cls, ref, init)
    module_signature = (
        _given_signature(signature) if signature is not None else _derived(fresh, cls, ref)
    )
    entry: dict[str, Any] = {"kind": "dspy", "module": ref, "signature": module_signature}
    if init:
        entry["init"] = _plain_json(dict(init), "init")
    if state is not None:
        entry["state"] = _checked_state(
            fresh, ref, state, from_instance=isinstance(obj, dspy.Module)
        )
    if backend is not None:
        entry["backend"] = backend
    return {"name": name, "signature": module_signature, "modules": {_module_name(cls): entry}}


def _import_class(ref: str, allowed_imports: Sequence[str] | None) -> Any:
    module_name, _, attr = ref.partition(":")
    if not is_reference(ref):
        raise _spec_error(
            "module", "module_invalid", f"{ref!r} is not a reference of the form 'pkg.mod:Class'"
        )
    if allowed_imports is not None and not import_allowed(ref, allowed_imports):
        raise SecurityError(f"{ref!r} is not in allowed_imports: {allow_hint(ref)}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError as exc:
        raise _spec_error(
            "module",
            "import_failed",
            f"cannot import {ref}: {exc} (is it installed, or on PYTHONPATH?)",
        ) from None
    except (ImportError, AttributeError) as exc:
        raise _spec_error("module", "import_failed", f"cannot import {ref}: {exc}") from None
    except Exception as exc:  # the module's own code raised while it was imported
        raise _spec_error(
            "module", "import_failed", f"cannot import {ref}: {type(exc).__name__}: {exc}"
        ) from None


def _module_ref(cls: type) -> str:
    module = cls.__module__
    qualname = cls.__qualname__
    if (
        module == "__main__"
        or not _IDENTIFIER.match(qualname)
        or getattr(sys.modules.get(module), qualname, None) is not cls
    ):
        raise _spec_error(
            "module",
            "module_invalid",
            f"{qualname} must be defined at the top level of an importable module (not in"
            " __main__ or inside a function), so that the runtime can import it by name",
        )
    return f"{module}:{qualname}"


def _module_name(cls: type) -> str:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", cls.__name__).lower()
    return snake if _IDENTIFIER.match(snake) else "module"


def _fresh_instance(cls: type, ref: str, init: Mapping[str, Any] | None) -> Any:
    try:
        return cls(**dict(init or {}))
    except Exception as exc:
        raise _spec_error(
            "init", "init_failed", f"cannot build {ref}: {type(exc).__name__}: {exc}"
        ) from None


def _checked_state(
    fresh: Any, ref: str, state: Mapping[str, Any] | str | Path, *, from_instance: bool
) -> dict[str, Any]:
    data = read_state_file(Path(state)) if isinstance(state, str | Path) else dict(state)
    data = _plain_json(data, "state")
    problem = state_mismatch(fresh, data)
    if problem is not None:
        hint = (
            " (was the instance built with constructor arguments? pass them as init=)"
            if from_instance
            else ""
        )
        raise _spec_error(
            "state", "state_mismatch", f"the state does not fit {ref}: {problem}{hint}"
        )
    try:
        fresh.load_state(_without_lm(data))
    except Exception as exc:
        raise _spec_error(
            "state",
            "state_mismatch",
            f"cannot load the state into {ref}: {type(exc).__name__}: {exc}",
        ) from None
    return data


def _plain_json(value: dict[str, Any], where: str) -> dict[str, Any]:
    """``value`` as plain JSON data (what the stored spec holds)."""
    try:
        plain: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _spec_error(where, "not_json", f"{where} must hold JSON values: {exc}") from None
    return plain


def _derived(instance: Any, cls: type, ref: str) -> str | dict[str, Any]:
    """The signature of a module with one predictor: its outputs, and inputs as ``forward``
    takes them."""
    predictors = instance.named_predictors()
    if len(predictors) != 1:
        names = [n for n, _ in predictors]
        raise _spec_error(
            "signature",
            "signature_required",
            f"{ref} has {len(predictors)} predictors {names[:10]}: give the program's signature"
            " (signature=, or --signature)",
        )
    predictor = predictors[0][1]
    dspy_signature = _without_reasoning(instance, predictor, predictor.signature)
    own = Signature.from_dspy(dspy_signature).to_dict()
    inputs = _forward_inputs(cls, own["inputs"])
    data = {"inputs": inputs if inputs is not None else own["inputs"], "outputs": own["outputs"]}
    if own["instructions"]:
        data["instructions"] = own["instructions"]
    return _given_signature(Signature.from_dict(data))


def _without_reasoning(instance: Any, predictor: Any, dspy_signature: Any) -> Any:
    """A ChainOfThought's predictor without the ``reasoning`` output CoT adds itself."""
    import dspy

    in_cot = any(
        getattr(m, "predict", None) is predictor
        for _, m in instance.named_sub_modules(type_=dspy.ChainOfThought)
    )
    if in_cot and _REASONING in dspy_signature.output_fields:
        return dspy_signature.delete(_REASONING)
    return dspy_signature


def _forward_inputs(cls: type, own: Mapping[str, Any]) -> dict[str, Any] | None:
    """Input fields for the parameters of the method calls run (``None``: it takes ``**kwargs``,
    so the predictor's inputs stand)."""
    method = cls.aforward if runs_async(cls) else cls.forward  # type: ignore[attr-defined]
    try:
        params = list(inspect.signature(method).parameters.values())[1:]  # after self
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    inputs: dict[str, Any] = {}
    for param in params:
        if param.kind is param.POSITIONAL_ONLY:
            raise _spec_error(
                "signature",
                "signature_required",
                f"{cls.__name__}.forward takes {param.name!r} by position only; inputs are"
                " passed by name",
            )
        field = dict(own[param.name]) if param.name in own else {}
        if "type" not in field:
            field["type"] = _DEFAULT_TYPES.get(type(param.default), "str")
        if param.default is not param.empty:
            field["optional"] = True
        inputs[param.name] = field
    return inputs


def _native_spec(
    predictor: Any, *, name: str, signature: Any, backend: str | None
) -> dict[str, Any]:
    import dspy

    if isinstance(predictor, dspy.ChainOfThought):
        kind, inner = "chain_of_thought", predictor.predict
        dspy_signature = inner.signature
        if _REASONING in dspy_signature.output_fields:
            dspy_signature = dspy_signature.delete(_REASONING)
    else:
        kind, inner = "predict", predictor
        dspy_signature = inner.signature
    module_signature = (
        _given_signature(signature)
        if signature is not None
        else _given_signature(Signature.from_dspy(dspy_signature))
    )
    entry: dict[str, Any] = {"kind": kind, "signature": module_signature}
    demos = inner.dump_state()["demos"]
    if demos:
        entry["demos"] = _plain_json({"demos": demos}, "demos")["demos"]
    config = {k: v for k, v in dict(inner.config).items() if v is not None}
    if config:
        entry["config"] = _plain_json(config, "config")
    if backend is not None:
        entry["backend"] = backend
    return {"name": name, "signature": module_signature, "modules": {kind: entry}}


def _given_signature(value: Any) -> str | dict[str, Any]:
    """A signature's spec form: the string when it says everything, else the mapping."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, type):  # a dspy.Signature class
        value = Signature.from_dspy(value)
    if not isinstance(value, Signature):
        raise _spec_error(
            "signature",
            "signature_invalid",
            f"a signature is a string, a mapping, a dspex or a dspy Signature, not"
            f" {type(value).__name__}",
        )
    data = value.to_dict()
    data.pop("name", None)
    text = str(value)
    as_text = Signature.parse(text).to_dict()
    as_text.pop("name", None)
    return text if as_text == data else data


def _spec_error(field: str, code: str, message: str) -> SpecError:
    return SpecError("cannot describe the DSPy module:", [ErrorDetail(field, code, message)])
