"""Group commit of lease changes: every ACK waits for the batch it joined to be durable.

A lease is durable before the client hears of it, and a burst of clients
costs one commit (one fsync) per batch, not one per client: while one batch
is being written, the next collects. A batch that fails to commit is retried
row by row, so one bad row (a value PostgreSQL refuses) costs that client its
answer, not everyone in the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from bootd.errors import BootdError
from bootd.logs import Throttle, kv
from bootd.model.records import LeaseRecord

log = logging.getLogger("bootd.dhcp")
LOG_INTERVAL = 60.0


class LeaseStore(Protocol):
    """What DHCP needs of the inventory (the repository satisfies it)."""

    async def put_leases(self, leases: Sequence[LeaseRecord]) -> None: ...

    async def list_leases(self) -> list[LeaseRecord]: ...


class LeaseWriter:
    """Group commit of lease changes; `then` runs once the batch holding its lease is durable.

    A write in progress is never cancelled (a transaction abandoned half-way
    would keep SQLite's write lock until the connection is collected): run()
    shields it, and flush() waits for it before writing what is left."""

    def __init__(self, repo: LeaseStore) -> None:
        self._repo = repo
        self._queue: list[tuple[LeaseRecord, Callable[[], object] | None]] = []
        self._wake = asyncio.Event()
        self._current: asyncio.Task[None] | None = None
        self.batches = 0
        self.failed = 0
        self._say = Throttle(LOG_INTERVAL, keys=8)

    def submit(self, record: LeaseRecord, then: Callable[[], object] | None) -> None:
        self._queue.append((record, then))
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._current = asyncio.ensure_future(self._write())
            await asyncio.shield(self._current)

    async def _write(self) -> None:
        batch, self._queue = self._queue, []
        if len(batch) > 1:
            try:
                await self._repo.put_leases([record for record, _ in batch])
            except BootdError:
                pass  # one bad row must not cost the whole batch its answers: row by row
            else:
                self._durable(batch)
                return
        for item in batch:
            await self._write_one(item)

    async def _write_one(self, item: tuple[LeaseRecord, Callable[[], object] | None]) -> None:
        record, _ = item
        try:
            await self._repo.put_leases([record])
        except BootdError as exc:
            # Not durable, so not promised: the client retransmits and is answered then.
            self.failed += 1
            if self._say(time.monotonic(), "lease-write"):
                log.error("lease write failed; reply withheld",
                          extra=kv(ip=str(record.ip), mac=record.mac, reason=str(exc), failed=self.failed))
            return
        self._durable([item])

    def _durable(self, batch: Sequence[tuple[LeaseRecord, Callable[[], object] | None]]) -> None:
        self.batches += 1
        for _, then in batch:
            if then is not None:
                then()

    async def flush(self) -> None:
        if self._current is not None and not self._current.done():
            await asyncio.wait([self._current])
        await self._write()


