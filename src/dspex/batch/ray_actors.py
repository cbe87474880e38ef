"""Batches on a Ray cluster: long-lived actors, each a warmed runtime recording its own items.

``run_batch(..., cluster="ray")`` (``dspex batch --cluster ray``) runs on the runtime's
:class:`RayExecutor`. Before the batch is recorded it connects this process (the *driver*) to
Ray — a Ray started on this machine, bound to 127.0.0.1, or an existing cluster (``"auto"``,
``"HOST:PORT"``, ``"ray://HOST:10001"``) — and checks that the store can be shared with the
cluster and that one actor fits: a batch refused there leaves nothing recorded. The batch then
runs on ``ray_actors`` actors (:class:`~dspex.batch._ray_actor.BatchActor`, ``ray_actor_cpus``
CPUs each, spread over the nodes). Each actor builds its runtime (store connection, engine,
backends) once and runs one :class:`~dspex.batch.runner.BatchRunner` per batch over the chunks
the driver feeds it: a chunk is taken by whichever actor has room first, and ``feed`` returns
only once the actor has room (backpressure), so the driver holds a few chunks per actor at
most. Actors claim their items with leases and record results themselves: the driver
(:mod:`dspex.batch._ray_driver`) only reads the input, hands out chunks and watches.

The executor keeps its Ray connection and its actors for the life of the runtime (closed by
``Runtime.aclose()``): the next batch whose actors would be the same — same store, settings
(the backends' share of the rate limits included), backends and actor CPUs and resources; the
program and version may differ — runs on the actors the last one left, after a ping (an actor
that died meanwhile is ended and a new one started in its place), without paying Ray's and the
actors' start-up again. Batches running at the same time on one runtime each get actors of
their own (kept ones first, then new ones). A kept actor that does not fit the next batch is
ended first, so that it does not hold the CPUs the new actors need. Closing ends every actor;
a Ray the executor started (``"local"``) is shut down, one this process was already connected
to is left connected.

The batch's limits are the batch's: each actor gets its share of ``max_concurrency`` and of
the backends' ``rpm``/``tpm`` (as worker processes do), what is left of the ``deadline``, and
the driver reads the batch's counts to apply ``max_errors`` and ``max_cost`` to all actors
together.

Faults: an actor Ray reports dead (killed, out of memory, its node gone) has its running items
recorded ``cancelled`` at once and its chunks handed to the actors still taking input (or to a
new actor when none is), where the claims skip what it completed; an item whose holder is not
known dead waits for its lease to expire (the runner's wait for held items). More than
:data:`~dspex.batch.workers.MAX_LOST` lost actors end the batch with a
:class:`~dspex.errors.BatchError`. Cancelling the run (Ctrl-C, SIGTERM, the deadline) stops
every actor, which records its running items ``cancelled``: the batch is resumable, here or in
one process. Actors belong to the driver: if it dies, Ray ends them and their leases expire.
Only an actor whose batch ended normally (its runner reported) is kept for the next batch.

SQLite is a file on one machine: it is accepted only when the cluster is this machine alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from dspex.batch._ray_driver import ActorPlan, Driver, PooledActor
from dspex.batch.workers import WorkerSpec, connection, poll_limits
from dspex.errors import ConfigError

if TYPE_CHECKING:
    from dspex.batch.executors import BatchRun
    from dspex.batch.options import BatchOptions
    from dspex.batch.runner import RunnerOptions, StopReason
    from dspex.store.base import Store

__all__ = [
    "CLOSE_GRACE_S",
    "LOCAL_OBJECT_STORE_BYTES",
    "PooledActor",
    "RayExecutor",
    "actor_count",
    "import_ray",
]

log = logging.getLogger("dspex.batch")

LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
"""The object store of a Ray started for a run: actors get chunks of items, nothing large."""

CLOSE_GRACE_S = 10.0
"""How long closing the executor waits for its actors to close their runtimes before it ends
them anyway."""

_ACTOR_MODULE = "dspex.batch._ray_actor"


def import_ray() -> ModuleType:
    """Ray, imported now (never before a batch asks for a cluster).

    Raises:
        ConfigError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("a batch on a Ray cluster needs Ray: pip install 'dspex[ray]'") from None
    return ray


def actor_count(requested: int | None, cluster_cpus: float, actor_cpus: float, limit: int) -> int:
    """How many actors run the batch: as requested, else as many as the cluster's CPUs hold;
    never more than items may run at once (``limit``), never 0."""
    if requested is None:
        requested = max(1, math.floor(cluster_cpus / actor_cpus))
    return max(1, min(requested, limit))


def _refused(where: str) -> ConfigError:
    return ConfigError(
        f"SQLite cannot be the store of a batch on {where}: the database is a file on this"
        " machine, which actors on other machines cannot open (and SQLite's locks do not"
        " work across machines). Use PostgreSQL (database_url = 'postgresql://…'), or run"
        " on a one-node local Ray"
    )


