"""Batches on a Ray cluster: long-lived actors, each a warmed runtime recording its own items.

``run_batch(..., cluster="ray")`` (``dspex batch --cluster ray``) connects this process (the
*driver*) to Ray — a Ray started for the run on this machine, bound to 127.0.0.1, or an
existing cluster (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:10001"``) — and starts
``ray_actors`` actors (:class:`~dspex.batch._ray_actor.BatchActor`, ``ray_actor_cpus`` CPUs
each, spread over the nodes). Each actor builds its runtime (store connection, engine,
backends) once and runs one :class:`~dspex.batch.runner.BatchRunner` over the chunks the
driver feeds it: a chunk is taken by whichever actor has room first, and ``feed`` returns only
once the actor has room (backpressure), so the driver holds a few chunks per actor at most.
Actors claim their items with leases and record results themselves: the driver only reads the
input, hands out chunks and watches.

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

SQLite is a file on one machine: it is accepted only when the cluster is this machine alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from dspex.batch.inputs import RawItem
from dspex.batch.workers import (
    Supervisor,
    WorkerSpec,
    concurrency_shares,
    connection,
    merge_outcome,
    poll_limits,
    worker_id,
)
from dspex.errors import ConfigError
from dspex.resilience.ratelimit import split_limits

if TYPE_CHECKING:
    from dspex.batch.executors import BatchRun
    from dspex.batch.runner import StopReason

__all__ = ["LOCAL_OBJECT_STORE_BYTES", "actor_count", "import_ray", "run_on_ray"]

log = logging.getLogger("dspex.batch")

LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
"""The object store of a Ray started for a run: actors get chunks of items, nothing large."""

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


def _connect(ray: ModuleType, address: str) -> bool:
    """Connect to (or start) Ray; whether this call started the connection (and so ends it)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if address == "local":
        # a Ray of this run on this machine: loopback only, no dashboard, a small object store
        options.update(
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            _node_ip_address="127.0.0.1",
        )
    try:
        ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return True


def _check_store(ray: ModuleType, url: str, address: str) -> str:
    """The store URL every actor can open; SQLite only on a one-node Ray on this machine.

    Raises:
        ConfigError: SQLite with a cluster of several nodes, or reached through Ray Client.
    """
    if not url.startswith("sqlite"):
        return url
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1 or address.startswith("ray://"):
        where = (
            f"a Ray cluster of {len(nodes)} nodes"
            if len(nodes) > 1
            else "a Ray cluster reached through Ray Client (another machine)"
        )
        raise ConfigError(
            f"SQLite cannot be the store of a batch on {where}: the database is a file on this"
            " machine, which actors on other machines cannot open (and SQLite's locks do not"
            " work across machines). Use PostgreSQL (database_url = 'postgresql://…'), or run"
            " on a one-node local Ray"
        )
    prefix, sep, path = url.partition(":///")
    if sep and path and not Path(path).is_absolute():
        # actors do not share the driver's working directory
        return f"{prefix}:///{Path(path).resolve()}"
    return url


def _chunks(run: BatchRun) -> Iterator[tuple[int, list[RawItem]]]:
    """The input's chunks, numbered, read as they are asked for."""
    size = run.options.batch.chunk_size
    chunk: list[RawItem] = []
    number = 0
    for raw in run.source:
        chunk.append(raw)
        if len(chunk) >= size:
            yield number, chunk
            number += 1
            chunk = []
    if chunk:
        yield number, chunk


@dataclass(eq=False)
class _Actor:
    """One actor as the driver sees it."""

    number: int  # its share of the concurrency
    name: str
    worker_id: str
    handle: Any
    taken: list[int]
    closing: bool = False  # no more chunks: finish was called
    ended: bool = False
    handled: bool = False
    outcome: dict[str, Any] | None = None
    lost: str | None = None  # why Ray says it is gone
    started_s: float | None = None


