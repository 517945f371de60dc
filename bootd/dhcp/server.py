"""The DHCP service: sockets -> parse -> decide -> persist -> send.

Leases live in memory (LeaseTable, loaded from the database at start) and are
written through a group commit: every ACK (and DECLINE, RELEASE) waits for the
batch it joined to be committed, then goes out. So a lease is durable before
the client hears of it, and a burst of clients costs one fsync per batch, not
one per client.

Conflict checks keep a stock of probed-free addresses per dynamic pool,
refilled in the background (probe.py); an exhausted stock wakes the refill,
and the client's retransmission finds an address a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

import netifaces

from bootd.config import Config, DhcpMode, Subnet
from bootd.db.repository import Repository
from bootd.dhcp.decide import PXE_PORT, SERVER_PORT, Decider, Ingress
from bootd.dhcp.leases import LeaseTable
from bootd.dhcp.options import MalformedPacket
from bootd.dhcp.packet import parse
from bootd.dhcp.probe import ArpProber, IcmpProber
from bootd.dhcp.transport import Datagram, DhcpSocket
from bootd.errors import BootdError
from bootd.logs import Throttle, kv
from bootd.model.records import LeaseRecord, LeaseState
from bootd.policy import Policy

log = logging.getLogger("bootd.dhcp")
DROP_LOG_INTERVAL = 60.0  # one log line per reason and source per minute; all are counted
STOCK_LOW, PROBE_BATCH = 64, 128
REFILL_IDLE = 1.0
CONFLICT_QUARANTINE = 600.0


class LeaseWriter:
    """Group commit of lease changes; `then` runs once the batch holding its lease is durable.

    A write in progress is never cancelled (a transaction abandoned half-way
    would keep SQLite's write lock until the connection is collected): run()
    shields it, and flush() waits for it before writing what is left."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._queue: list[tuple[LeaseRecord, Callable[[], object] | None]] = []
        self._wake = asyncio.Event()
        self._current: asyncio.Task[None] | None = None
        self.batches = 0

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
        if not batch:
            return
        try:
            await self._repo.put_leases([record for record, _ in batch])
        except BootdError as exc:
            # Not durable, so not promised: the clients retransmit and are answered then.
            log.error("lease write failed; replies withheld", extra=kv(leases=len(batch), reason=str(exc)))
            return
        self.batches += 1
        for _, then in batch:
            if then is not None:
                then()

    async def flush(self) -> None:
        if self._current is not None and not self._current.done():
            await asyncio.wait([self._current])
        await self._write()


@dataclass
class _Stock:
    """Probed-free addresses of one dynamic pool, and how to probe more."""

    subnet: Subnet
    prober: ArpProber | IcmpProber
    free: set[int] = field(default_factory=set)
    conflicts: dict[int, float] = field(default_factory=dict)  # address -> until


class DhcpService:
    name = "dhcp"

    def __init__(self, config: Config, repo: Repository, policy: Policy,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._repo = repo
        self._policy = policy
        self._clock = clock
        self.table = LeaseTable()
        self.decider = Decider(config, policy, self.table)
        self.writer = LeaseWriter(repo)
        self.counters: Counter[str] = Counter()
        self._sockets: list[DhcpSocket] = []
        self._ingress: dict[tuple[str, int], Ingress] = {}
        self._stocks: list[_Stock] = []
        self._refill = asyncio.Event()
        self._log_drop = Throttle(DROP_LOG_INTERVAL)

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        records = await self._repo.list_leases()
        self.table.load(records)
        for record in records:
            if record.state is LeaseState.BOUND:
                self._policy.leased(record.mac, record.ip)
        ports = (SERVER_PORT, PXE_PORT) if self.config.dhcp.mode is DhcpMode.PROXY else (SERVER_PORT,)
        for interface in self.config.interfaces:
            addresses = _ipv4_interfaces(interface)
            on_link = tuple(s for s in self.config.subnets if any(a.ip in s.cidr for a in addresses))
            server_ip = self.config.admin_address if any(
                a.ip == self.config.admin_address for a in addresses) else (
                addresses[0].ip if addresses else self.config.admin_address)
            for port in ports:
                self._ingress[(interface, port)] = Ingress(interface, server_ip, on_link, port)
                sock = DhcpSocket(interface, port, self._on_datagram)
                sock.open()
                self._sockets.append(sock)
            if self.config.dhcp.conflict_check and self.config.dhcp.mode is DhcpMode.SERVER:
                mac = _mac(interface)
                for subnet in on_link:
                    if subnet.dynamic_pool is not None and mac is not None:
                        self._stocks.append(_Stock(subnet, ArpProber(interface, mac)))
        if self.config.dhcp.conflict_check and self.config.dhcp.mode is DhcpMode.SERVER:
            linked = {id(s.subnet) for s in self._stocks}
            for subnet in self.config.subnets:  # reached through relays: ICMP
                if subnet.dynamic_pool is not None and id(subnet) not in linked:
                    self._stocks.append(_Stock(subnet, IcmpProber()))
            self.decider.usable = self._usable
        log.info("listening", extra=kv(mode=self.config.dhcp.mode.value,
                                       interfaces=",".join(self.config.interfaces),
                                       leases=len(self.table.by_ip)))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.writer.run())
            if self._stocks:
                group.create_task(self._keep_stock())

    async def stop(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        await self.writer.flush()  # whatever was decided is kept
        log.info("stopped", extra=kv(**{k: v for k, v in sorted(self.counters.items())}))

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.decider.reconfigure(config)

    # -- packets ----------------------------------------------------------------

    def _on_datagram(self, sock: DhcpSocket, dgram: Datagram) -> None:
        self.counters["received"] += 1
        ingress = self._ingress[(sock.interface, sock.port)]
        if sock.port == PXE_PORT:
            ingress = Ingress(ingress.interface, ingress.server_ip, ingress.subnets, PXE_PORT, dgram.source)
        try:
            packet = parse(dgram.data)
        except MalformedPacket as exc:
            self._dropped("malformed", str(exc), dgram.source, sock.interface)
            return
        outcome = self.decider.handle(packet, ingress, self._clock())
        if outcome.dropped:
            self._dropped("unexpected", outcome.note, dgram.source, sock.interface, packet.mac)
            return
        if outcome.client is not None and outcome.client.booting:
            self._policy.booted(outcome.client, outcome.location)
        if outcome.persist is not None and outcome.persist.state is LeaseState.BOUND:
            self._policy.leased(outcome.persist.mac, IPv4Address(outcome.persist.ip))
        if outcome.extra.get("exhausted"):
            self._refill.set()
        reply = outcome.reply
        level = logging.DEBUG if outcome.note in ("offer", "proxy offer") or outcome.note.startswith(
            "ack") else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, outcome.note, extra=kv(mac=packet.mac, xid=f"{packet.xid:08x}",
                                                  interface=sock.interface, relay=_relay(packet.giaddr)))
        if reply is None:
            if outcome.persist is not None:
                self.writer.submit(outcome.persist.record(), None)
            self.counters["silent"] += 1
            return
        data = reply.encode()
        kind = outcome.note.split(" ")[0].rstrip(":")
        if outcome.persist is not None:
            self.writer.submit(outcome.persist.record(), lambda: self._send(sock, data, reply.ip,
                                                                            reply.port, kind))
        else:
            self._send(sock, data, reply.ip, reply.port, kind)

    def _send(self, sock: DhcpSocket, data: bytes, ip: IPv4Address, port: int, kind: str) -> None:
        if sock.send(data, ip, port):
            self.counters[kind] += 1
        else:
            self.counters["send_errors"] += 1

    def _dropped(self, what: str, reason: str, source: tuple[str, int], interface: str,
                 mac: str | None = None) -> None:
        self.counters[what] += 1
        if self._log_drop(time.monotonic(), reason, source[0]):
            log.warning(f"dropped {what} packet", extra=kv(reason=reason, source=f"{source[0]}:{source[1]}",
                                                            interface=interface, mac=mac))

    # -- conflict checks --------------------------------------------------------------

    def _usable(self, ip: int) -> bool:
        for stock in self._stocks:
            pool = stock.subnet.dynamic_pool
            if pool is not None and int(pool.first) <= ip <= int(pool.last):
                if ip in stock.free:
                    stock.free.discard(ip)
                    if len(stock.free) < STOCK_LOW:
                        self._refill.set()
                    return True
                return False
        return True

    async def _keep_stock(self) -> None:
        while True:
            for stock in self._stocks:
                await self._top_up(stock)
            self._refill.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refill.wait(), REFILL_IDLE)

    async def _top_up(self, stock: _Stock) -> None:
        pool = stock.subnet.dynamic_pool
        if pool is None or len(stock.free) >= STOCK_LOW:
            return
        now = self._clock()
        for ip, until in list(stock.conflicts.items()):
            if until <= now:
                del stock.conflicts[ip]
        candidates = self.table.unused(pool, lambda ip: ip in stock.free or ip in stock.conflicts,
                                       PROBE_BATCH)
        if not candidates:
            return
        try:
            taken = await stock.prober.probe(candidates)
        except OSError as exc:
            log.error("conflict check failed; offering without it", extra=kv(
                subnet=str(stock.subnet.cidr), reason=exc.strerror))
            self._stocks.remove(stock)
            return
        for ip in taken:
            stock.conflicts[ip] = now + CONFLICT_QUARANTINE
            log.warning("address in use by a host we did not give it to; skipped",
                        extra=kv(ip=str(IPv4Address(ip)), subnet=str(stock.subnet.cidr)))
        stock.free.update(ip for ip in candidates if ip not in taken)


def _relay(giaddr: IPv4Address) -> str | None:
    return None if int(giaddr) == 0 else str(giaddr)


def _ipv4_interfaces(interface: str) -> list[IPv4Interface]:
    try:
        entries = netifaces.ifaddresses(interface).get(netifaces.AF_INET, [])
    except ValueError:
        return []
    return [IPv4Interface(f"{e['addr']}/{e['netmask']}") for e in entries if "netmask" in e]


def _mac(interface: str) -> bytes | None:
    try:
        links = netifaces.ifaddresses(interface).get(netifaces.AF_LINK, [])
    except ValueError:
        return None
    text = links[0].get("addr", "") if links else ""
    return bytes.fromhex(text.replace(":", "")) if len(text) == 17 else None