def _check_store(ray: ModuleType | None, url: str, address: str) -> str:
    """The store URL every actor can open; SQLite only on a one-node Ray on this machine.

    ``ray`` is ``None`` before this process is connected: only the address is checked then.

    Raises:
        ConfigError: SQLite with a cluster of several nodes, or reached through Ray Client.
    """
    if not url.startswith("sqlite"):
        return url
    if address.startswith("ray://"):
        raise _refused("a Ray cluster reached through Ray Client (another machine)")
    if ray is None:
        return url
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1:
        raise _refused(f"a Ray cluster of {len(nodes)} nodes")
    prefix, sep, path = url.partition(":///")
    if sep and path and not Path(path).is_absolute():
        # actors do not share the driver's working directory
        return f"{prefix}:///{Path(path).resolve()}"
    return url


class RayExecutor:
    """Batches on Ray actors, kept with the Ray connection for the life of the runtime (an
    :class:`~dspex.batch.executors.Executor`; see the module docstring)."""

    def __init__(self) -> None:
        self._ray: ModuleType | None = None
        self._address: str | None = None  # what this executor connected to
        self._ours = False  # it started the connection: it ends it on close
        self._connecting = asyncio.Lock()
        self._actor_class: Any = None
        self._actors: list[PooledActor] = []  # every actor made and not ended, busy or kept
        self._serial = 0

    @property
    def actors(self) -> list[PooledActor]:
        """The actors this executor holds (running a batch, or kept for the next)."""
        return list(self._actors)

    # -- before the batch is recorded ---------------------------------------------------------

    async def prepare(self, store: Store, options: BatchOptions) -> None:
        """Connect to Ray (once) and check the store and the cluster's CPUs.

        Raises:
            ConfigError: Ray is not installed or not reachable, the store cannot be shared
                with the cluster (memory; SQLite on more than this machine), or the cluster
                has fewer CPUs than one actor needs.
        """
        await self._plan(store, options)

    async def _plan(self, store: Store, options: BatchOptions) -> ActorPlan:
        ray = import_ray()
        shared = connection(store)
        if shared is None:
            raise ConfigError(
                "a Ray cluster needs a database every actor can open (PostgreSQL); the memory"
                " store lives in one process"
            )
        address = options.cluster or "local"
        if address == "ray":
            address = "local"
        _check_store(None, shared[0], address)  # what the address alone tells, unconnected
        started_at = time.perf_counter()
        await self._connect(ray, address)
        url = _check_store(ray, shared[0], address)
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        actor_cpus = options.ray_actor_cpus or 1.0
        if cpus < actor_cpus:
            raise ConfigError(
                f"the Ray cluster has {cpus:g} CPUs; an actor needs {actor_cpus:g}"
                " (--ray-actor-cpus)"
            )
        count = actor_count(options.ray_actors, cpus, actor_cpus, options.max_concurrency)
        log.debug("Ray at %s ready in %.2fs", address, time.perf_counter() - started_at)
        return ActorPlan(address, url, shared[1], count, actor_cpus)

    async def _connect(self, ray: ModuleType, address: str) -> None:
        """Connect to (or start) Ray, unless this process is connected already."""
        async with self._connecting:
            self._ray = ray
            if ray.is_initialized():
                if self._ours and self._address != address:
                    raise ConfigError(
                        f"this runtime runs its batches on the Ray at {self._address!r}; one"
                        " process is connected to one Ray at a time: run the batch on"
                        f" {address!r} from another process"
                    )
                return
            # never connected, or Ray was shut down under this executor: its actors are gone
            self._actors.clear()
            self._actor_class = None
            self._address = address
            await asyncio.to_thread(self._init, ray, address)

    def _init(self, ray: ModuleType, address: str) -> None:
        """``ray.init`` (in a thread): ownership is recorded here, so that a caller cancelled
        meanwhile does not leave a Ray running that the executor would not shut down."""
        options: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
        if address == "local":
            # a Ray of this runtime on this machine: loopback only, no dashboard, a small
            # object store
            options.update(
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                _node_ip_address="127.0.0.1",
            )
        try:
            ray.init(**options)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
        self._ours = True

    # -- the actors ---------------------------------------------------------------------------

    def key_of(self, spec: WorkerSpec, options: RunnerOptions) -> tuple[Any, ...]:
        """What an actor made from ``spec`` is: a batch may run on a kept actor only when its
        own actors would be the same (the program and version may differ)."""
        batch = options.batch
        backends = spec.backends or {}
        return (
            spec.database_url,
            spec.schema,
            json.dumps(spec.settings, sort_keys=True, default=str),
            tuple(sorted((name, id(backend)) for name, backend in backends.items())),
            batch.ray_actor_cpus,
            tuple(sorted((batch.ray_actor_resources or {}).items())),
        )

    def make(self, spec: WorkerSpec, options: RunnerOptions) -> PooledActor:
        """A new actor whose runtime is built from ``spec`` (lent: busy)."""
        ray = self._ray
        assert ray is not None
        if self._actor_class is None:
            # the actor opens a runtime of its own: it stands above the runtime, run by name
            actor_class = importlib.import_module(_ACTOR_MODULE).BatchActor
            self._actor_class = ray.remote(actor_class)
        batch = options.batch
        self._serial += 1
        name = f"ray{self._serial}"
        handle = self._actor_class.options(
            num_cpus=batch.ray_actor_cpus,
            resources=dict(batch.ray_actor_resources or {}),
            max_restarts=0,
            scheduling_strategy="SPREAD",
        ).remote(spec, name)
        pooled = PooledActor(name, handle, self.key_of(spec, options))
        self._actors.append(pooled)
        return pooled

    async def _borrow(self, key: tuple[Any, ...], count: int) -> list[PooledActor]:
        """Up to ``count`` kept actors of ``key`` that answer a ping, lent to a batch; kept
        actors of another key are ended (they hold CPUs the new ones need), dead ones too."""
        ray = self._ray
        assert ray is not None
        idle = [a for a in self._actors if not a.busy]
        taken = [a for a in idle if a.key == key][:count]
        for actor in idle:
            if actor.key != key:
                self._end(actor)
        for actor in taken:
            actor.busy = True
        try:
            answers = await asyncio.gather(
                *(actor.handle.ping.remote() for actor in taken), return_exceptions=True
            )
        except BaseException:  # cancelled while asking: they stay kept for the next batch
            for actor in taken:
                actor.busy = False
            raise
        alive: list[PooledActor] = []
        for actor, answer in zip(taken, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, ray.exceptions.RayError):
                    raise answer
                log.info(
                    "kept Ray actor %s is gone (%s): a new one replaces it", actor.name, answer
                )
                self._end(actor)
            else:
                actor.pid = int(answer)
                alive.append(actor)
        return alive

    def give_back(self, actor: PooledActor, *, keep: bool) -> None:
        """A batch is done with ``actor``: keep it for the next one, or end it."""
        if keep and actor in self._actors:
            actor.busy = False
        else:
            self._end(actor)

    def _end(self, actor: PooledActor) -> None:
        if actor in self._actors:
            self._actors.remove(actor)
        # (a call on a handle after Ray was shut down would start a new Ray)
        if self._ray is not None and self._ray.is_initialized():
            with contextlib.suppress(Exception):
                self._ray.kill(actor.handle, no_restart=True)

    # -- a batch ------------------------------------------------------------------------------

    async def run(self, run: BatchRun) -> StopReason:
        """Run the batch on actors kept from earlier batches, and new ones; why it ended.

        Raises:
            ConfigError: the checks of :meth:`prepare` fail now (the cluster changed).
            BatchError: an actor failed, or Ray lost too many (``.batch_id``).
            asyncio.CancelledError: cancelled; every actor was stopped (its running items
                recorded ``cancelled``) before this returns.
        """
        options = run.options.batch
        plan = await self._plan(run.store, options)
        ray = self._ray
        assert ray is not None
        run = replace(
            run,
            options=replace(
                run.options,
                batch=options.model_copy(update={"ray_actor_cpus": plan.actor_cpus}),
            ),
        )
        driver = Driver(ray, run, plan, self, [])
        key = self.key_of(driver.spec(0, None), run.options)
        driver.kept = await self._borrow(key, len(driver.shares))
        log.info(
            "batch %s: %d Ray actors (%g CPUs each, %d kept from earlier batches) on %s",
            run.batch.id,
            len(driver.shares),
            plan.actor_cpus,
            len(driver.kept),
            plan.address,
        )
        try:
            try:
                for number in range(len(driver.shares)):
                    driver.start(number)
                reason = await driver.watch(run.tracker)
            except BaseException:
                await asyncio.shield(driver.shutdown())
                raise
        finally:
            driver.close()
        await poll_limits(run.store, run.batch, None, run.tracker)
        return reason

    async def aclose(self) -> None:
        """End every actor (each closes its runtime first, within :data:`CLOSE_GRACE_S`);
        shut Ray down if this executor started it."""
        ray = self._ray
        actors, self._actors = self._actors, []
        # (a call on a handle after Ray was shut down would start a new Ray)
        if ray is not None and actors and ray.is_initialized():
            closing = [actor.handle.close.remote() for actor in actors]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await asyncio.gather(*closing, return_exceptions=True)
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor.handle, no_restart=True)
        if ray is not None and self._ours and ray.is_initialized():
            self._ours = False
            await asyncio.to_thread(ray.shutdown)
        self._ray = None
        self._actor_class = None
