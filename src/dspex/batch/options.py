"""The options of a batch run: one model, built by the library, the CLI and the service alike,
and sent whole to every worker process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from dspex._strategies import CacheMode
from dspex.errors import ErrorDetail, ValidationError
from dspex.resilience.policy import RetryPolicy

__all__ = ["CLUSTER_NAMES", "ITEM_RETRY", "BatchOptions", "ClusterDefaults"]

CLUSTER_NAMES = ("ray", "local", "auto")
"""The cluster names :attr:`BatchOptions.cluster` takes besides Ray addresses."""

ITEM_RETRY = RetryPolicy(initial_interval=0.5, backoff_factor=2.0, max_interval=10.0, jitter=0.2)
"""The waits between an item's runs (its ``max_attempts`` is set from ``max_retries``)."""


class ClusterDefaults(Protocol):
    """Where batches run unless one says otherwise (the settings' ``[cluster]``)."""

    @property
    def kind(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def actors(self) -> int | None: ...
    @property
    def actor_cpus(self) -> float: ...
    @property
    def actor_resources(self) -> Mapping[str, float]: ...


class BatchOptions(BaseModel):
    """How a batch runs; checked before anything touches the database.

    Attributes:
        max_concurrency: items running at once (1–10000), shared out between worker processes.
        max_retries: re-runs of an item whose failure is retryable (rate limits, timeouts,
            unavailable backends), 0–100; within a run a module's own retry policy applies, or
            its coordinator group's. A predictor call makes at most ``(1 + max_retries) ×
            max_attempts`` backend calls (see :mod:`dspex.resilience.policy`).
        continue_on_error: keep going after failures (the default); ``False`` stops at the
            first failure (as ``max_errors=0``).
        max_errors: stop once more than this many items failed
            (:class:`~dspex.errors.MaxErrorsExceeded`).
        item_timeout: seconds one run of an item may take (failed with code ``timeout``).
        deadline: seconds the whole batch may take; past it running items are cancelled and the
            batch ends ``cancelled`` (resumable).
        validate_mode: ``"upfront"`` (every item checked before anything runs; every bad index
            reported) or ``"per_item"`` (a bad item fails on its own). Also accepted as
            ``validate``.
        workers: processes to spread items over (1–256); more than one needs a SQL store every
            process can open.
        chunk_size: items read, claimed and handed to a worker process at a time (1–10000).
        retry: the waits between an item's runs (its ``max_attempts`` is ignored:
            ``1 + max_retries`` runs at most).
        max_cost: US dollars this run of the batch may spend (see
            :mod:`dspex.backends.pricing`); once its items have spent that much, running items
            are cancelled and the batch ends ``cancelled`` with stop reason ``max_cost``
            (resumable; a resumed run gets its own budget). Items finishing while it stops may
            take spending a little past it.
        cache: the response cache mode of every item's run (``off``, ``read_only``,
            ``read_write``), over the modules' and backends' own (``None``: theirs; see
            :mod:`dspex.resilience.cache`).
        cache_default: the mode of modules whose run, spec and backend name none (``None``:
            ``[cache] mode``); ``evaluate`` and ``optimize`` set ``read_write``.
        cluster: where the items run: ``None`` on this machine (in this process, or in
            ``workers`` processes), else on Ray (:mod:`dspex.batch.ray_actors`): ``"ray"`` (the
            ``[cluster] address`` of the settings, by default a Ray started for the run on
            this machine), ``"local"`` (the same), ``"auto"`` (the Ray cluster this machine
            belongs to, as ``ray start`` left it), ``"ray://HOST:10001"`` (Ray Client) or
            ``"HOST:PORT"`` (a cluster's head node). Needs the ``ray`` extra; more than one
            node needs PostgreSQL.
        ray_actors: Ray actors to spread the items over (default: ``[cluster] actors``, else
            the cluster's CPUs divided by ``ray_actor_cpus``, at most ``max_concurrency``).
        ray_actor_cpus: CPUs Ray reserves for each actor (default: ``[cluster] actor_cpus``).
        ray_actor_resources: custom Ray resources each actor needs (``{"lm_slots": 1}``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    max_concurrency: int = Field(32, ge=1, le=10_000)
    max_retries: int = Field(2, ge=0, le=100)
    continue_on_error: bool = True
    max_errors: int | None = Field(None, ge=0)
    item_timeout: float | None = Field(None, gt=0)
    deadline: float | None = Field(None, gt=0)
    validate_mode: Literal["upfront", "per_item"] = Field("upfront", alias="validate")
    workers: int = Field(1, ge=1, le=256)
    chunk_size: int = Field(200, ge=1, le=10_000)
    retry: RetryPolicy = ITEM_RETRY
    max_cost: float | None = Field(None, gt=0, allow_inf_nan=False)
    cache: CacheMode | None = None
    cache_default: CacheMode | None = None
    cluster: str | None = Field(None, min_length=1)
    ray_actors: int | None = Field(None, ge=1, le=10_000)
    ray_actor_cpus: float | None = Field(None, gt=0, le=1024, allow_inf_nan=False)
    ray_actor_resources: dict[str, float] | None = None

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str | None) -> str | None:
        if value is None or value in CLUSTER_NAMES or value.startswith("ray://"):
            return value
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit():
            return value
        raise ValueError(
            "expected 'ray', 'local', 'auto', 'ray://HOST:PORT' or 'HOST:PORT' (a Ray head node)"
        )

    @model_validator(mode="after")
    def _one_place(self) -> BatchOptions:
        if self.cluster is not None and self.workers > 1:
            raise ValueError(
                "workers are processes on this machine; on a cluster give ray_actors instead"
            )
        if self.cluster is None and (
            self.ray_actors is not None
            or self.ray_actor_cpus is not None
            or self.ray_actor_resources is not None
        ):
            raise ValueError("ray_actors, ray_actor_cpus and ray_actor_resources need a cluster")
        return self

    def on_cluster(self, cluster: ClusterDefaults) -> BatchOptions:
        """These options with the ``[cluster]`` settings filled in where they left a choice
        open: ``cluster`` (when ``kind = "ray"``; ``"ray"`` means ``address``), the number of
        actors, their CPUs and resources."""
        target = self.cluster
        if target is None and cluster.kind == "ray" and self.workers <= 1:
            target = "ray"
        if target is None:
            return self
        return self.model_copy(
            update={
                "cluster": cluster.address if target == "ray" else target,
                "ray_actors": self.ray_actors if self.ray_actors is not None else cluster.actors,
                "ray_actor_cpus": self.ray_actor_cpus or cluster.actor_cpus,
                "ray_actor_resources": self.ray_actor_resources
                if self.ray_actor_resources is not None
                else dict(cluster.actor_resources),
            }
        )

    @property
    def error_limit(self) -> int | None:
        """Failures allowed before the batch stops (``None``: no limit)."""
        if self.max_errors is not None:
            return self.max_errors
        return None if self.continue_on_error else 0

    @classmethod
    def of(cls, **values: Any) -> BatchOptions:
        """The options made of ``values``, as a user gives them: ``workers`` may also be
        ``"auto"`` (the CPU count) or a numeral, ``validate`` names ``validate_mode``.

        Raises:
            ValidationError: every bad option, by name.
        """
        if "workers" in values:
            values["workers"] = _workers(values["workers"])
        try:
            return cls(**values)
        except PydanticValidationError as exc:
            details = ErrorDetail.from_pydantic(exc, rename={"validate_mode": "validate"})
            raise ValidationError("invalid batch options:", details) from None


def _workers(workers: Any) -> Any:
    """``auto`` → the CPU count; a numeral → its number; anything else as it is."""
    if workers == "auto":
        return os.cpu_count() or 1
    if isinstance(workers, str):
        try:
            return int(workers)
        except ValueError:
            raise ValidationError(
                "invalid batch options:",
                [
                    ErrorDetail(
                        "workers", "invalid", f"expected a number or 'auto', got {workers!r}"
                    )
                ],
            ) from None
    return workers
