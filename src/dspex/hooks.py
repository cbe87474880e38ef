"""Lifecycle hooks: how persistence, telemetry and logging observe a run without inline code.

A hook is any object with some of the four keyword-only methods below, each either ``async def``
or plain ``def``. The engine calls them in this order for every run::

    before_run
        before_step / after_step    (once per module that starts, in completion order)
    after_run

``before_step`` is called when a module is about to start (its inputs resolved); ``after_step``
when it has ended, whatever the ending (completed, failed or cancelled). Modules that never start
(skipped after a failed dependency, or cancelled before starting) get no step hooks; they appear in
the ``RunResult.steps`` passed to ``after_run``. ``after_run`` is called for every run that got
past ``before_run``, including one cancelled from outside.

In an execution the run starts while its record is being written: the ``run_id`` a hook is
handed may not be in the store yet (it is before the run's result is returned).

An exception raised by a hook is not swallowed: it aborts the run (running modules are cancelled)
and propagates to the caller, because a persistence hook that failed silently would lose records.

This module is on the ground floor (DESIGN §2): it knows the four moments and how to call hooks,
not what they are handed. The protocol is generic over that: the engine passes its
:class:`~dspex.engine.program.Program`, :class:`~dspex.engine.results.StepResult` and
:class:`~dspex.engine.results.RunResult`, so a typed hook subclasses
``BaseHooks[Program, StepResult, RunResult]``; a bare ``BaseHooks`` takes them as ``Any``.

Example:
    >>> class PrintHook(BaseHooks):
    ...     def after_step(self, *, run_id: str, step: Any) -> None:
    ...         print(step.name, step.status)
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

__all__ = ["HOOK_METHODS", "BaseHooks", "HookDispatcher", "RunHooks"]

HOOK_METHODS = ("before_run", "before_step", "after_step", "after_run")

# What the engine hands the hooks: its program, a module's step result and the run's result.
ProgramT = TypeVar("ProgramT", contravariant=True)
StepT = TypeVar("StepT", contravariant=True)
RunT = TypeVar("RunT", contravariant=True)


@runtime_checkable
class RunHooks(Protocol[ProgramT, StepT, RunT]):
    """The full hooks protocol; implementations may define only some methods (see BaseHooks).

    Each method may be ``async`` or synchronous; the engine awaits the result when it is awaitable.
    """

    def before_run(
        self, *, run_id: str, program: ProgramT, inputs: Mapping[str, Any], strategy: str
    ) -> Any:
        """A run is about to start (inputs already validated)."""

    def before_step(self, *, run_id: str, module: str, kind: str, inputs: Mapping[str, Any]) -> Any:
        """Module ``module`` is about to start with these resolved inputs."""

    def after_step(self, *, run_id: str, step: StepT) -> Any:
        """A started module ended (completed, failed or cancelled)."""

    def after_run(self, *, run_id: str, result: RunT) -> Any:
        """The run ended; ``result`` is final."""


class BaseHooks(Generic[ProgramT, StepT, RunT]):
    """No-op hooks to subclass: override only the methods you need."""

    def before_run(
        self, *, run_id: str, program: ProgramT, inputs: Mapping[str, Any], strategy: str
    ) -> Any:
        return None

    def before_step(self, *, run_id: str, module: str, kind: str, inputs: Mapping[str, Any]) -> Any:
        return None

    def after_step(self, *, run_id: str, step: StepT) -> Any:
        return None

    def after_run(self, *, run_id: str, result: RunT) -> Any:
        return None


class HookDispatcher:
    """Calls the hooks that implement each method, in the order given; awaits async ones.

    Methods a hook does not define are skipped; the lookup happens once, here, so a run with no
    hooks pays nothing per module.
    """

    __slots__ = ("_methods",)

    def __init__(self, hooks: Iterable[object] = ()) -> None:
        self._methods: dict[str, tuple[Callable[..., Any], ...]] = {
            name: tuple(method for hook in hooks if callable(method := getattr(hook, name, None)))
            for name in HOOK_METHODS
        }

    def has(self, name: str) -> bool:
        """Whether any hook implements ``name``."""
        return bool(self._methods[name])

    def call(self, name: str, **kwargs: Any) -> Awaitable[None]:
        """Call every implementation of hook method ``name`` with keyword arguments; await the
        result, which completes once every awaitable a hook returned has completed, in order.

        Most hooks are plain functions returning ``None``: they run here, now, and the result
        is an awaitable with nothing to wait for (no coroutine is made for them).
        """
        methods = self._methods[name]
        for position, method in enumerate(methods):
            result = method(**kwargs)
            if result is not None and inspect.isawaitable(result):
                return self._rest(result, methods[position + 1 :], kwargs)
        return _DONE

    @staticmethod
    async def _rest(
        pending: Awaitable[Any], methods: tuple[Callable[..., Any], ...], kwargs: dict[str, Any]
    ) -> None:
        """Await a hook's awaitable, then call (and await) the hooks after it, in order."""
        await pending
        for method in methods:
            result = method(**kwargs)
            if result is not None and inspect.isawaitable(result):
                await result


class _Done:
    """An awaitable that is already complete (``await`` on it returns ``None`` at once)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]  # an empty generator-like iterator


_DONE = _Done()
