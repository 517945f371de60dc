"""The DHCP server path under fuzz: codec -> decide -> reply -> lease writer -> database.

Harness.feed() handles one datagram as DhcpService does (server.py's
_on_datagram and _apply), without sockets: parse; Decider.handle with a fake
clock and, half the time, a probed-free stock (FreeSets); the effects applied
(leases through a real LeaseWriter, the policy told who booted and who holds
which address, the stock taken from and refilled); and a reply that waits for
its lease "sent" only when the writer's batch is durable. A share of OFFERs
and ACKs is answered by the client's next message (REQUEST, renewal, RELEASE,
DECLINE), so the path goes past DISCOVER.

Per packet: parse raises only MalformedPacket; what it accepts builds back
(build) to the same fields unless option 52 is in play; handle raises
nothing; a reply parses with our parser, answers the request (op, xid,
chaddr, message type by verdict) and fits in the client's maximum message size
(RFC 2131 section 2: at least 576); an offered or acknowledged address is the
client's reservation or in a dynamic pool; a used probed address was in the
stock. After each batch, check(): the writer flushed, every reply promised is
sent; the lease table is consistent (by_client and by_ip agree, no address
held by two client keys); every database row has a 17-character MAC and is the
last record submitted for its address, and every persisted lease in the table
has the MAC and state of its row.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path

from dhcp_mutate import CONFIG, KNOWN_IP, KNOWN_MAC, SERVER, mutate

from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.dhcp.decide import Decider, Ingress
from bootd.dhcp.leases import LeaseTable
from bootd.dhcp.options import MalformedPacket, MessageType, Opt, Options
from bootd.dhcp.outcome import Booted, Outcome, PersistLease, PoolExhausted, Reply, UsedProbed, Verdict
from bootd.dhcp.packet import BOOTREPLY, DEFAULT_MAX_MESSAGE, IP_UDP_HEADERS, ZERO, Packet, build, parse
from bootd.dhcp.server import LeaseStore, LeaseWriter
from bootd.keys import SecretBox
from bootd.model.names import mac_address
from bootd.model.records import DirectoryEntry, LeaseRecord, LeaseState, NewNode
from bootd.policy import Policy

REPLY_TYPE = {Verdict.OFFER: MessageType.OFFER, Verdict.PROXY_OFFER: MessageType.OFFER,
              Verdict.ACK: MessageType.ACK, Verdict.INFORM: MessageType.ACK,
              Verdict.PROXY_ACK: MessageType.ACK, Verdict.NAK: MessageType.NAK}
PERSISTED = (LeaseState.BOUND, LeaseState.RELEASED, LeaseState.DECLINED)
STOCK = 128


class Violation(AssertionError):
    """The server path broke an invariant."""


class MemoryStore:
    """A LeaseStore in memory (the hypothesis tests; the mutation run uses SQLite)."""

    def __init__(self) -> None:
        self.rows: dict[IPv4Address, LeaseRecord] = {}

    async def put_leases(self, leases: Sequence[LeaseRecord]) -> None:
        self.rows.update((r.ip, r) for r in leases)

    async def list_leases(self) -> list[LeaseRecord]:
        return list(self.rows.values())


@dataclass
class Counts:
    packets: int = 0
    malformed: int = 0  # parse raised MalformedPacket: the one documented error
    round_trips: int = 0
    crashes: int = 0  # any other exception, or a broken invariant: must stay 0
    sent: int = 0  # replies out (those with a lease only after it was durable)
    persisted: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few crashes

    def crash(self, what: str, exc: BaseException) -> None:
        self.crashes += 1
        if len(self.examples) < 10:
            self.examples.append(f"{what[:600]}: {type(exc).__name__}: {str(exc)[:1500]}")


class Harness:
    def __init__(self, config: Config, store: LeaseStore, policy: Policy,
                 reserved: dict[str, IPv4Address] | None = None, now: float = 1_800_000_000.0) -> None:
        self.config, self.store, self.policy = config, store, policy
        self.reserved = reserved or {}
        self.now = now
        self.table = LeaseTable()
        self.decider = Decider(config, policy, self.table)
        self.writer = LeaseWriter(store)
        self.ingress = Ingress("eth0", SERVER, config.subnets[:1])
        self.free: dict[tuple[int, int], set[int]] = {}
        for subnet in config.subnets:
            if subnet.dynamic_pool is not None:
                self.free[(int(subnet.dynamic_pool.first), int(subnet.dynamic_pool.last))] = set()
        self.expected: dict[IPv4Address, LeaseRecord] = {}  # the last record submitted per address
        self.promised = 0  # replies waiting for their lease to be durable
        self.follow: deque[bytes] = deque(maxlen=64)
        self.counts = Counts()
        self.repository: Repository | None = None  # when the store is a real one

    # -- one datagram --------------------------------------------------------------

    def next_packet(self, rng: random.Random) -> bytes:
        """A client's next message (when one is due; now and then mutated), else a fresh mutation."""
        if self.follow and rng.random() < 0.5:
            data = self.follow.popleft()
            return mutate(rng, data) if rng.random() < 0.2 else data
        return mutate(rng)

    def feed(self, raw: bytes, rng: random.Random) -> None:
        self.counts.packets += 1
        try:
            self._feed(raw, rng)
        except Exception as exc:  # any exception at all is a crash: counting them is the point
            self.counts.crash(raw.hex(), exc)

    def _feed(self, raw: bytes, rng: random.Random) -> None:
        try:
            packet = parse(raw)
        except MalformedPacket:
            self.counts.malformed += 1
            return
        self._round_trip(packet)
        self.now += rng.choice((0.0, 0.0, 0.001, 0.1, 1.0, 10.0))
        free = self.free if rng.random() < 0.5 else None
        outcome = self.decider.handle(packet, self.ingress, self.now, free)
        self.counts.verdicts[outcome.verdict.value] += 1
        if outcome.drop is not None:
            self.counts.drops[outcome.drop.value] += 1
        self._check_outcome(packet, outcome)
        self._apply(packet, outcome)
        self._follow_up(packet, outcome, rng)

    def _round_trip(self, packet: Packet) -> None:
        if Opt.OVERLOAD in packet.options:
            return  # rebuilt, the options would say overloaded fields that are now empty
        try:
            again = parse(build(packet))
        except MalformedPacket as exc:
            if "do not fit" in str(exc):
                return  # more options than a message carries, even overloaded
            raise Violation(f"a parsed packet does not rebuild: {exc}") from None
        if Opt.OVERLOAD in again.options:  # build() overloaded `file` and `sname`: they hold options
            items = ((c, v) for c, v in again.options.items() if c != Opt.OVERLOAD)
            again = replace(again, options=Options(items))
        if again != packet:
            raise Violation(f"round trip changed {packet} into {again}")
        self.counts.round_trips += 1

    def _check_outcome(self, request: Packet, out: Outcome) -> None:
        if out.dropped:
            # The service applies nothing of a dropped outcome (it may still name a Booted client).
            if out.reply is not None or any(not isinstance(e, Booted) for e in out.effects):
                raise Violation(f"a dropped packet ({out.drop}) has a reply or effects")
            return
        lease = out.persist
        if lease is not None and len(lease.mac) != 17:
            raise Violation(f"a lease for MAC {lease.mac!r}")
        if out.verdict is Verdict.ACK and (lease is None or lease.mac != request.mac):
            # (A RELEASE keeps the MAC the lease was bound to: the client-id names the client.)
            raise Violation(f"ACK to {request.mac} persists {lease}")
        if out.reply is None:
            if out.verdict in REPLY_TYPE:
                raise Violation(f"{out.verdict} without a reply")
            return
        reply = parse(out.reply.data)  # MalformedPacket here is a violation too
        limit = max(request.options.max_message_size or DEFAULT_MAX_MESSAGE, DEFAULT_MAX_MESSAGE)
        if len(out.reply.data) + IP_UDP_HEADERS > limit:
            raise Violation(f"a reply of {len(out.reply.data)} bytes to a client that takes {limit}")
        if (reply.op, reply.xid, reply.chaddr) != (BOOTREPLY, request.xid, request.chaddr):
            raise Violation(f"a reply that does not answer its request: {reply}")
        if reply.message_type is not REPLY_TYPE.get(out.verdict):
            raise Violation(f"{out.verdict} sent as {reply.message_type}")
        if out.verdict in (Verdict.OFFER, Verdict.ACK):
            self._check_address(request, reply.yiaddr)
        if out.verdict is Verdict.ACK and (lease is None or lease.ip != int(reply.yiaddr)
                                           or lease.state is not LeaseState.BOUND):
            raise Violation(f"ACK of {reply.yiaddr} persists {lease}")

    def _check_address(self, request: Packet, yiaddr: IPv4Address) -> None:
        if self.reserved.get(request.mac) == yiaddr:
            return
        if request.mac in self.reserved and self.config.subnet_for(self.reserved[request.mac]) is \
                self.config.subnet_for(yiaddr):
            raise Violation(f"{yiaddr} to {request.mac}, reserved {self.reserved[request.mac]}")
        if not any(s.dynamic_pool is not None and yiaddr in s.dynamic_pool for s in self.config.subnets):
            raise Violation(f"{yiaddr} is neither a reservation nor in a dynamic pool")

    def _apply(self, request: Packet, out: Outcome) -> None:
        if out.dropped:
            return  # as DhcpService._on_datagram: counted and logged only
        persist: LeaseRecord | None = None
        via = f"relay {request.giaddr}" if request.giaddr != ZERO else self.ingress.interface
        for effect in out.effects:
            if isinstance(effect, Booted):
                self.policy.booted(effect.client, effect.location, via=via)
            elif isinstance(effect, PersistLease):
                persist = effect.lease.record()
                if effect.lease.state is LeaseState.BOUND:
                    self.policy.leased(persist.mac, persist.ip)
                else:
                    self.policy.unleased(persist.ip)
            elif isinstance(effect, UsedProbed):
                stock = next((s for s in self.free.values() if effect.ip in s), None)
                if stock is None:
                    raise Violation(f"used {IPv4Address(effect.ip)}, which is not in the probed stock")
                stock.discard(effect.ip)
            elif isinstance(effect, PoolExhausted):
                self._refill()
        reply = out.reply
        if persist is None:
            if reply is not None:
                self.counts.sent += 1
            return
        self.expected[persist.ip] = persist
        self.counts.persisted += 1
        if reply is None:
            self.writer.submit(persist, None)
        else:
            self.promised += 1
            self.writer.submit(persist, lambda: self._sent(reply))

    def _sent(self, _reply: Reply) -> None:
        self.promised -= 1
        self.counts.sent += 1

    def _refill(self) -> None:
        for subnet in self.config.subnets:
            pool = subnet.dynamic_pool
            if pool is not None:
                stock = self.free[(int(pool.first), int(pool.last))]
                stock.update(self.table.unused(pool, stock.__contains__, STOCK - len(stock)))

    def _follow_up(self, request: Packet, out: Outcome, rng: random.Random) -> None:
        """The client's next message, as it would send it (sometimes)."""
        if out.reply is None or rng.random() < 0.3:
            return
        reply = parse(out.reply.data)
        kept = [(c, v) for c, v in request.options.items() if c not in (50, 53, 54)]
        if out.verdict is Verdict.OFFER:
            kind, ciaddr = MessageType.REQUEST, ZERO
            extra = [(50, reply.yiaddr.packed), (54, SERVER.packed)]
        elif out.verdict is Verdict.ACK:
            kind = rng.choice((MessageType.REQUEST, MessageType.RELEASE, MessageType.DECLINE,
                               MessageType.DISCOVER))
            ciaddr = reply.yiaddr if kind in (MessageType.REQUEST, MessageType.RELEASE) else ZERO
            extra = [(50, reply.yiaddr.packed)] if kind is MessageType.DECLINE else []
        else:
            return
        items = [(int(Opt.MESSAGE_TYPE), bytes((kind,))), *extra, *kept]
        packet = Packet(op=1, xid=request.xid + 1, chaddr=request.chaddr, htype=request.htype,
                        hlen=request.hlen, flags=request.flags, ciaddr=ciaddr, giaddr=request.giaddr,
                        options=Options(items))
        with contextlib.suppress(MalformedPacket):  # too large to send: the client could not either
            self.follow.append(build(packet, items, 1500))

    # -- after a batch ---------------------------------------------------------------

    async def check(self) -> None:
        """Flush the writer, then the invariants between table, replies and rows."""
        try:
            await self.writer.flush()
            await self._check()
        except Exception as exc:
            self.counts.crash("check", exc)

    async def _check(self) -> None:
        if self.promised or self.writer.failed:
            raise Violation(f"{self.promised} replies still wait for a durable lease; "
                            f"{self.writer.failed} writes failed")
        table = self.table
        if len(set(table.by_client.values())) != len(table.by_client):
            raise Violation("an address held by two client keys")
        for key, at in table.by_client.items():
            lease = table.by_ip.get(at)
            if lease is None or lease.client_key != key or lease.state is LeaseState.DECLINED:
                raise Violation(f"by_client says {key!r} holds {IPv4Address(at)}; by_ip says {lease}")
        rows = {r.ip: r for r in await self.store.list_leases()}
        if rows.keys() != self.expected.keys():
            raise Violation(f"{len(rows)} rows for {len(self.expected)} addresses written")
        for address, row in rows.items():
            want = self.expected[address]
            if len(row.mac) != 17 or mac_address(row.mac) != row.mac:
                raise Violation(f"a lease row with MAC {row.mac!r}")
            if (row.mac, row.state, row.client_id, row.hostname) != \
                    (want.mac, want.state, want.client_id, want.hostname):
                raise Violation(f"row {row} is not the last lease written for {address}: {want}")
        for at, lease in table.by_ip.items():
            if lease.ip != at:
                raise Violation(f"by_ip[{IPv4Address(at)}] holds a lease of {IPv4Address(lease.ip)}")
            if lease.state in PERSISTED:
                stored = rows.get(IPv4Address(at))
                if stored is None or (stored.mac, stored.state) != (lease.mac, lease.state):
                    raise Violation(f"table has {lease}, the database {stored}")

    async def settle(self) -> None:
        """Let background work (the policy's registrations) finish."""
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=30)


