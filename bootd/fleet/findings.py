"""Rogue DHCP findings: record, warn, count, publish (the application side).

The DHCP edge (bootd.dhcp.rogue_transport) calls `sighted` for every foreign
OFFER/ACK, on the event loop, possibly hundreds of times a second when a rogue
server answers a booting rack. So `sighted` only merges the sighting into a
pending entry per server (interface, address, MAC) and returns; `run` writes
the pending entries in one transaction at once for a server not seen before,
else every FLUSH seconds (count += n, last_seen), then publishes each written
finding on the change feed (the status page's banner follows it).

Other bootd daemons sharing the database (several admin nodes, each serving
its own subnets, ARCHITECTURE) are peers, not rogues: their admin addresses,
read from their subnet claims at start and every PEERS_EVERY seconds, are
counted (`peer_answers`) and never reported.

The log gets one WARNING the first time this daemon run sees a server, then at
most one line per server per REWARN seconds while it keeps answering: never a
line per packet. At most MAX_SERVERS servers are tracked; a flood of forged
server identities beyond that is counted (`overflow`) and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address
from typing import Protocol

from bootd.config import Config
from bootd.db.findings import FindingUpdate
from bootd.db.store import utcnow
from bootd.errors import BootdError
from bootd.feed import ChangeFeed, DhcpServerSeen
from bootd.logs import kv
from bootd.model.findings import FindingRecord, Sighting

log = logging.getLogger("bootd.rogue")
FLUSH = 5.0          # seconds between writes of repeat sightings
REWARN = 3600.0      # a server still answering is warned about again this often at most
MAX_SERVERS = 256
PEERS_EVERY = 60.0   # seconds between reads of the peer daemons' addresses
RECENT = timedelta(hours=24)  # a finding counts as current (gauge, banner) this long after last seen
Key = tuple[str, IPv4Address, str]


class FindingStore(Protocol):
    """bootd.db.findings.FindingRows satisfies it."""

    async def record(self, daemon: str, updates: Sequence[FindingUpdate]) -> list[FindingRecord]: ...

    async def list_findings(self, daemon: str | None = None) -> list[FindingRecord]: ...

    async def peer_addresses(self, daemon: str) -> set[IPv4Address]: ...


@dataclass
class _Pending:
    sighting: Sighting
    count: int
    first: datetime
    last: datetime


def _key(s: Sighting | FindingRecord) -> Key:
    return (s.interface, s.server_ip, s.server_mac)


class Findings:
    """The reporter the DHCP edge calls, and a service (its flush loop)."""

    name = "rogue-findings"

    def __init__(self, config: Config, rows: FindingStore, feed: ChangeFeed | None = None, *,
                 clock: Callable[[], datetime] = utcnow,
                 monotonic: Callable[[], float] = time.monotonic, limit: int = MAX_SERVERS) -> None:
        self.config = config
        self._limit = limit
        self._rows, self._feed = rows, feed
        self._clock, self._monotonic = clock, monotonic
        self._known: dict[Key, FindingRecord] = {}
        self._pending: dict[Key, _Pending] = {}
        self._warned: dict[Key, float] = {}
        self._peers: frozenset[IPv4Address] = frozenset()
        self._peers_read = float("-inf")
        self._wake = asyncio.Event()
        self.answers = 0     # foreign replies reported by the edge
        self.overflow = 0    # sightings of servers beyond MAX_SERVERS, dropped
        self.peer_answers = 0  # replies of peer daemons (not reported)

    # -- the reporter (bootd.dhcp.rogue_transport.Reporter) ---------------------------------

    def sighted(self, sighting: Sighting) -> None:
        if sighting.server_ip in self._peers:
            self.peer_answers += 1
            return
        self.answers += 1
        key, now = _key(sighting), self._clock()
        pending = self._pending.get(key)
        if pending is None:
            if key not in self._known and len(self._known) + len(self._pending) >= self._limit:
                self.overflow += 1
                if self.overflow == 1:
                    log.warning("too many DHCP servers seen; further ones are counted, not recorded",
                                extra=kv(limit=self._limit))
                return
            pending = self._pending[key] = _Pending(sighting, 0, now, now)
        pending.sighting, pending.last = sighting, now
        pending.count += 1
        self._warn(key, sighting)

    def _warn(self, key: Key, s: Sighting) -> None:
        at, last = self._monotonic(), self._warned.get(key)
        if last is not None and at - last < REWARN:
            return
        self._warned[key] = at
        known = self._known.get(key)
        fields: dict[str, object] = {"interface": s.interface, "server": str(s.server_ip),
                                     "mac": s.server_mac or "-", "offered": s.offered.summary(),
                                     "method": s.method.value}
        if last is None:
            if known is not None:
                fields["first_seen"] = known.first_seen.isoformat(timespec="seconds")
            log.warning("another DHCP server answers on an admin interface", extra=kv(**fields))
            self._wake.set()  # recorded and on the status page now, not at the next flush
        else:
            log.warning("another DHCP server still answers", extra=kv(**fields))

    # -- reads ----------------------------------------------------------------------------------

    def current(self) -> list[FindingRecord]:
        """This daemon's findings seen in the last RECENT, most recent first."""
        since = self._clock() - RECENT
        return sorted((f for f in self._known.values() if f.last_seen >= since),
                      key=lambda f: f.last_seen, reverse=True)

    def servers(self) -> int:
        return len(self.current())

    async def all(self) -> list[FindingRecord]:
        """Every daemon's findings, from the database."""
        return await self._rows.list_findings()

    # -- the service ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._read_peers()
        try:
            rows = await self._rows.list_findings(self.config.daemon_id)
        except BootdError as exc:
            log.warning("cannot read earlier DHCP findings", extra=kv(reason=str(exc)))
            rows = []
        for record in rows[: self._limit]:
            self._known[_key(record)] = record
        if self._feed is not None:
            for record in self.current():  # the status page shows what is still current
                self._feed.publish_finding(DhcpServerSeen(record, new=False))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH)
            self._wake.clear()
            await self.flush()
            if self._monotonic() - self._peers_read >= PEERS_EVERY:
                await self._read_peers()

    async def _read_peers(self) -> None:
        self._peers_read = self._monotonic()
        try:
            self._peers = frozenset(await self._rows.peer_addresses(self.config.daemon_id))
        except BootdError as exc:
            log.warning("cannot read the peer daemons' addresses", extra=kv(reason=str(exc)))

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), 5.0)
        except TimeoutError:
            log.warning("DHCP findings not written at shutdown", extra=kv(servers=len(self._pending)))

    def reconfigure(self, config: Config) -> None:
        self.config = config

    async def flush(self) -> None:
        """Write what is pending in one transaction and publish it."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        updates = [FindingUpdate(p.sighting.interface, p.sighting.server_ip, p.sighting.server_mac,
                                 p.sighting.method, p.sighting.offered.summary(), p.count, p.first, p.last)
                   for p in batch.values()]
        try:
            records = await self._rows.record(self.config.daemon_id, updates)
        except BootdError as exc:
            log.warning("DHCP findings not recorded; retrying", extra=kv(reason=str(exc)))
            for key, p in batch.items():  # merged back: counted once they are written
                mine = self._pending.setdefault(key, p)
                if mine is not p:
                    mine.count, mine.first = mine.count + p.count, p.first
            return
        for record in records:
            key = _key(record)
            new = key not in self._known
            self._known[key] = record
            if self._feed is not None:
                self._feed.publish_finding(DhcpServerSeen(record, new))
