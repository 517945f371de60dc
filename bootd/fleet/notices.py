"""One change feed across daemons: local changes out as NOTIFY, other daemons' in as feed events.

Several daemons on one PostgreSQL each have their own in-process change feed
(bootd/feed.py). This service subscribes to it and sends a notice for every
change published here (lifecycle moves, registrations) over LISTEN/NOTIFY
(bootd/db/notify.py); notices from other daemons are read back from the
database in batches (one query for every node named since the last batch) and
published on the local feed with `remote=True`, so this daemon's status page
stream, DNS zone and policy directory move at once instead of at their next
stamp poll. Remote events are never sent on again (no echo between daemons).

SQLite has one daemon per file: the service is not made there, and the CLI's
writes reach the daemon through the stamp polls as before. On PostgreSQL the
CLI sends its changes too (`sending`, used by bootd/backend.py). A lost connection
is retried every RETRY seconds; notices missed meanwhile are caught up by
those same polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Protocol

from bootd.config import Config
from bootd.db.notify import Notice, NoticeChannel
from bootd.errors import BootdError
from bootd.feed import ChangeFeed, NodeChanged
from bootd.logs import kv
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState
from bootd.service import Service

log = logging.getLogger("bootd.notices")
RETRY = 5.0
BATCH = 500  # nodes read per query when notices pile up
PENDING = 10_000  # notices kept to send while PostgreSQL is away; past it, the others' polls catch up


class Nodes(Protocol):
    async def nodes_named(self, names: Collection[str]) -> list[NodeRecord]: ...


def _gone(name: str) -> NodeRecord:
    """What a deleted node's subscribers need: its name (they drop it)."""
    epoch = datetime.fromtimestamp(0, UTC)
    return NodeRecord(name, NodeState.DISCOVERING, False, None, None, None, None, (), None,
                      epoch, epoch, epoch)


class ChangeNotices:
    name = "notices"

    def __init__(self, config: Config, nodes: Nodes, feed: ChangeFeed, *, listen: bool = True) -> None:
        self.config = config
        self._nodes, self._feed = nodes, feed
        self._channel = NoticeChannel(config.database_url, self._incoming if listen else None)
        self._out: list[Notice] = []
        self._in: dict[str, Notice] = {}
        self._wake = asyncio.Event()
        self._relaying = False
        self._unsubscribe = feed.subscribe(self._outgoing)
        self.sent = self.received = self.dropped = 0

    def _outgoing(self, change: NodeChanged) -> None:
        if self._relaying or change.remote:
            return
        if len(self._out) >= PENDING:
            self.dropped += 1
            return
        self._out.append(Notice(change.node.name, change.kind, change.old_name))
        self._wake.set()

    def _incoming(self, notice: Notice) -> None:
        previous = self._in.get(notice.name)
        if previous is not None and previous.old_name and not notice.old_name:
            notice = Notice(notice.name, notice.kind, previous.old_name)  # keep the rename's old name
        self._in[notice.name] = notice
        self.received += 1
        self._wake.set()

    async def start(self) -> None:
        try:
            await self._channel.connect()
        except BootdError as exc:  # not fatal: the stamp polls still see every change
            log.warning("change notices unavailable; retrying", extra=kv(reason=str(exc)))

    async def run(self) -> None:
        while True:
            if not self._channel.open:
                try:
                    await self._channel.connect()
                    log.info("change notices connected again")
                    if self._out:
                        self._wake.set()  # what could not be sent while away goes now
                except BootdError:
                    await asyncio.sleep(RETRY)
                    continue
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that
                # arrives as the wait completes (seen: a CLI's `sending` never ended).
                async with asyncio.timeout(RETRY):
                    await self._wake.wait()
            except TimeoutError:
                continue  # look at the connection again
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send what was published here; publish what other daemons sent."""
        out, self._out = self._out, []
        if out:
            try:
                await self._channel.send(out)
                self.sent += len(out)
            except BootdError as exc:
                # Kept (up to PENDING) and sent again once connected: a notice is lost only
                # past that bound, and then the other daemons' stamp polls still catch up.
                keep = out + self._out
                self.dropped += max(0, len(keep) - PENDING)
                self._out = keep[:PENDING]
                log.warning("change notices not sent; kept to send again", extra=kv(
                    reason=str(exc), count=len(out)))
                await self._channel.close()
        while self._in:
            batch = dict(list(self._in.items())[:BATCH])
            for name in batch:
                del self._in[name]
            try:
                found = {n.name: n for n in await self._nodes.nodes_named(batch)}
            except BootdError as exc:
                log.warning("cannot read changed nodes; the stamp polls catch up", extra=kv(reason=str(exc)))
                return
            self._relaying = True
            try:
                for name, notice in batch.items():
                    node = found.get(name)
                    self._feed.publish(NodeChanged(node or _gone(name), notice.kind if node else "deleted",
                                                   deleted=node is None, old_name=notice.old_name,
                                                   remote=True))
            finally:
                self._relaying = False

    async def stop(self) -> None:
        self._unsubscribe()
        try:
            await self.flush()  # our last changes still reach the others
        finally:
            await self._channel.close()

    def reconfigure(self, config: Config) -> None:
        self.config = config  # database_url needs a restart


@asynccontextmanager
async def sending(config: Config, nodes: Nodes, feed: ChangeFeed) -> AsyncIterator[None]:
    """For a process that is not a daemon (the CLI, bootd/backend.py) on PostgreSQL: its
    changes go out as notices too, so every daemon's status page and DNS follow a
    `bootd rollout start` or `bootd nodes allocate` at once (their polls lag up to a
    minute). Send only; the last notices are flushed on the way out."""
    if not config.database_url.startswith("postgresql"):
        yield
        return
    notices = ChangeNotices(config, nodes, feed, listen=False)
    await notices.start()
    task = asyncio.create_task(notices.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await notices.stop()


def change_notices(config: Config, nodes: Nodes, feed: ChangeFeed) -> list[Service]:
    """The service for the daemon (app.py) on PostgreSQL; none on SQLite."""
    return [ChangeNotices(config, nodes, feed)] if config.database_url.startswith("postgresql") else []
