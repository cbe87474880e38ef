"""The driver of a batch: the one process running it, under a lease in the store.

A run of a batch takes the batch's driver lease before its items run and renews it every
``lease / 3`` seconds until the run ends, when it releases it. Two things hang on that lease:

- **cancel from anywhere**: another process (a service replica, ``dspex batches cancel``) records
  a cancel request on the batch (:meth:`~dspex.store.Store.request_batch_cancel`); the driver
  sees it when it renews the lease and cancels its run, which records its running items
  ``cancelled`` and leaves the batch ``cancelled``, resumable. No polling beyond the renewal.
- **take-over**: a driver that dies stops renewing; once its lease has expired the batch is
  :meth:`~dspex.records.BatchRecord.driver_lapsed`, and a process that finds it (a service
  replica's periodic check) takes the lease with one conditional write, so exactly one of them
  resumes it. The dead driver's item leases expire with it, so its running items are claimed
  again and nothing is lost; a write under a lost item lease is refused, so no item completes
  twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from dspex._periodic import Periodic
from dspex.errors import StorageError

if TYPE_CHECKING:
    from dspex.store.base import Store

__all__ = ["BatchDriver"]

log = logging.getLogger("dspex.batch")


class BatchDriver:
    """Holds a batch's driver lease while one run of it goes on.

    Args:
        store: the store holding the batch.
        batch_id: the batch.
        driver: who drives it (unique to this run).
        lease_seconds: how long the lease lasts without a renewal.
    """

    def __init__(self, store: Store, batch_id: str, driver: str, lease_seconds: float) -> None:
        self.store = store
        self.batch_id = batch_id
        self.driver = driver
        self.lease_seconds = lease_seconds
        self.cancel_requested = False
        self._work: asyncio.Future[Any] | None = None
        self._renewal: Periodic | None = None

    async def start(self) -> None:
        """Take the lease (whoever held it: running or resuming a batch is the caller's
        decision) and start renewing it."""
        await self.store.take_batch_driver(self.batch_id, self.driver, self.lease_seconds)
        self._renewal = Periodic(
            self._renew, self.lease_seconds / 3.0, f"batch-driver-{self.batch_id}"
        )
        self._renewal.start()

    def watch(self, work: asyncio.Future[Any]) -> None:
        """Cancel ``work`` when a cancel of the batch is requested from elsewhere."""
        self._work = work
        if self.cancel_requested:
            work.cancel()

    async def _renew(self) -> bool:
        """One renewal; ``False`` once the batch is driven by someone else (stop renewing)."""
        try:
            record = await self.store.renew_batch_driver(
                self.batch_id, self.driver, self.lease_seconds
            )
        except StorageError as exc:
            log.warning("renewing the lease of batch %s failed: %s", self.batch_id, exc)
            return True
        if record.driver != self.driver:
            # Taken over after this lease lapsed (the store was out of reach for longer
            # than a lease): the item leases went with it, so this run's writes are refused.
            log.warning("batch %s is driven by %s now", self.batch_id, record.driver)
            return False
        if record.cancel_requested and not self.cancel_requested:
            log.info("batch %s: a cancel was requested; cancelling its run", self.batch_id)
            self.cancel_requested = True
            if self._work is not None:
                self._work.cancel()
        return True

    async def stop(self) -> None:
        """Stop renewing (a renewal in flight finishes first) and release the lease (the run
        ended)."""
        if self._renewal is not None:
            await self._renewal.stop()
        try:
            await self.store.release_batch_driver(self.batch_id, self.driver)
        except StorageError as exc:  # the lease expires by itself
            log.warning("releasing the lease of batch %s failed: %s", self.batch_id, exc)
