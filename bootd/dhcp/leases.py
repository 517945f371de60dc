"""The lease table in memory (pure): who holds which address until when.

The database is the durable copy (loaded at start, written before every ACK);
this table answers every packet without a query. A client is identified by
its client identifier (option 61) when it sends one, else by hardware type and
address (RFC 2131 section 4.2). Addresses are ints here for speed.

Allocation from a pool prefers addresses never handed out (a cursor walks the
pool once), then the address whose lease ended longest ago, so that a client
that comes back soon finds its old address still free (RFC 2131 section 4.3.1
asks servers to hand a client its previous address when they can). An offer
holds its address only softly: with nothing else left, the oldest offer another
client has not taken is offered again. Kea 2.2 and dnsmasq hold nothing for an
OFFER; holding it firmly let a flood of DISCOVERs from spoofed MACs starve real
clients for the whole hold time (measured: ~30 s without a lease).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

from bootd.config import AddressRange
from bootd.model.records import LeaseRecord, LeaseState

HELD = (LeaseState.OFFERED, LeaseState.BOUND)
SCAN_WINDOW = 4096  # bounds the work of one allocation while addresses await probing


@dataclass(slots=True)
class Lease:
    ip: int
    mac: str
    client_key: bytes
    client_id: bytes | None
    state: LeaseState
    expires: float
    hostname: str | None = None

    def held(self, now: float) -> bool:
        """Nobody else may have this address now."""
        return (self.state in HELD or self.state is LeaseState.DECLINED) and self.expires > now

    def record(self) -> LeaseRecord:
        return LeaseRecord(IPv4Address(self.ip), self.mac, self.state,
                           datetime.fromtimestamp(self.expires, UTC),
                           None if self.client_id is None else self.client_id.hex(), self.hostname)


def client_key(client_id: bytes | None, htype: int, hwaddr: bytes) -> bytes:
    return b"i" + client_id if client_id is not None else b"h" + bytes((htype,)) + hwaddr


class LeaseTable:
    def __init__(self) -> None:
        self.by_ip: dict[int, Lease] = {}
        self.by_client: dict[bytes, int] = {}
        self._cursors: dict[tuple[int, int], int] = {}

    def load(self, records: Iterable[LeaseRecord],
             within: Collection[IPv4Network] | None = None) -> list[LeaseRecord]:
        """Take the durable leases, only those of the subnets in `within` when given, and
        return what was taken. Several daemons share one lease table in the database,
        each serving its own subnets: another daemon's lease loaded here would let this
        one answer a RELEASE or DECLINE for it and overwrite that daemon's row, and
        trust its holder for tokens on a subnet this daemon does not serve."""
        taken = [r for r in records if within is None or any(r.ip in net for net in within)]
        for r in taken:
            cid = bytes.fromhex(r.client_id) if r.client_id else None
            hw = bytes.fromhex(r.mac.replace(":", ""))
            self.put(Lease(int(r.ip), r.mac, client_key(cid, 1, hw), cid, r.state,
                           r.expires_at.timestamp(), r.hostname))
        return taken

    def of_client(self, key: bytes) -> Lease | None:
        ip = self.by_client.get(key)
        return None if ip is None else self.by_ip.get(ip)

    def at(self, ip: int) -> Lease | None:
        return self.by_ip.get(ip)

    def free_for(self, ip: int, key: bytes, now: float) -> bool:
        lease = self.by_ip.get(ip)
        if lease is None:
            return True
        if lease.state is LeaseState.DECLINED:
            return lease.expires <= now
        return lease.client_key == key or not lease.held(now)

    def put(self, lease: Lease) -> None:
        previous = self.by_ip.get(lease.ip)
        if (previous is not None and previous.client_key != lease.client_key
                and self.by_client.get(previous.client_key) == lease.ip):
            del self.by_client[previous.client_key]
        self.by_ip[lease.ip] = lease
        if lease.state is LeaseState.DECLINED:
            # A declined address belongs to nobody; the client must get another.
            if self.by_client.get(lease.client_key) == lease.ip:
                del self.by_client[lease.client_key]
            return
        old_ip = self.by_client.get(lease.client_key)
        if old_ip is not None and old_ip != lease.ip:
            old = self.by_ip.get(old_ip)
            if old is not None and old.client_key == lease.client_key and old.state is LeaseState.OFFERED:
                del self.by_ip[old_ip]  # an offer the client never took
        self.by_client[lease.client_key] = lease.ip

    def forget_offer(self, key: bytes) -> None:
        lease = self.of_client(key)
        if lease is not None and lease.state is LeaseState.OFFERED:
            del self.by_ip[lease.ip]
            del self.by_client[key]

    def allocate(self, pool: AddressRange, now: float, usable: Callable[[int], bool],
                 key: bytes | None = None) -> int | None:
        first, last = int(pool.first), int(pool.last)
        cursor = self._cursors.get((first, last), first)
        while cursor <= last and cursor in self.by_ip:
            cursor += 1
        self._cursors[(first, last)] = cursor
        # Never handed out, and usable (probed free when conflict checks are on).
        for ip in range(cursor, min(last, cursor + SCAN_WINDOW) + 1):
            if ip not in self.by_ip and usable(ip):
                return ip
        # Reuse: the address free for longest; failing that, the oldest offer
        # another client has not taken (offers hold softly).
        best: Lease | None = None
        oldest_offer: Lease | None = None
        for ip, lease in self.by_ip.items():
            if not first <= ip <= last:
                continue
            if not lease.held(now):
                if best is None or lease.expires < best.expires:
                    best = lease
            elif lease.state is LeaseState.OFFERED and lease.client_key != key and (
                    oldest_offer is None or lease.expires < oldest_offer.expires):
                oldest_offer = lease
        if best is not None:
            return best.ip
        return None if oldest_offer is None else oldest_offer.ip

    def unused(self, pool: AddressRange, skip: Callable[[int], bool], limit: int) -> list[int]:
        """Up to `limit` never-handed-out addresses of pool for which skip() is false."""
        first, last = int(pool.first), int(pool.last)
        out: list[int] = []
        ip = self._cursors.get((first, last), first)
        while ip <= last and len(out) < limit:
            if ip not in self.by_ip and not skip(ip):
                out.append(ip)
            ip += 1
        return out