def memory_harness() -> Harness:
    """Over an in-memory store and a policy without a repository (fast, for hypothesis)."""
    config = parse_config(CONFIG)
    policy = Policy(config)
    policy.load([DirectoryEntry(KNOWN_MAC, "known-09", KNOWN_IP, None)])
    return Harness(config, MemoryStore(), policy, {KNOWN_MAC: KNOWN_IP})


@contextlib.asynccontextmanager
async def sqlite_harness(tmp: Path) -> AsyncIterator[Harness]:
    """Over a real SQLite repository in `tmp` (migrated as bootd does) and a real Policy
    on it, with one known node that has a reservation."""
    config = parse_config(CONFIG)
    engine = await open_database(f"sqlite+aiosqlite:///{tmp / 'bootd.db'}")
    try:
        repo = Repository(engine, SecretBox.from_file(tmp / "secret.key"))
        await repo.add_node(NewNode("known-09", (KNOWN_MAC,), admin_ip=KNOWN_IP), actor="operator")
        policy = Policy(config, repo)
        await policy.start()
        harness = Harness(config, repo, policy, {KNOWN_MAC: KNOWN_IP})
        harness.repository = repo
        try:
            yield harness
        finally:
            await harness.settle()
            await policy.close()
    finally:
        await engine.dispose()


async def fuzz(harness: Harness, packets: int, seed: int = 1, batch: int = 500) -> Counts:
    """`packets` datagrams (mutations and clients' next messages) through the harness,
    checked after every `batch` and at the end."""
    rng = random.Random(seed)
    for done in range(1, packets + 1):
        harness.feed(harness.next_packet(rng), rng)
        if done % batch == 0:
            await harness.check()
    await harness.settle()
    await harness.check()
    return harness.counts
