"""The batch worker server: a process of dspex's own that imports once and forks workers.

A process that runs batches with ``workers > 1`` (the *host*) starts one server the first time
it needs it: a plain ``python`` subprocess connected by a Unix socket pair. The server imports
what a worker runs (dspex's batch path, DSPy once the host uses it), tunes its interpreter
(:func:`dspex.tuning.tune_process`: it is a process dspex owns) and then forks one worker per
request, so a worker starts in milliseconds with everything imported and its pages shared. The
host hands each worker its own socket (sent with the request as a file descriptor); the server
never sees what the worker and the host say to each other.

Nothing outlives the host. The host holds the only write end of a *lifeline* pipe; the server
and every worker hold its read end. However the host ends — ``kill -9`` included — the pipe
reaches end of file: the server exits, and each worker stops its batch (its running items are
recorded ``cancelled``) and exits within :data:`ORPHAN_GRACE_S`, hard if it has to. The server
also exits when its socket to the host closes.

Only public interfaces are used (:mod:`subprocess`, descriptors passed with
:func:`socket.send_fds`, :func:`os.fork`): the host's :mod:`multiprocessing` globals (start
method, the shared forkserver and its preload list) are never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Iterable
from typing import Any, NoReturn

from dspex.batch._wire import recv, send
from dspex.errors import ConfigError, StorageError

__all__ = [
    "ORPHAN_GRACE_S",
    "WorkerServer",
    "host_context",
    "running_server",
    "serve",
    "worker_server",
]

ORPHAN_GRACE_S = 1.5
"""How long a worker whose host is gone may take to record its running items before it exits."""

EXIT_ORPHANED = 75
"""The exit status of a worker that had to end itself hard after its host was gone."""

# Everything a worker imports to run a batch, so that no worker imports (or, without bytecode
# files, compiles) a module of its own: what the server imported, every fork has.
PRELOAD = (
    "dspex.batch._worker",
    "dspex.runtime",
    "dspex.store.sql",
    "dspex.config",
    "dspex.engine.engine",
    "dspex.telemetry",
    "aiosqlite",
)
PRELOAD_DSPY = (
    "dspy",
    "dspy.clients.execution",
    "dspy.clients.call_result",
    "dspex.backends.dspy_backend",
    "dspex.backends._dspy_adapter",
    "dspex.signatures.dspy_interop",
)

_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[3]); "
    "from dspex.batch._server import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
)
_REAP_S = 1.0


class WorkerServer:
    """The host's handle on its worker server (see the module docstring). Blocking calls:
    use them from a thread in async code; they are serialised, so any thread may."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket, lifeline: int):
        self.process = process
        self._sock = sock
        self._lifeline = lifeline
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self.dspy = False

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the server runs and belongs to this process (not to the one we forked from)."""
        return os.getpid() == self._owner and self.process.poll() is None

    def preload(self, modules: Iterable[str]) -> None:
        """Have the server import ``modules`` (once) before it forks the next worker.

        Raises:
            StorageError: the server is gone.
        """
        self._request(("preload", tuple(modules)))

    def ping(self) -> None:
        """Return once the server has imported everything and answers.

        Raises:
            StorageError: the server is gone.
        """
        self._request(("ping",))

    def fork(self, target: str, payload: bytes, fds: list[int], context: dict[str, Any]) -> int:
        """Fork a worker that runs ``target(payload, fds, lifeline)`` and exits; its pid.

        ``target`` is ``"module:function"``; ``fds`` are sent along (the caller keeps and
        closes its own copies); ``context`` is :func:`host_context` of the caller.

        Raises:
            StorageError: the server is gone.
        """
        reply = self._request(("fork", target, context, payload), fds)
        return int(reply[1])

    def _request(self, message: tuple[Any, ...], fds: list[int] | None = None) -> Any:
        with self._lock:
            try:
                send(self._sock, message, fds)
                got = recv(self._sock)
            except OSError as exc:
                got = None
                problem = str(exc)
            else:
                problem = "it closed its connection"
            if got is None:
                raise StorageError(
                    f"the batch worker server (pid {self.pid}) is gone: {problem}"
                    f" (exit status {self.process.poll()})"
                )
            reply, stray = got
            for fd in stray:
                os.close(fd)
            if reply[0] == "error":
                raise StorageError(f"the batch worker server failed: {reply[1]}")
            return reply

    def close(self) -> None:
        """End the server: its workers lose their lifeline, stop and exit (blocking)."""
        if os.getpid() != self._owner:
            return
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            os.close(self._lifeline)
        try:
            self.process.wait(timeout=ORPHAN_GRACE_S + 5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_server: WorkerServer | None = None
_start_lock = threading.Lock()


def worker_server(*, dspy: bool = False) -> WorkerServer:
    """This process's worker server, started when it is not running (blocking).

    With ``dspy``, it also imports DSPy before forking the next worker (once).

    Raises:
        ConfigError: this platform cannot fork.
        StorageError: the server could not start.
    """
    global _server
    if not hasattr(os, "fork"):  # pragma: no cover - not POSIX
        raise ConfigError("workers > 1 needs a platform with os.fork (Linux, macOS, BSD)")
    with _start_lock:
        if _server is None or not _server.alive():
            if _server is not None:
                _server.close()
            else:
                # Our own child, ended with this process rather than left to the lifeline: no
                # zombie, no "subprocess is still running" warning at exit.
                atexit.register(_stop_server)
            _server = _start()
        server = _server
        if dspy and not server.dspy:
            server.preload(PRELOAD_DSPY)
            server.dspy = True
    return server


def _stop_server() -> None:
    if _server is not None:
        _server.close()


def running_server() -> WorkerServer | None:
    """This process's worker server if it runs, else ``None`` (nothing is started)."""
    server = _server
    return server if server is not None and server.alive() else None


