"""The DHCP service: sockets -> parse -> decide -> persist -> send.

Leases live in memory (LeaseTable, loaded from the database at start) and are
written through a group commit (writer.py): every ACK (and DECLINE, RELEASE)
waits for the batch it joined to be committed, then goes out. So a lease is
durable before the client hears of it.

Received datagrams go into a bounded backlog (backlog.py) and are answered
from it in batches, REQUESTs before DISCOVERs, stale DISCOVERs shed: under
more load than one core can answer, bootd keeps completing exchanges at its
peak rate instead of answering everything too late. Between batches the loop
runs the socket readers (which drain every ready datagram) and the writer.

Conflict checks keep a stock of probed-free addresses per dynamic pool,
refilled in the background (probe.py); the decision reads the stock as data
and says which address it used (an effect applied here); an exhausted stock
wakes the refill, and the client's retransmission finds an address a moment
later.

Log lines: per verdict or drop reason (a fixed set), at most one a minute
each; every packet is counted.
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
from bootd.dhcp.backlog import Backlog, Shed
from bootd.dhcp.decide import Decider, Ingress
from bootd.dhcp.leases import LeaseTable
from bootd.dhcp.options import MalformedPacket, MessageType
from bootd.dhcp.outcome import Booted, Drop, Outcome, PersistLease, PoolExhausted, UsedProbed, Verdict
from bootd.dhcp.packet import ZERO, Packet, is_discover, parse
from bootd.dhcp.probe import ArpProber, IcmpProber
from bootd.dhcp.reply import PXE_PORT, SERVER_PORT
from bootd.dhcp.transport import Datagram, DhcpSocket
from bootd.dhcp.writer import LeaseStore, LeaseWriter
from bootd.logs import Throttle, kv
from bootd.metrics import PoolStats
from bootd.model.records import LeaseState
from bootd.policy import Policy

log = logging.getLogger("bootd.dhcp")
DROP_LOG_INTERVAL = 60.0  # one log line per verdict or drop reason per minute; all are counted
QUIET = (Verdict.OFFER, Verdict.ACK, Verdict.PROXY_OFFER, Verdict.PROXY_ACK, Verdict.INFORM)
# Counter keys by received message type (Kea's pkt4-<type>-received), made once, not per packet.
RECEIVED = {t: f"received-{t.name.lower()}" for t in MessageType}
SENT = {v: f"sent-{v.value}" for v in Verdict}
SHED = {r: f"shed-{r.value}" for r in Shed}
PUMP_BATCH = 16  # per loop turn; then readers and the writer (each of its DB hops needs a turn) run
__all__ = ["DhcpService", "LeaseStore", "LeaseWriter"]


STOCK_LOW, PROBE_BATCH = 64, 128
REFILL_IDLE = 1.0
CONFLICT_QUARANTINE = 600.0


@dataclass
class _Stock:
    """Probed-free addresses of one dynamic pool, and how to probe more."""

    subnet: Subnet
    prober: ArpProber | IcmpProber
    free: set[int] = field(default_factory=set)
    conflicts: dict[int, float] = field(default_factory=dict)  # address -> until


class DhcpService:
    name = "dhcp"

    def __init__(self, config: Config, repo: LeaseStore, policy: Policy,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._repo = repo
        self._policy = policy
        self._clock = clock
        self.table = LeaseTable()
        self.decider = Decider(config, policy, self.table)
        self.writer = LeaseWriter(repo)
        self.counters: Counter[str] = Counter()
        self._unlogged: Counter[Drop | Verdict] = Counter()
        self._sockets: list[DhcpSocket] = []
        self._ingress: dict[tuple[str, int], Ingress] = {}
        self._stocks: list[_Stock] = []
        self._refill = asyncio.Event()
        self._say = Throttle(DROP_LOG_INTERVAL, keys=64)
        self._free: dict[tuple[int, int], set[int]] = {}
        self._backlog: Backlog[tuple[DhcpSocket, Datagram]] = Backlog()
        self._pumping = False
        self._shed_seen = 0

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        # Only our subnets' leases: other daemons on the same database own theirs.
        records = self.table.load(await self._repo.list_leases(), [s.cidr for s in self.config.subnets])
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
            for stock in self._stocks:
                pool = stock.subnet.dynamic_pool
                assert pool is not None
                self._free[(int(pool.first), int(pool.last))] = stock.free
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
        """Queue: answered by _pump, urgent lane first."""
        self.counters["received"] += 1
        self._backlog.push((sock, dgram), is_discover(dgram.data), time.monotonic())
        if not self._pumping:
            self._pumping = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        backlog, clock = self._backlog, time.monotonic
        for _ in range(PUMP_BATCH):
            item = backlog.pop(clock())
            if item is None:
                break
            self._handle(*item)
        if len(backlog):
            asyncio.get_running_loop().call_soon(self._pump)
        else:
            self._pumping = False
        shed = backlog.shed
        if shed.total() != self._shed_seen:
            self._count_shed(shed)

    def _count_shed(self, shed: Counter[Shed]) -> None:
        for why, n in shed.items():
            self.counters[SHED[why]] = n
        self._shed_seen = shed.total()
        if self._say(time.monotonic(), "shed"):
            log.warning("overloaded: messages shed unanswered", extra=kv(**{
                why.value: n for why, n in sorted(shed.items())}))

    def _handle(self, sock: DhcpSocket, dgram: Datagram) -> None:
        ingress = self._ingress[(sock.interface, sock.port)]
        if sock.port == PXE_PORT:
            ingress = Ingress(ingress.interface, ingress.server_ip, ingress.subnets, PXE_PORT, dgram.source)
        try:
            packet = parse(dgram.data)
        except MalformedPacket as exc:
            self.counters["received-malformed"] += 1
            self._log(Drop.MALFORMED, str(exc), sock.interface, dgram.source)
            return
        self.counters[_received_key(packet)] += 1
        outcome = self.decider.handle(packet, ingress, self._clock(), self._free if self._stocks else None)
        self.counters[outcome.verdict.value] += 1
        if outcome.dropped:
            assert outcome.drop is not None
            self._log(outcome.drop, outcome.reason, sock.interface, dgram.source, packet.mac)
            return
        self._apply(outcome, sock, ingress, packet)
        if outcome.verdict not in QUIET:
            self._log(outcome.verdict, outcome.reason, sock.interface, dgram.source, packet.mac)

    def _apply(self, outcome: Outcome, sock: DhcpSocket, ingress: Ingress, packet: Packet) -> None:
        """Effects first (all in memory), then the reply: after its lease is durable."""
        persist = None
        for effect in outcome.effects:
            if isinstance(effect, Booted):
                self._policy.booted(effect.client, effect.location, via=_via(ingress, packet),
                                    rack=effect.rack)
            elif isinstance(effect, PersistLease):
                persist = effect.lease
                ip = IPv4Address(persist.ip)
                if persist.state is LeaseState.BOUND:
                    self._policy.leased(persist.mac, ip)
                else:  # released, declined
                    self._policy.unleased(ip)
            elif isinstance(effect, UsedProbed):
                self._take_probed(effect.ip)
            elif isinstance(effect, PoolExhausted):
                self._refill.set()
        if outcome.verdict is Verdict.PROXY_ACK and packet.ciaddr != ZERO:
            # Proxy mode holds no leases: the PXE client's own address on its 4011
            # request is the best bootd knows of who holds which address.
            self._policy.leased(packet.mac, packet.ciaddr)
        reply = outcome.reply
        if reply is None:
            if persist is not None:
                self.writer.submit(persist.record(), None)
            return
        key = SENT[outcome.verdict]
        if persist is not None:
            self.writer.submit(persist.record(),
                               lambda: self._send(sock, reply.data, reply.ip, reply.port, key))
        else:
            self._send(sock, reply.data, reply.ip, reply.port, key)

    def _send(self, sock: DhcpSocket, data: bytes, ip: IPv4Address, port: int, key: str) -> None:
        if sock.send(data, ip, port):
            self.counters["sent"] += 1
            self.counters[key] += 1
        else:
            self.counters["send_errors"] += 1

    def _log(self, why: Drop | Verdict, reason: str, interface: str, source: tuple[str, int],
             mac: str | None = None) -> None:
        """One line per verdict or drop reason per minute (never per attacker-chosen
        text or source), with how many were not logged; everything is counted."""
        if isinstance(why, Drop):
            self.counters[f"dropped-{why.value}"] += 1
        self._unlogged[why] += 1
        if not self._say(time.monotonic(), why.value):
            return
        level = logging.WARNING if isinstance(why, Drop) else logging.INFO
        count, self._unlogged[why] = self._unlogged[why], 0
        log.log(level, "dropped packet" if isinstance(why, Drop) else reason,
                extra=kv(why=why.value, reason=reason[:200] if isinstance(why, Drop) else None,
                         mac=mac, interface=interface, source=f"{source[0]}:{source[1]}",
                         last_minute=count if count > 1 else None))

    def pools(self) -> list[PoolStats]:
        """Each dynamic pool's size, bound leases and probed stock, for a metrics scrape."""
        now, stocks = self._clock(), {id(s.subnet): s for s in self._stocks}
        out = []
        for subnet in self.config.subnets:
            pool = subnet.dynamic_pool
            if pool is None:
                continue
            first, last = int(pool.first), int(pool.last)
            bound = sum(1 for ip, lease in self.table.by_ip.items() if first <= ip <= last
                        and lease.state is LeaseState.BOUND and lease.expires > now)
            stock = stocks.get(id(subnet))
            out.append(PoolStats(str(subnet.cidr), f"{pool.first}-{pool.last}", len(pool), bound,
                                 None if stock is None else len(stock.free)))
        return out

    # -- conflict checks --------------------------------------------------------------

    def _take_probed(self, ip: int) -> None:
        for stock in self._stocks:
            if ip in stock.free:
                stock.free.discard(ip)
                if len(stock.free) < STOCK_LOW:
                    self._refill.set()
                return

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
        self.counters["probed"] += len(candidates)
        try:
            taken = await stock.prober.probe(candidates)
        except OSError as exc:
            log.error("conflict check failed; offering without it", extra=kv(
                subnet=str(stock.subnet.cidr), reason=exc.strerror))
            self._stocks.remove(stock)
            return
        self.counters["probe-conflicts"] += len(taken)
        for ip in taken:
            stock.conflicts[ip] = now + CONFLICT_QUARANTINE
            log.warning("address in use by a host we did not give it to; skipped",
                        extra=kv(ip=str(IPv4Address(ip)), subnet=str(stock.subnet.cidr)))
        stock.free.update(ip for ip in candidates if ip not in taken)


def _received_key(packet: Packet) -> str:
    try:
        kind = packet.message_type
    except MalformedPacket:
        return "received-unknown"
    return "received-none" if kind is None else RECEIVED[kind]


def _via(ingress: Ingress, packet: Packet) -> str:
    """Where a client is, for per-interface rate limits: its relay, or our interface."""
    return f"relay {packet.giaddr}" if packet.giaddr != ZERO else ingress.interface


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
