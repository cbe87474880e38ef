"""Module kinds: how one module turns its inputs into outputs.

- ``predict`` / ``chain_of_thought``: one call to the module's backend.
- ``retrieve``: top-k passages from a corpus file, by embedding similarity (the retriever is built
  once per corpus and engine).
- ``python``: an allow-listed ``pkg.mod:function`` called with the inputs as keyword arguments;
  sync functions run in a thread through the engine's one bounded helper.
- ``dspy``: an allow-listed ``dspy.Module`` class, built once per engine and distinct
  ``module``/``init``/``state`` (constructed with ``init``, its ``state`` loaded; see
  :mod:`dspex.engine.dspy_modules`), and called under ``dspy.context(lm=backend.lm)`` when the
  backend has one: ``await module.acall(**inputs)`` when the class defines ``aforward``, else
  ``module(**inputs)`` (its ``forward``) in the bounded thread helper, which carries the caller's
  context, and with it DSPy's settings (LM, callbacks, usage tracker), into the thread. Each call
  runs on an instance no other call is using (:class:`~dspex.engine.dspy_modules.ModulePool`).
  When the backend is a coordinator group, the module runs on a routed LM instead
  (:mod:`dspex.backends.dspy_lm`): each of its LM calls gets the group's retries, failover and
  breakers, every attempt is recorded, and usage is counted once. On every backend, DSPy's
  callbacks report each predictor call inside the module, in whichever thread it runs
  (``dspy.Parallel``'s included), as a child step ``<module>.<predictor>`` (duration, status,
  usage) and, on a plain backend, each LM call as one of its attempts
  (:class:`~dspex.engine.dspy_modules.CallRecorder`); there the module runs on a copy of the
  backend's LM that carries the hook and shares the LM's history.

A stored string never imports code on its own: references are checked against the engine's
``allowed_imports`` prefixes (dotted-boundary match) before anything is imported. Likewise a
stored corpus path never reads a file on its own: its real path (symlinks resolved) must be inside
one of the engine's ``corpus_dirs`` or the program's own directory (:func:`corpus_allowed`); a
``dspy`` module's ``state`` file is confined the same way, and a pickled one (a directory saved
with ``save_program=True``, a ``.pkl``) loads only when the engine allows pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import importlib
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dspex.backends.base import Backend, BackendAttempt, PredictRequest, PredictResult, Usage
from dspex.backends.streaming import TOKEN_SINK
from dspex.engine.dspy_modules import (
    CallRecorder,
    ModulePool,
    allow_hint,
    build_module,
    import_allowed,
    is_pickled,
    lm_hook,
    read_state_file,
    recorded_lm,
)
from dspex.engine.results import CHILDREN_ATTRIBUTE, StepResult
from dspex.errors import DspexError, ErrorDetail, ModuleError

if TYPE_CHECKING:
    from dspex.backends.embeddings import Embedder
    from dspex.backends.retriever import Retriever
    from dspex.engine.program import Program
    from dspex.engine.spec import ModuleSpec
    from dspex.resilience.breaker import BreakerRegistry, CircuitBreaker
    from dspex.resilience.coordinator import Coordinator
    from dspex.signatures.signature import Signature

__all__ = [
    "KindRunner",
    "ModuleOutput",
    "ModuleResult",
    "ThreadRunner",
    "corpus_allowed",
    "import_allowed",
]

T = TypeVar("T")

_WARM_QUERY = "warm up"
_SPEC_POOLS_LIMIT = 4096


def corpus_allowed(path: Path, dirs: Sequence[Path]) -> bool:
    """Whether the real path of ``path`` lies inside one of ``dirs`` (real paths as well).

    Both sides are resolved, symlinks included, so neither ``..`` segments nor a link inside an
    allowed directory that points elsewhere can reach a file outside.
    """
    real = Path(path).resolve()
    return any(real.is_relative_to(Path(d).resolve()) for d in dirs)


class ThreadRunner:
    """The one bounded helper that runs blocking code (sync user functions, file loading).

    Args:
        max_workers: threads at most; more calls queue.
    """

    def __init__(self, max_workers: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dspex")

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(slots=True)
class ModuleOutput:
    """What a kind produced: raw outputs (validated by the runner), usage, extras and the
    backend attempts behind them (when a coordinator group made them)."""

    outputs: dict[str, Any]
    usage: Mapping[str, Usage] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)
    attempts: tuple[BackendAttempt, ...] = ()
    children: tuple[StepResult, ...] = ()


ModuleResult = ModuleOutput | PredictResult
"""What :meth:`KindRunner.call` gives: both carry ``outputs``, ``usage`` and ``extras``."""


class KindRunner:
    """Runs modules of every kind for one engine; caches imports, instances and retrievers.

    Args:
        backends: backends by name.
        allowed_imports: module-path prefixes that ``python``/``dspy`` references may use.
        embedder: the embedder retrievers use (``None``: the bundled local model).
        threads: the bounded thread helper.
        corpus_dirs: directories ``retrieve`` corpora (and ``dspy`` state files) may be read
            from, besides the program's own ``base_dir``.
        allow_pickle: whether a ``dspy`` module's ``state`` may be pickled (a directory saved
            with ``save_program=True``, or a ``.pkl``): loading one runs the code in it.
        breakers: the circuit breakers of plain backends (a ``predict``/``chain_of_thought``
            call, or a whole ``dspy`` module run, is one call under its backend's breaker);
            ``None``: none. A coordinator group's members have the group's.
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        allowed_imports: Sequence[str],
        embedder: Embedder | None,
        threads: ThreadRunner,
        *,
        corpus_dirs: Sequence[Path] = (),
        allow_pickle: bool = False,
        breakers: BreakerRegistry | None = None,
    ) -> None:
        self.backends = dict(backends)
        self.breakers = breakers
        self._guards: dict[str, CircuitBreaker | None] = {}  # by the name a module uses
        self.allowed_imports = tuple(allowed_imports)
        self.corpus_dirs = tuple(Path(d).resolve() for d in corpus_dirs)
        self.allow_pickle = allow_pickle
        self.embedder = embedder
        self.threads = threads
        self._functions: dict[str, Callable[..., Any]] = {}
        # Built dspy modules by what builds them (class, init, state), and by the spec that
        # names them (by identity, kept alive by the entry): a call finds its pool without
        # hashing the state.
        self._pools: dict[str, ModulePool] = {}
        self._spec_pools: dict[int, tuple[ModuleSpec, ModulePool]] = {}
        self._retrievers: dict[Path, Retriever] = {}
        self._routed: dict[str, Any] = {}  # a routed LM per coordinator group (dspy kind)
        # per backend: its LM, and the copy a recorded dspy module runs on (None: not copyable)
        self._recorded_lms: dict[str, tuple[Any, Any]] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------------ validation

    def check(self, program: Program) -> list[ErrorDetail]:
        """Problems that depend on this engine: backends, import allow-list, corpus files and
        where they are."""
        problems: list[ErrorDetail] = []
        for name, spec in program.modules.items():
            path = f"modules.{name}"
            # a dspy module without a backend runs on whatever LM its own code configures
            uses_backend = spec.kind in ("predict", "chain_of_thought") or (
                spec.kind == "dspy" and spec.backend is not None
            )
            if uses_backend and spec.backend_name not in self.backends:
                problems.append(
                    ErrorDetail(
                        f"{path}.backend",
                        "unknown_backend",
                        f"no backend {spec.backend_name!r} (have: {sorted(self.backends)})",
                    )
                )
            ref = spec.function or spec.module
            if ref is not None and not import_allowed(ref, self.allowed_imports):
                key = "function" if spec.function else "module"
                problems.append(
                    ErrorDetail(
                        f"{path}.{key}",
                        "import_not_allowed",
                        f"{ref!r} is not under an allowed import prefix "
                        f"{list(self.allowed_imports)}: {allow_hint(ref)}",
                    )
                )
            if spec.kind == "retrieve":
                problems.extend(self._check_retrieve(program, name, spec))
            elif spec.kind == "dspy" and isinstance(spec.state, str):
                problems.extend(self._check_state(program, name, spec))
        return problems

    def calls_dspy_lm(self, program: Program) -> bool:
        """Whether a run of ``program`` calls a ``dspy.LM``: a ``predict``,
        ``chain_of_thought`` or ``dspy`` module on a ``dspy`` backend (behind a cache or rate
        limit, or in a group), or a ``dspy`` module without a backend (it runs on the LM its own
        code configures). DSPy hands parts of every such call to worker threads, which is what a
        process running it may tune for (:func:`dspex.tune_process`)."""
        for spec in program.modules.values():
            if spec.kind == "dspy" and spec.backend is None:
                return True
            if spec.kind in ("predict", "chain_of_thought", "dspy"):
                backend = self.backends.get(spec.backend_name)
                if backend is not None and _reaches_dspy_lm(backend):
                    return True
        return False

    def _allowed_dirs(self, program: Program) -> tuple[Path, ...]:
        if program.base_dir is not None:
            return (*self.corpus_dirs, program.base_dir)
        return self.corpus_dirs

    def _where_allowed(self, program: Program) -> str:
        where = "the configured corpus_dirs"
        if program.base_dir is not None:
            where += " or the program file's directory"
        return where

    def _check_state(self, program: Program, name: str, spec: ModuleSpec) -> list[ErrorDetail]:
        path = self.state_path(program, spec)
        field = f"modules.{name}.state"
        if not corpus_allowed(path, self._allowed_dirs(program)):
            # as for corpora: neither whether it exists nor where a symlink led is reported
            return [
                ErrorDetail(
                    field,
                    "path_not_allowed",
                    f"state {spec.state!r} is outside {self._where_allowed(program)}",
                )
            ]
        if not path.exists():
            return [ErrorDetail(field, "state_not_found", f"no file {path}")]
        if is_pickled(path):
            if self.allow_pickle:
                return []
            what = "a directory saved with save_program=True" if path.is_dir() else "a .pkl state"
            return [
                ErrorDetail(
                    field,
                    "import_not_allowed",
                    f"state {spec.state!r} is {what}: loading it runs the code pickled in it,"
                    " which only allow_pickle = true in dspex.toml permits",
                )
            ]
        if path.suffix != ".json":
            return [
                ErrorDetail(
                    field,
                    "state_invalid",
                    f"state {spec.state!r} is not a .json file written by Module.save()",
                )
            ]
        return []

    def _check_retrieve(self, program: Program, name: str, spec: ModuleSpec) -> list[ErrorDetail]:
        out: list[ErrorDetail] = []
        signature = program.module_signature(name)
        if len(signature.input_fields) != 1 or not signature.output_fields:
            out.append(
                ErrorDetail(
                    f"modules.{name}.signature",
                    "invalid_retrieve_signature",
                    "a retrieve module takes exactly one input (the query) and has outputs",
                )
            )
        corpus = self.corpus_path(program, spec)
        if not corpus_allowed(corpus, self._allowed_dirs(program)):
            # Not even whether the file exists is reported: that would let a spec probe the
            # server's file system. Nor the resolved path, which a symlink may have redirected.
            out.append(
                ErrorDetail(
                    f"modules.{name}.corpus",
                    "path_not_allowed",
                    f"corpus {spec.corpus!r} is outside {self._where_allowed(program)}",
                )
            )
        elif not corpus.is_file():
            out.append(
                ErrorDetail(f"modules.{name}.corpus", "corpus_not_found", f"no file {corpus}")
            )
        return out

    @staticmethod
    def corpus_path(program: Program, spec: ModuleSpec) -> Path:
        return _resolve(program, spec.corpus or "")

    @staticmethod
    def state_path(program: Program, spec: ModuleSpec) -> Path:
        """Where a ``dspy`` module's ``state`` path points (resolved like a corpus)."""
        assert isinstance(spec.state, str)
        return _resolve(program, spec.state)

    # ------------------------------------------------------------------------ preparation

    async def prepare(self, program: Program) -> None:
        """Import functions, build ``dspy`` modules and load corpora the program needs (once per
        engine).

        A ``dspy`` module is imported, constructed with its ``init`` and its ``state`` loaded
        here, in the thread helper. A corpus is loaded and embedded, with the embedding model
        loaded, here rather than on the first search.

        Call only after :meth:`check` found no problems. Preparing a program again loads
        nothing again; the engine remembers which programs it prepared and does not call this
        for them.

        Raises:
            ModuleError: an allow-listed reference cannot be imported or instantiated, or a
                ``dspy`` module's state does not fit it.
            SpecError: a ``dspy`` module's state file is not a readable JSON object.
        """
        async with self._lock:
            for spec in program.modules.values():
                if spec.kind == "python" and spec.function not in self._functions:
                    assert spec.function is not None
                    self._functions[spec.function] = _import(spec.function)
                elif spec.kind == "dspy":
                    key = self._dspy_key(program, spec)
                    pool = self._pools.get(key)
                    if pool is None:
                        pool = self._pools[key] = await self._build_dspy(program, spec)
                    if len(self._spec_pools) >= _SPEC_POOLS_LIMIT:
                        self._spec_pools.clear()
                    self._spec_pools[id(spec)] = (spec, pool)
                elif spec.kind == "retrieve":
                    path = self.corpus_path(program, spec)
                    if path not in self._retrievers:
                        retriever = await self.threads.run(self._load_corpus, path)
                        # One real search loads the embedding model and embeds the corpus now,
                        # so neither lands in the latency of the first runs.
                        await retriever.search(_WARM_QUERY, 1)
                        self._retrievers[path] = retriever

    def _dspy_key(self, program: Program, spec: ModuleSpec) -> str:
        """What a built module depends on: class, ``init`` and the state (its content, or the
        file it is read from as it is now)."""
        state: Any = spec.state
        if isinstance(state, str):
            path = self.state_path(program, spec)
            try:
                stat = path.stat()
                state = [str(path), stat.st_mtime_ns, stat.st_size]
            except OSError:
                state = [str(path)]
        text = json.dumps([spec.module, spec.init, state], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    async def _build_dspy(self, program: Program, spec: ModuleSpec) -> ModulePool:
        assert spec.module is not None
        state: Mapping[str, Any] | None = None
        pickled: Path | None = None
        if isinstance(spec.state, str):
            path = self.state_path(program, spec)
            if is_pickled(path):
                pickled = path
            else:
                state = await self.threads.run(read_state_file, path)
        elif spec.state is not None:
            state = spec.state
        return await self.threads.run(
            _build_pool, spec.module, spec.init, state, pickled, self.allow_pickle
        )

    def _pool(self, program: Program, spec: ModuleSpec) -> ModulePool:
        entry = self._spec_pools.get(id(spec))
        if entry is not None and entry[0] is spec:
            return entry[1]
        return self._pools[self._dspy_key(program, spec)]

    async def _invoke(
        self,
        pool: ModulePool,
        inputs: dict[str, Any],
        recorder: CallRecorder | None = None,
        *,
        module: str = "",
        signature: Signature | None = None,
    ) -> Any:
        """One call of a built module: ``aforward`` on the loop, or ``forward`` in a thread
        (with this context, DSPy's settings included).

        In a streaming run that wants ``module``'s tokens, the call runs under DSPy's
        ``streamify`` with a stream listener per output field of ``signature``.
        """
        sink = TOKEN_SINK.get()
        if sink is not None and signature is not None and sink.wants(module):
            sink.begin(module)
            return await pool.call_streaming(
                inputs,
                recorder,
                signature.output_names,
                lambda field, text: sink.token(module, field, text),
            )
        if pool.runs_async:
            return await pool.call_async(inputs, recorder)
        return await self.threads.run(pool.call_sync, inputs, recorder)

    def _load_corpus(self, path: Path) -> Retriever:
        from dspex.backends.retriever import Retriever

        return Retriever.from_file(path, embedder=self.embedder)

    # ------------------------------------------------------------------------ running

    def call(
        self,
        program: Program,
        name: str,
        spec: ModuleSpec,
        signature: Signature,
        inputs: dict[str, Any],
    ) -> Awaitable[ModuleResult]:
        """Run module ``name`` once on already validated ``inputs`` (await the result).

        A backend kind hands back the backend's own call, whose :class:`PredictResult` has the
        same ``outputs``/``usage``/``extras`` as a :class:`ModuleOutput`: no wrapper coroutine
        or copy on the path every LM call takes.
        """
        kind = spec.kind
        if kind == "predict" or kind == "chain_of_thought":
            backend = self.backends[spec.backend_name]
            request = self.request(name, spec, signature, inputs)
            if self.breakers is None:
                return backend.complete(request)
            breaker = self._guard(spec.backend_name)
            if breaker is None:
                return backend.complete(request)
            return breaker.guard(functools.partial(backend.complete, request))
        if kind == "dspy" and self.breakers is not None:
            breaker = self._guard(spec.backend_name)
            if breaker is not None:
                return breaker.guard(
                    functools.partial(self._call_local, program, name, spec, signature, inputs)
                )
        return self._call_local(program, name, spec, signature, inputs)

    @staticmethod
    def request(
        name: str, spec: ModuleSpec, signature: Signature, inputs: dict[str, Any]
    ) -> PredictRequest:
        """The backend request of a ``predict``/``chain_of_thought`` module ``name``."""
        kind = spec.kind
        assert kind == "predict" or kind == "chain_of_thought"
        return PredictRequest(
            signature=signature,
            inputs=inputs,
            kind=kind,
            module=name,
            config=dict(spec.config),
            timeout=spec.timeout,
            demos=spec.demos or (),
        )

    def _guard(self, backend_name: str) -> CircuitBreaker | None:
        """The breaker a call to ``backend_name`` runs under (``None`` for a group's name)."""
        try:
            return self._guards[backend_name]
        except KeyError:
            pass
        from dspex.resilience.coordinator import Coordinator

        backend = self.backends.get(backend_name)
        guard: CircuitBreaker | None = None
        if (
            self.breakers is not None
            and backend is not None
            and not isinstance(backend, Coordinator)
        ):
            guard = self.breakers.get(backend.name)
        self._guards[backend_name] = guard
        return guard

    async def _call_local(
        self,
        program: Program,
        name: str,
        spec: ModuleSpec,
        signature: Signature,
        inputs: dict[str, Any],
    ) -> ModuleOutput:
        if spec.kind == "python":
            assert spec.function is not None
            return ModuleOutput(await self._call_python(spec.function, signature, inputs))
        if spec.kind == "dspy":
            assert spec.module is not None
            return await self._call_dspy(program, name, spec, signature, inputs)
        return await self._call_retrieve(program, spec, signature, inputs)

    async def _call_python(
        self, ref: str, signature: Signature, inputs: dict[str, Any]
    ) -> dict[str, Any]:
        fn = self._functions[ref]
        try:
            if inspect.iscoroutinefunction(fn):
                value = await fn(**inputs)
            else:
                value = await self.threads.run(fn, **inputs)
                if inspect.isawaitable(value):
                    value = await value
        except (DspexError, TimeoutError, ConnectionError, asyncio.CancelledError):
            raise  # ours and the retryable ones keep their meaning
        except Exception as exc:
            raise ModuleError(f"{ref} raised {type(exc).__name__}: {exc}") from exc
        return _as_outputs(ref, value, signature)

    async def _call_dspy(
        self,
        program: Program,
        name: str,
        spec: ModuleSpec,
        signature: Signature,
        inputs: dict[str, Any],
    ) -> ModuleOutput:
        import dspy

        from dspex.resilience.coordinator import Coordinator

        assert spec.module is not None
        pool = self._pool(program, spec)
        arguments = _module_arguments(signature, inputs)
        backend = self.backends.get(spec.backend_name)
        if isinstance(backend, Coordinator):
            return await self._call_routed(name, spec, signature, arguments, backend, pool)
        lm = getattr(backend, "lm", None)
        recorder = CallRecorder(name, spec.backend_name if lm is not None else None)
        settings = self._lm_settings(spec.backend_name, lm) if lm is not None else {}
        try:
            # the call's own usage tracker: the module's tokens, and its predictors' (rolled up
            # into the caller's tracker if one is active)
            with dspy.context(**settings), dspy.track_usage() as tracker:
                recorder.tracker = tracker
                prediction = await self._invoke(
                    pool, arguments, recorder, module=name, signature=signature
                )
        except (DspexError, TimeoutError, ConnectionError, asyncio.CancelledError) as exc:
            _keep_children(exc, recorder)
            raise
        except Exception as exc:
            error = ModuleError(f"{spec.module} raised {type(exc).__name__}: {exc}")
            _keep_children(error, recorder)
            raise error from exc
        return ModuleOutput(
            _prediction_outputs(prediction, signature),
            recorder.usage(),
            children=recorder.children(),
        )

    def _lm_settings(self, backend: str, lm: Any) -> dict[str, Any]:
        """DSPy settings for a module running on ``backend``'s ``lm`` with its LM calls
        recorded: the LM's recorded copy, made once; if it cannot be copied, ``lm`` itself with
        the LM hook among the callbacks in force (DSPy then calls back for every call)."""
        import dspy

        entry = self._recorded_lms.get(backend)
        if entry is None or entry[0] is not lm:
            entry = self._recorded_lms[backend] = (lm, recorded_lm(lm))
        if entry[1] is not None:
            return {"lm": entry[1]}
        return {"lm": lm, "callbacks": [*(dspy.settings.callbacks or ()), lm_hook()]}

    async def _call_routed(
        self,
        name: str,
        spec: ModuleSpec,
        signature: Signature,
        inputs: dict[str, Any],
        group: Coordinator,
        pool: ModulePool,
    ) -> ModuleOutput:
        """Run a ``dspy`` module with every LM call routed through coordinator ``group``."""
        import dspy

        from dspex.backends.dspy_lm import dspex_cause, recording, routed_lm
        from dspex.resilience.coordinator import ATTEMPTS_ATTRIBUTE

        assert spec.module is not None
        lm = self._routed.get(group.name)
        if lm is None:
            lm = self._routed[group.name] = routed_lm(group)
        recorder = CallRecorder(name, None)  # the group records the attempts
        with recording(name) as attempts:
            try:
                with dspy.context(lm=lm), dspy.track_usage() as tracker:
                    recorder.tracker = tracker
                    # not streamed: a coordinator group does not route streamed LM calls
                    prediction = await self._invoke(pool, inputs, recorder)
            except (DspexError, TimeoutError, ConnectionError, asyncio.CancelledError) as exc:
                _keep_attempts(exc, ATTEMPTS_ATTRIBUTE, attempts)
                _keep_children(exc, recorder)
                raise
            except Exception as exc:
                # DSPy wraps what the routed engine raised (every backend failed, …): the
                # dspex error inside is the module's failure, with its own cause kept
                cause = dspex_cause(exc)
                if cause is None:
                    error = ModuleError(f"{spec.module} raised {type(exc).__name__}: {exc}")
                    _keep_attempts(error, ATTEMPTS_ATTRIBUTE, attempts)
                    _keep_children(error, recorder)
                    raise error from exc
                _keep_attempts(cause, ATTEMPTS_ATTRIBUTE, attempts)
                _keep_children(cause, recorder)
                raise cause  # noqa: B904 - its __cause__ already says why
        outputs = _prediction_outputs(prediction, signature)
        return ModuleOutput(
            outputs,
            recorder.usage(),
            attempts=tuple(attempts),
            children=recorder.children(),
        )

    async def _call_retrieve(
        self, program: Program, spec: ModuleSpec, signature: Signature, inputs: dict[str, Any]
    ) -> ModuleOutput:
        retriever = self._retrievers[self.corpus_path(program, spec)]
        query = inputs[signature.input_fields[0].name]
        passages = await retriever.search(query, spec.k)
        by_name: dict[str, list[Any]] = {
            "ids": [p.id for p in passages],
            "scores": [p.score for p in passages],
        }
        outputs: dict[str, Any] = {}
        for position, out in enumerate(signature.output_fields):
            if position > 0 and out.name in by_name:
                outputs[out.name] = by_name[out.name]
            elif position == 0:
                outputs[out.name] = [p.text for p in passages]
        return ModuleOutput(outputs)

    def close(self) -> None:
        self._pools.clear()
        self._spec_pools.clear()
        self._retrievers.clear()
        self._routed.clear()
        self._recorded_lms.clear()


def _reaches_dspy_lm(backend: object) -> bool:
    """Whether calls to ``backend`` end in a :class:`~dspex.backends.dspy_backend.DspyBackend`:
    it is one, wraps one (``inner``: the response cache, a rate limit) or groups one."""
    from dspex.backends.dspy_backend import DspyBackend
    from dspex.resilience.coordinator import Coordinator

    if isinstance(backend, DspyBackend):
        return True
    if isinstance(backend, Coordinator):
        return any(
            _reaches_dspy_lm(member)
            for member in (*backend.backends, *backend.context_window_fallback)
        )
    inner = getattr(backend, "inner", None)
    return inner is not None and _reaches_dspy_lm(inner)


def _keep_attempts(exc: BaseException, attribute: str, attempts: list[BackendAttempt]) -> None:
    """Put every attempt the module made on the error it fails with (the runner records them)."""
    if attempts:
        with contextlib.suppress(AttributeError):
            setattr(exc, attribute, tuple(attempts))


def _keep_children(exc: BaseException, recorder: CallRecorder) -> None:
    """Put the predictor calls a failed module made on its error (the runner records them)."""
    children = recorder.children()
    if children:
        with contextlib.suppress(AttributeError):
            setattr(exc, CHILDREN_ATTRIBUTE, children)


def _import(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    try:
        value: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModuleError(f"cannot import {ref}: {exc}") from exc
    except Exception as exc:  # the module's own code raised while it was imported
        raise ModuleError(f"cannot import {ref}: {type(exc).__name__}: {exc}") from exc
    if not callable(value):
        raise ModuleError(f"{ref} is not callable")
    return value  # type: ignore[no-any-return]


def _resolve(program: Program, value: str) -> Path:
    """A spec path made absolute: against the program's directory, else the working one."""
    path = Path(value)
    if not path.is_absolute() and program.base_dir is not None:
        path = program.base_dir / path
    return path.resolve()


def _build_pool(
    ref: str,
    init: Mapping[str, Any] | None,
    state: Mapping[str, Any] | None,
    pickled: Path | None,
    allow_pickle: bool,
) -> ModulePool:
    """Import, construct and load a ``dspy`` module, and pool it (blocking: in a thread)."""
    module = build_module(
        _import(ref), ref, init=init, state=state, state_path=pickled, allow_pickle=allow_pickle
    )
    try:
        return ModulePool(module)
    except Exception as exc:
        raise ModuleError(
            f"cannot copy {ref} (each concurrent call runs on its own copy):"
            f" {type(exc).__name__}: {exc}"
        ) from exc


def _module_arguments(signature: Signature, inputs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a ``dspy`` module call: an optional input left unset is not
    passed, so the module's own default for it applies."""
    if not any(value is None for value in inputs.values()):
        return inputs
    optional = {f.name for f in signature.input_fields if f.optional}
    return {k: v for k, v in inputs.items() if v is not None or k not in optional}


def _prediction_outputs(prediction: Any, signature: Signature) -> dict[str, Any]:
    """The declared outputs of what a module returned: a ``dspy.Prediction``, a mapping, or
    the bare value of a one-output signature."""
    names = signature.output_names
    if isinstance(prediction, Mapping):
        return {n: prediction[n] for n in names if n in prediction}
    keys = getattr(prediction, "keys", None)
    if callable(keys):  # a dspy.Prediction
        present = set(keys())
        return {n: prediction[n] for n in names if n in present}
    if len(names) == 1 and prediction is not None:
        return {names[0]: prediction}
    return {}


def _as_outputs(ref: str, value: Any, signature: Signature) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if len(signature.output_fields) == 1:
        # a one-output function may return the bare value
        return {signature.output_fields[0].name: value}
    raise ModuleError(
        f"{ref} returned {type(value).__name__}; a module with several outputs must return a dict"
    )