class _Driver(Supervisor[_Actor]):
    """The driver's side of a batch on Ray: starts actors, feeds them and watches them."""

    who = "Ray actor"

    def __init__(self, ray: ModuleType, run: BatchRun, url: str, schema: str | None, count: int):
        super().__init__(run.store, run.batch, run.options.batch)
        self.ray = ray
        self.run = run
        self.url = url
        self.schema = schema
        options = run.options.batch
        self.shares = concurrency_shares(options.max_concurrency, count)
        self._reader = _chunks(run)
        self._serial = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # the actor opens a runtime of its own: it stands above the runtime, run by name
        actor_class = importlib.import_module(_ACTOR_MODULE).BatchActor
        remote = ray.remote(actor_class)
        self._actor_class = remote.options(
            num_cpus=options.ray_actor_cpus,
            resources=dict(options.ray_actor_resources or {}),
            max_restarts=0,
            scheduling_strategy="SPREAD",
        )

    @property
    def actors(self) -> list[_Actor]:
        return self.members

    # -- actors -----------------------------------------------------------------------------

    def spec(self, number: int, deadline: float | None) -> WorkerSpec:
        run = self.run
        batch = run.options.batch.model_copy(
            update={"max_concurrency": self.shares[number], "deadline": deadline}
        )
        settings = dict(run.context.get("settings") or {})
        if settings.get("backends"):
            # rpm/tpm are the batch's: each actor keeps its share of them
            settings["backends"] = split_limits(settings["backends"], len(self.shares))
        return WorkerSpec(
            number=number,
            database_url=self.url,
            schema=self.schema,
            batch_id=run.batch.id,
            program=run.batch.program,
            version=run.batch.program_version,
            backend=run.backend,
            input_path=None,
            options=replace(
                run.options, batch=batch, worker_id=f"{run.options.worker_id}/{number}"
            ),
            settings=settings,
            backends=run.context.get("backends"),
            keep=run.keep is not None,
        )

    def start(self, number: int) -> None:
        """Start an actor for share ``number`` and the task feeding it."""
        deadline = self.deadline_left()
        if deadline == 0.0:
            return
        spec = self.spec(number, deadline)
        self._serial += 1
        name = f"ray{self._serial}"
        handle = self._actor_class.remote(spec, name)
        actor = _Actor(number, name, worker_id(spec.options.worker_id, name), handle, [])
        self.members.append(actor)
        task = asyncio.create_task(self._serve(actor), name=f"batch-ray-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, actor: _Actor) -> None:
        """Feed one actor chunks until none is left, then collect its outcome."""
        ray = self.ray
        try:
            actor.started_s = await actor.handle.start.remote()
            while not self.stopping:
                chunk = self._take(actor)
                if chunk is None:
                    break
                if not await actor.handle.feed.remote(chunk):
                    break  # the actor stopped on its own (deadline, max_errors, max_cost)
            actor.closing = True
            actor.outcome = await actor.handle.finish.remote()
        except ray.exceptions.RayActorError as exc:
            if exc.actor_init_failed:
                # the actor could not be made (its spec cannot be unpacked there): another
                # would fail the same way
                lines = str(exc).strip().splitlines()
                actor.outcome = {"error": lines[-1] if lines else type(exc).__name__}
            else:
                actor.lost = type(exc).__name__
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            actor.outcome = {"error": f"{type(cause).__name__}: {cause}"}
        finally:
            actor.closing = actor.ended = True
            self._changed.set()

    def _take(self, actor: _Actor) -> list[RawItem] | None:
        """The next chunk for ``actor``: a lost actor's first, then new ones."""
        if self.stopping:
            return None
        if self._reissued:
            number = self._reissued.pop(0)
            items = self._items_of(number)
        else:
            found = next(self._reader, None)
            if found is None:
                return None
            number, items = found
        actor.taken.append(number)
        return items

    def _items_of(self, number: int) -> list[RawItem]:
        """Chunk ``number`` read again (a lost actor's: the driver keeps no chunk it handed
        out, so its memory stays flat however long the input)."""
        size = self.run.options.batch.chunk_size
        first = number * size
        return [raw for raw in self.run.source if first <= raw.index < first + size]

    def label(self, member: _Actor) -> str:
        return member.name

    def _send_stop(self, member: _Actor) -> None:
        member.handle.stop.remote()

    def _kill(self, member: _Actor) -> None:
        self.ray.kill(member.handle, no_restart=True)

    async def _replace(self, member: _Actor) -> None:
        if not any(not a.closing for a in self.actors):
            # every other actor has had its last chunk: a new one takes these
            self.start(member.number)

    # -- the run ----------------------------------------------------------------------------

    async def _ended(self, actor: _Actor) -> None:
        outcome = actor.outcome
        if actor.lost is not None:
            await self.lose(actor, f"Ray reported it gone: {actor.lost}")
            return
        if outcome is not None and "error" in outcome:
            self.failed(actor, outcome["error"])
            return
        assert outcome is not None
        merge_outcome(outcome, self.run.stats, self.run.keep)
        if outcome["reason"] in ("max_errors", "max_cost", "deadline"):
            self.stop(outcome["reason"])
        elif outcome["reason"] == "cancelled" and not self.stopping:
            # pragma: no cover - only the driver stops actors
            await self.lose(actor, "it was cancelled")  # pragma: no cover

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor.handle, no_restart=True)


async def run_on_ray(run: BatchRun) -> StopReason:
    """Run the batch on Ray actors (see the module docstring); why it ended.

    Raises:
        ConfigError: Ray is not installed or not reachable, the store cannot be shared with
            the cluster (memory; SQLite on more than this machine), or the cluster has fewer
            CPUs than one actor needs.
        BatchError: an actor failed, or Ray lost too many (``.batch_id``).
        asyncio.CancelledError: cancelled; every actor was stopped (its running items
            recorded ``cancelled``) before this returns.
    """
    ray = import_ray()
    shared = connection(run.store)
    if shared is None:
        raise ConfigError(
            "a Ray cluster needs a database every actor can open (PostgreSQL); the memory"
            " store lives in one process"
        )
    options = run.options.batch
    address = options.cluster or "local"
    if address == "ray":
        address = "local"
    started_at = time.perf_counter()
    ours = await asyncio.to_thread(_connect, ray, address)
    try:
        url = _check_store(ray, shared[0], address)
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        actor_cpus = options.ray_actor_cpus or 1.0
        if cpus < actor_cpus:
            raise ConfigError(
                f"the Ray cluster has {cpus:g} CPUs; an actor needs {actor_cpus:g}"
                " (--ray-actor-cpus)"
            )
        count = actor_count(options.ray_actors, cpus, actor_cpus, options.max_concurrency)
        log.info(
            "batch %s: %d Ray actors (%g CPUs each) on %s, connected in %.2fs",
            run.batch.id,
            count,
            actor_cpus,
            address,
            time.perf_counter() - started_at,
        )
        run = replace(
            run,
            options=replace(
                run.options, batch=options.model_copy(update={"ray_actor_cpus": actor_cpus})
            ),
        )
        driver = _Driver(ray, run, url, shared[1], count)
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
    finally:
        if ours:
            await asyncio.to_thread(ray.shutdown)
