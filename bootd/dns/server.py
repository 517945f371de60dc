"""The DNS service: UDP and TCP (RFC 7766) on the admin address and the
addresses of `server.interfaces`, port 53.

Transports are thin: bytes -> codec.parse_query -> decide.decide -> codec.pack.
Own names are answered synchronously in the datagram callback; dnslib's parse
and pack cost ~150-200 us a query, so packed UDP replies are kept by the query's
bytes after the id until the zone's serial changes (any node change bumps it);
an answer that read a lease is never kept, as leases change without a serial.
A forwarded
query is a task awaiting the upstream (bootd.dns.forward). A malformed query
is counted and dropped, logged once a minute per reason (never per sender's
text), so a flood costs little and leaves one line; a reply never goes out to
a packet that is itself a response (bounce loops).

TCP: each connection reads length-prefixed queries in order and answers them
in order (RFC 7766 6.2.1.1 allows either), idle connections close after
IDLE_SECONDS, at most MAX_CONNECTIONS at once (RFC 7766 6.2.2: a server
may close connections under load).

The zone is live: it loads every node at start and then follows the change
feed (a rename, a new address, a deletion answers at once). Writes by another
process (the CLI on the same database) reach it through the inventory's stamp,
polled every REFRESH_SECONDS like the policy's directory. Leases are asked of
the policy at query time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Collection
from ipaddress import IPv4Address
from typing import Protocol, cast

import netifaces
from dnslib import QTYPE, RCODE

from bootd.config import Config
from bootd.dns.codec import MAX_TCP, MalformedQuery, Query, Reply, fit, pack, parse_query
from bootd.dns.decide import Forward, decide
from bootd.dns.forward import Forwarder
from bootd.dns.zone import Host, Leases, Zone
from bootd.errors import BootdError
from bootd.feed import ChangeFeed, NodeChanged
from bootd.logs import Throttle, kv
from bootd.model.records import NodeRecord
from bootd.service import BindError

log = logging.getLogger("bootd.dns")
REFRESH_SECONDS = 2.0
FULL_RELOAD = 300.0
IDLE_SECONDS = 10.0
MAX_CONNECTIONS = 256
MAX_FORWARDING = 4096
CACHE_ENTRIES = 16384
# Only ordinary queries are cached: a padded 64 KiB one would make the cache cost
# its entry count times that (a real query is well under 512 bytes).
CACHE_KEY_MAX = 510


class Inventory(Protocol):
    """The node inventory as DNS needs it (bootd.db.repository.Repository implements it)."""

    async def list_nodes(self) -> list[NodeRecord]: ...

    async def inventory_stamp(self) -> int: ...

    async def changed_since(self, stamp: int) -> tuple[int, set[str] | None]: ...

    async def nodes_named(self, names: Collection[str]) -> list[NodeRecord]: ...


class _CountedLeases:
    """The policy's leases, counting reads: an answer that read none can be cached."""

    __slots__ = ("leases", "reads")

    def __init__(self, leases: Leases) -> None:
        self.leases, self.reads = leases, 0

    def lease_of(self, mac: str) -> IPv4Address | None:
        self.reads += 1
        return self.leases.lease_of(mac)

    def lease_holder(self, ip: IPv4Address) -> str | None:
        self.reads += 1
        return self.leases.lease_holder(ip)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, service: DnsService) -> None:
        self.service = service
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport is one by duck type, not by subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.service.datagram(data, addr, self.transport)


