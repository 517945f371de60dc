"""The status page's view of the fleet: a snapshot kept by the change feed, and its streams.

Reading 10,000 nodes from the database for every page view would cost more
than the page's whole budget, so the hub keeps the node records in memory:
loaded once, then kept current by the change feed (bootd/feed.py: the
lifecycle service publishes every committed change). Changes the feed never
sees (the CLI writing the database from another process, BMC power readings)
arrive by a reload in the background, while someone is looking: when the
inventory's stamp (the newest event id: one cheap query) moved and the
snapshot is older than REFRESH, or in any case after FULL_REFRESH. A reload of
10,000 nodes costs about a second of the event loop, so it is never per view;
a page is never held up by one after the first load (started at app startup).

Each open event stream (`/events`) is a Stream: the names of the nodes that
changed since its last message, bounded (past MAX_PENDING the client is told
to reload instead), and two events. The handler sends at most one message per
BATCH seconds carrying every node that changed, so a rack of machines moving
at once is one message, not one per node. `shutdown` (app.on_shutdown) stops
every stream at once: an open stream would otherwise hold aiohttp's cleanup
for twice its shutdown timeout (LAB-NOTES).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from bootd.errors import BootdError
from bootd.feed import NodeChanged
from bootd.http.statusview import LastEvent
from bootd.logs import kv
from bootd.model.records import NodeRecord

log = logging.getLogger("bootd.http.status")
REFRESH = 60.0
FULL_REFRESH = 600.0
BATCH = 0.5
MAX_PENDING = 1000
LOAD_WAIT = 5.0  # at shutdown, for a snapshot load in flight
Loader = Callable[[], Awaitable[list[NodeRecord]]]
Stamp = Callable[[], Awaitable[int]]


@runtime_checkable
class Stamped(Protocol):
    """An inventory that can say cheaply whether anything changed (the repository)."""

    async def inventory_stamp(self) -> int: ...


class Stream:
    """One open /events response: what changed since its last message."""

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.overflow = False
        self.wake = asyncio.Event()
        self.stopped = False
        self._stop = asyncio.Event()

    def touch(self, name: str) -> None:
        if self.overflow:
            return
        self.pending.add(name)
        if len(self.pending) > MAX_PENDING:
            self.overflow, self.pending = True, set()
        self.wake.set()

    def take(self) -> tuple[set[str], bool]:
        """The changed names and whether the client must reload; resets both."""
        names, overflow = self.pending, self.overflow
        self.pending, self.overflow = set(), False
        self.wake.clear()
        return names, overflow

    async def wait(self, seconds: float) -> None:
        """Until something changed or the stream stops; TimeoutError after `seconds`."""
        await asyncio.wait_for(self.wake.wait(), seconds)

    def stop(self) -> None:
        self.stopped = True
        self._stop.set()
        self.wake.set()

    async def pause(self, seconds: float) -> None:
        """Sleep between batches; a stop ends the sleep at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


class StatusHub:
    def __init__(self, load: Loader, *, stamp: Stamp | None = None, refresh: float = REFRESH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load, self._stamp, self._refresh, self._clock = load, stamp, refresh, clock
        self._seen_stamp: int | None = None
        self._nodes: dict[str, NodeRecord] = {}
        self._last: dict[str, LastEvent] = {}
        self._loaded_at: float | None = None
        self._touched: set[str] | None = None  # names the feed changed while a load runs
        self._loading: asyncio.Task[None] | None = None
        self._streams: set[Stream] = set()

    # -- the snapshot -----------------------------------------------------------------

    def on_change(self, change: NodeChanged) -> None:
        """The feed's subscriber: quick, never raises."""
        node = change.node
        names = [node.name] + ([change.old_name] if change.old_name else [])
        for name in names[1:]:
            self._nodes.pop(name, None)
            self._last.pop(name, None)
        if change.deleted:
            self._nodes.pop(node.name, None)
            self._last.pop(node.name, None)
        else:
            self._nodes[node.name] = node
            self._last[node.name] = LastEvent(change.kind, node.updated_at)
        if self._touched is not None:
            self._touched.update(names)
        for stream in self._streams:
            for name in names:
                stream.touch(name)

    def node(self, name: str) -> NodeRecord | None:
        return self._nodes.get(name)

    def snapshot(self) -> list[NodeRecord]:
        return list(self._nodes.values())

    def last(self) -> dict[str, LastEvent]:
        return self._last

    def preload(self) -> None:
        """Start the first load now (app startup), so the first page view finds it done."""
        if self._loading is None and self._loaded_at is None:
            self._loading = asyncio.create_task(self._background_reload())

    async def nodes(self) -> list[NodeRecord]:
        """Every node; the first call waits for the load, later ones never do."""
        if self._loaded_at is None and self._loading is not None:
            await asyncio.shield(self._loading)
        if self._loaded_at is None:
            await self._reload()
        elif self._clock() - self._loaded_at >= self._refresh and self._loading is None:
            self._loading = asyncio.create_task(self._background_reload(check=True))
        return list(self._nodes.values())

    async def _background_reload(self, *, check: bool = False) -> None:
        try:
            if check and self._stamp is not None and self._loaded_at is not None:
                stamp = await self._stamp()
                if stamp == self._seen_stamp and self._clock() - self._loaded_at < FULL_REFRESH:
                    self._loaded_at = self._clock()  # unchanged: look again in REFRESH
                    return
            await self._reload()
        except BootdError as exc:  # the database away: keep showing what we have
            log.warning("status snapshot reload failed", extra=kv(reason=str(exc)))
        finally:
            self._loading = None

    async def _reload(self) -> None:
        started = self._clock()
        self._touched = set()
        try:
            stamp = await self._stamp() if self._stamp is not None else None
            loaded = {n.name: n for n in await self._load()}
        finally:
            touched, self._touched = self._touched, None
        for name in touched:  # the feed's word is newer than the read
            if name in self._nodes:
                loaded[name] = self._nodes[name]
            else:
                loaded.pop(name, None)
        changed = {n for n, rec in loaded.items() if self._nodes.get(n) != rec}
        changed |= self._nodes.keys() - loaded.keys()
        first = self._loaded_at is None
        self._nodes, self._loaded_at, self._seen_stamp = loaded, started, stamp
        self._last = {n: e for n, e in self._last.items() if n in loaded}
        if not first:
            for stream in self._streams:
                for name in changed:
                    stream.touch(name)

    # -- streams -------------------------------------------------------------------------

    def open(self) -> Stream:
        stream = Stream()
        self._streams.add(stream)
        return stream

    def close(self, stream: Stream) -> None:
        self._streams.discard(stream)

    @property
    def streams(self) -> int:
        return len(self._streams)

    async def shutdown(self) -> None:
        """Ends every stream at once; lets a load in flight finish (bounded) rather than
        cancel it inside a database call, so the engine can be disposed after."""
        for stream in list(self._streams):
            stream.stop()
        if self._loading is not None:
            _, pending = await asyncio.wait({self._loading}, timeout=LOAD_WAIT)
            for task in pending:
                task.cancel()


def utc_now() -> datetime:
    return datetime.now(UTC)
