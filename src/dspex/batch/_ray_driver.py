"""The driver of one batch on Ray: it hands the input out in chunks to actors and watches them.

:class:`Driver` is what :class:`~dspex.batch.ray_actors.RayExecutor` runs for each batch. It
takes its actors from the executor (kept ones first, new ones when none fits, see
:class:`ActorSource`), begins the batch on each with that actor's share of the concurrency,
rate limits and deadline, feeds them chunks — whichever has room first takes the next — and
watches them through the :class:`~dspex.batch.workers.Supervisor` every batch executor shares
(stop, lose and replace, kill stragglers). When the batch is over it gives the executor back
the actors whose batch ended normally, to keep for the next one, and has the others ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from dspex.batch.inputs import RawItem
from dspex.batch.workers import (
    Supervisor,
    WorkerSpec,
    concurrency_shares,
    merge_outcome,
    worker_id,
)
from dspex.resilience.ratelimit import split_limits

if TYPE_CHECKING:
    from dspex.batch.executors import BatchRun
    from dspex.batch.runner import RunnerOptions

__all__ = ["ActorPlan", "ActorSource", "Driver", "PooledActor"]


class ActorSource(Protocol):
    """Where a driver gets its actors and gives them back (the executor's pool)."""

    def make(self, spec: WorkerSpec, options: RunnerOptions) -> PooledActor:
        """A new actor whose runtime is built from ``spec``, lent to the batch."""

    def give_back(self, actor: PooledActor, *, keep: bool) -> None:
        """The batch is done with ``actor``: keep it for the next batch, or end it."""


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


@dataclass(frozen=True, slots=True)
class ActorPlan:
    """What a batch runs on, as checked before it is recorded."""

    address: str
    url: str
    schema: str | None
    count: int
    actor_cpus: float


@dataclass(eq=False)
class PooledActor:
    """An actor of a :class:`~dspex.batch.ray_actors.RayExecutor`, kept across batches.

    Attributes:
        name: ends its lease identity (``ray1``, ``ray2``, … in the order they were made).
        handle: Ray's handle.
        key: what its runtime was built from: only a batch of the same key may use it.
        pid: its process id, once it began a batch.
        busy: a batch is running on it.
    """

    name: str
    handle: Any
    key: tuple[Any, ...]
    pid: int | None = None
    busy: bool = True


@dataclass(eq=False)
class _Actor:
    """One actor as the driver of a batch sees it."""

    number: int  # its share of the concurrency
    pooled: PooledActor
    worker_id: str
    spec: WorkerSpec
    taken: list[int]
    closing: bool = False  # no more chunks: finish was called
    ended: bool = False
    handled: bool = False
    outcome: dict[str, Any] | None = None
    lost: str | None = None  # why Ray says it is gone
    killed: bool = False
    started_s: float | None = None

    @property
    def name(self) -> str:
        return self.pooled.name

    @property
    def handle(self) -> Any:
        return self.pooled.handle

    @property
    def reusable(self) -> bool:
        """Whether its batch ended normally on it (its runner reported), so the next batch
        may run on it."""
        return (
            self.outcome is not None
            and "error" not in self.outcome
            and self.lost is None
            and not self.killed
        )


class Driver(Supervisor[_Actor]):
    """The driver's side of a batch on Ray: takes actors, feeds them and watches them."""

    who = "Ray actor"

    def __init__(
        self,
        ray: ModuleType,
        run: BatchRun,
        plan: ActorPlan,
        executor: ActorSource,
        kept: list[PooledActor],
    ) -> None:
        super().__init__(run.store, run.batch, run.options.batch)
        self.ray = ray
        self.run = run
        self.plan = plan
        self.executor = executor
        self.shares = concurrency_shares(run.options.batch.max_concurrency, plan.count)
        self.kept = kept  # the executor's actors this batch runs on first
        self._reader = _chunks(run)
        self._tasks: set[asyncio.Task[None]] = set()

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
            database_url=self.plan.url,
            schema=self.plan.schema,
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
        """Run share ``number`` on a kept actor, else on a new one, and start the task
        feeding it."""
        deadline = self.deadline_left()
        if deadline == 0.0:
            return
        spec = self.spec(number, deadline)
        pooled = self.kept.pop(0) if self.kept else self.executor.make(spec, self.run.options)
        actor = _Actor(number, pooled, worker_id(spec.options.worker_id, pooled.name), spec, [])
        self.members.append(actor)
        task = asyncio.create_task(self._serve(actor), name=f"batch-ray-{pooled.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, actor: _Actor) -> None:
        """Feed one actor chunks until none is left, then collect its outcome."""
        ray = self.ray
        try:
            begun = await actor.handle.begin.remote(actor.spec)
            actor.started_s = begun["seconds"]
            actor.pooled.pid = begun["pid"]
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
        member.killed = True
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
        """Give the executor back the actors whose batch ended normally; end the others (and
        the kept ones this batch did not need)."""
        for task in list(self._tasks):
            task.cancel()
        for actor in self.actors:
            self.executor.give_back(actor.pooled, keep=actor.reusable)
        for pooled in self.kept:
            self.executor.give_back(pooled, keep=True)
        self.kept = []