class DnsService:
    name = "dns"

    def __init__(self, config: Config, inventory: Inventory | None, leases: Leases,
                 feed: ChangeFeed | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._inventory = inventory
        self._leases = _CountedLeases(leases)
        self.zone = Zone(config, self._leases, serial=int(clock()))
        # Packed UDP replies by query bytes after the id, while the zone's serial holds;
        # only replies that read no lease (those change without a serial).
        self._cache: dict[bytes, tuple[bytes, tuple[str, str]]] = {}
        self._cache_serial = self.zone.serial
        upstreams = [(str(a), p) for a, p in config.dns.upstreams]
        self.forwarder = Forwarder(upstreams) if upstreams else None
        self._stamp = -1
        self._full_at = 0.0
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._say = Throttle(60.0, keys=64)
        self.queries: Counter[tuple[str, str]] = Counter()  # (qtype, rcode)
        self.drops: Counter[str] = Counter()
        self._unsubscribe = feed.subscribe(self._on_change) if feed is not None else None

    # -- the zone ----------------------------------------------------------------

    def _on_change(self, change: NodeChanged) -> None:
        if change.deleted:
            self.zone.remove(change.node.name)
        else:
            self.zone.put(Host.of(change.node), change.old_name)

    async def refresh(self) -> None:
        if self._inventory is None:
            return
        # Only the nodes with new events (bootd.db.repository.changed_since); all of
        # them at start or after a big batch.
        # them at start, after a big batch and every FULL_RELOAD seconds (a rename by
        # another process leaves the old name behind until then).
        full = self._stamp < 0 or time.monotonic() - self._full_at > FULL_RELOAD
        stamp, names = (await self._inventory.inventory_stamp(), None) if full else \
            await self._inventory.changed_since(self._stamp)
        if names is None:
            self.zone.load(Host.of(n) for n in await self._inventory.list_nodes())
            self._full_at = time.monotonic()
        elif names:
            fresh = {n.name: n for n in await self._inventory.nodes_named(names)}
            for name in names - fresh.keys():
                self.zone.remove(name)
            for node in fresh.values():
                self.zone.put(Host.of(node))
        self._stamp = stamp

    # -- the service -------------------------------------------------------------

    def addresses(self) -> list[str]:
        out = {str(self.config.admin_address)}
        for interface in self.config.interfaces:
            with contextlib.suppress(ValueError):
                out.update(e["addr"] for e in netifaces.ifaddresses(interface).get(netifaces.AF_INET, []))
        return sorted(out)

    async def start(self) -> None:
        await self.refresh()
        loop = asyncio.get_running_loop()
        port = self.config.dns.port
        addresses = self.addresses()
        for address in addresses:
            try:
                udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(address, port))
                self._udp.append(udp)
                self._tcp.append(await asyncio.start_server(self._connection, address, port,
                                                            reuse_address=True))
            except OSError as exc:
                raise BindError(f"DNS cannot listen on {address}:{port}: "
                                f"{os.strerror(exc.errno) if exc.errno else exc}") from None
        if self.forwarder is not None:
            await self.forwarder.start()
        log.info("listening", extra=kv(addresses=",".join(addresses), port=port,
                                       domains=",".join(self.zone.domains) or "-",
                                       upstreams=",".join(f"{a}:{p}" for a, p in self.config.dns.upstreams)
                                       or "-"))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except BootdError as exc:  # a database hiccup must not stop DNS
                log.warning("cannot refresh the zone", extra=kv(reason=str(exc)))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for udp in self._udp:
            udp.close()
        for server in self._tcp:
            server.close()
        for task in (*self._connections, *self._tasks):
            task.cancel()
        await asyncio.gather(*self._connections, *self._tasks, return_exceptions=True)
        if self.forwarder is not None:
            self.forwarder.close()
        log.info("stopped", extra=kv(queries=sum(self.queries.values()), dropped=sum(self.drops.values())))

    def reconfigure(self, config: Config) -> None:
        # Subnets, domains and TTL take effect at once; the zone keeps its nodes.
        zone = Zone(config, self._leases, serial=self.zone.serial)
        zone.load(self.zone.hosts())  # a new serial: cached replies go
        self.config, self.zone = config, zone

    # -- one query -----------------------------------------------------------------

    def answer(self, raw: bytes) -> tuple[Query, Reply | Forward] | None:
        """Parse and decide; None: dropped (counted, logged once a minute per reason)."""
        try:
            query = parse_query(raw)
        except MalformedQuery as exc:
            self._drop(exc.reason)
            return None
        forwarding = self.forwarder is not None
        return query, decide(query, self.zone, forwarding=forwarding, ttl=self.config.dns.ttl)

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1
        if self._say(time.monotonic(), reason):
            log.warning("query dropped", extra=kv(reason=reason, count=self.drops[reason]))

    def _count(self, query: Query, rcode: int) -> tuple[str, str]:
        # Unknown types count as "other": the label set stays fixed whatever senders choose.
        qtype = QTYPE.get(query.qtype, "other") if query.question is not None else "-"
        key = (str(qtype), str(RCODE.get(rcode, str(rcode))))
        self.queries[key] += 1
        return key

    def datagram(self, data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        if self._cache_serial != self.zone.serial:
            self._cache.clear()
            self._cache_serial = self.zone.serial
        key = data[2:]
        hit = self._cache.get(key)
        if hit is not None:
            self.queries[hit[1]] += 1
            transport.sendto(data[:2] + hit[0], addr)
            return
        reads = self._leases.reads
        decided = self.answer(data)
        if decided is None:
            return
        query, outcome = decided
        if isinstance(outcome, Reply):
            counted = self._count(query, outcome.rcode)
            out = pack(outcome, query.udp_limit)
            if reads == self._leases.reads and len(key) <= CACHE_KEY_MAX:
                if len(self._cache) >= CACHE_ENTRIES:
                    self._cache.clear()
                self._cache[key] = (out[2:], counted)
            transport.sendto(out, addr)
            return
        if len(self._tasks) >= MAX_FORWARDING:
            self._count(query, RCODE.SERVFAIL)
            transport.sendto(pack(Reply(query, RCODE.SERVFAIL, recursion=True), query.udp_limit), addr)
            return
        task = asyncio.get_running_loop().create_task(self._forward_udp(query, addr, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forwarded(self, query: Query, limit: int, *, tcp: bool) -> bytes:
        assert self.forwarder is not None
        raw = await self.forwarder.ask(query, tcp=tcp)
        if raw is None:
            self._count(query, RCODE.SERVFAIL)
            return pack(Reply(query, RCODE.SERVFAIL, recursion=True), limit)
        self._count(query, raw[3] & 0xF)
        return fit(raw, query, limit)

    async def _forward_udp(self, query: Query, addr: tuple[str, int],
                           transport: asyncio.DatagramTransport) -> None:
        data = await self._forwarded(query, query.udp_limit, tcp=False)
        if not transport.is_closing():
            transport.sendto(data, addr)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= MAX_CONNECTIONS:
            self._drop("tcp-busy")
            writer.close()
            return
        self._connections.add(task)
        try:
            while True:
                async with asyncio.timeout(IDLE_SECONDS):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                decided = self.answer(data)
                if decided is None:
                    break  # RFC 7766 8: a server may close on a malformed message
                query, outcome = decided
                if isinstance(outcome, Reply):
                    self._count(query, outcome.rcode)
                    out = pack(outcome, MAX_TCP)
                else:
                    out = await self._forwarded(query, MAX_TCP, tcp=True)
                writer.write(len(out).to_bytes(2, "big") + out)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