def _start() -> WorkerServer:
    host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    lifeline_r, lifeline_w = os.pipe()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BOOT,
                str(child.fileno()),
                str(lifeline_r),
                json.dumps(sys.path),
            ],
            pass_fds=(child.fileno(), lifeline_r),
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        host.close()
        os.close(lifeline_w)
        raise StorageError(f"cannot start the batch worker server: {exc}") from None
    finally:
        child.close()
        os.close(lifeline_r)
    return WorkerServer(process, host, lifeline_w)


def host_context(*, main: bool) -> dict[str, Any]:
    """What a worker takes over from the host: directory, import path, environment and, when
    ``main`` (something it is sent was defined there), the host's ``__main__`` module."""
    context: dict[str, Any] = {
        "cwd": os.getcwd(),
        "path": list(sys.path),
        "env": dict(os.environ),
    }
    module = sys.modules.get("__main__")
    if main and module is not None:
        spec = getattr(module, "__spec__", None)
        context["main_name"] = getattr(spec, "name", None)
        context["main_path"] = getattr(module, "__file__", None)
    return context


# -- the server process ----------------------------------------------------------------------


def serve(control_fd: int, lifeline_fd: int) -> None:
    """The server's main: import, tune, then fork a worker per request until the host goes."""
    # The host decides when batches stop; Ctrl-C reaches it (and the workers) directly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    from dspex.tuning import tune_process

    _import(PRELOAD)
    tune_process()  # after the imports: they are what freezing is for
    children: set[int] = set()
    try:
        while True:
            ready, _, _ = select.select([control.fileno(), lifeline_fd], [], [], _REAP_S)
            _reap(children)
            if lifeline_fd in ready:  # nothing is ever written: readable means end of file
                return
            if control.fileno() not in ready:
                continue
            got = recv(control)
            if got is None:
                return
            message, fds = got
            try:
                reply = _handle(message, fds, control, lifeline_fd, children)
            except Exception as exc:
                reply = ("error", f"{type(exc).__name__}: {exc}")
            finally:
                for fd in fds:
                    os.close(fd)  # the worker has its copies; later workers must not
            send(control, reply)
    finally:
        _wait_for(children, ORPHAN_GRACE_S + 1.0)


def _handle(
    message: tuple[Any, ...],
    fds: list[int],
    control: socket.socket,
    lifeline: int,
    children: set[int],
) -> tuple[Any, ...]:
    kind = message[0]
    if kind == "ping":
        return ("ok",)
    if kind == "preload":
        _import(message[1])
        gc.freeze()
        return ("ok",)
    if kind == "fork":
        pid = os.fork()
        if pid == 0:
            _child(message, fds, control, lifeline)
        children.add(pid)
        return ("forked", pid)
    raise ValueError(f"unknown request {kind!r}")


def _import(modules: Iterable[str]) -> None:
    for name in modules:
        with contextlib.suppress(ImportError):  # an optional extra: the worker reports it
            importlib.import_module(name)


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)


def _wait_for(children: set[int], limit: float) -> None:
    """Reap the workers as they exit (they watch the same lifeline), then leave."""
    end = time.monotonic() + limit
    while children and time.monotonic() < end:
        _reap(children)
        time.sleep(0.02)
    for pid in children:  # pragma: no cover - a worker ignored its lifeline
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _child(
    message: tuple[Any, ...], fds: list[int], control: socket.socket, lifeline: int
) -> NoReturn:
    """A forked worker: take over the host's context, run the target, exit (never returns)."""
    code = 1
    try:
        control.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _, target, context, payload = message
        _adopt(context)
        module, _, name = target.partition(":")
        code = int(getattr(importlib.import_module(module), name)(payload, list(fds), lifeline))
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _adopt(context: dict[str, Any]) -> None:
    os.chdir(context["cwd"])
    sys.path[:] = context["path"]
    os.environ.clear()
    os.environ.update(context["env"])
    name = context.get("main_name")
    path = context.get("main_path")
    if name is not None:
        _main_from_name(name)
    elif path is not None:
        _main_from_path(path)


def _main_from_name(name: str) -> None:
    # What multiprocessing's spawn does: a package's __main__ cannot be imported again.
    if name == "__main__" or name.endswith(".__main__"):
        return
    _install_main(runpy.run_module(name, run_name="__mp_main__", alter_sys=True))


def _main_from_path(path: str) -> None:
    _install_main(runpy.run_path(path, run_name="__mp_main__"))


def _install_main(content: dict[str, Any]) -> None:
    """The host's ``__main__`` as this process's: pickles of what it defined load here."""
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(content)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
