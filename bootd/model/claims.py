"""Subnet claims (pure): which daemon may serve which subnet when several share one database.

Two DHCP servers answering on one subnet hand out the same addresses (each
keeps its own lease table in memory), so each subnet is served by exactly one
daemon. A daemon claims every subnet of its config at start, in one
transaction under a lock (bootd/db/claims.py), and refreshes `heartbeat_at`
every HEARTBEAT seconds while it runs.

`plan` decides from the claims in the database, with no I/O:
- a subnet overlapping one claimed by another daemon whose heartbeat is fresh
  (within STALE_AFTER) is refused: the daemon must not start;
- a stale claim of another daemon (it died without releasing) is taken over;
- the same daemon id restarting (after a crash) renews its own claims;
- its own claims on subnets no longer in its config are released.
Overlap, not only equality, counts: a /16 claimed by one daemon and a /24
inside it claimed by another would still be two servers for one address.

Clocks: heartbeats are written with each daemon's clock; admin nodes keep time
(NTP), and three missed heartbeats leave seconds of room for skew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

HEARTBEAT = timedelta(seconds=10)
STALE_AFTER = 3 * HEARTBEAT


@dataclass(frozen=True, slots=True)
class SubnetClaim:
    cidr: IPv4Network
    daemon: str
    address: IPv4Address
    claimed_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class Refusal:
    """`subnet` (ours) overlaps `held`, a live claim of another daemon."""

    subnet: IPv4Network
    held: SubnetClaim
    age: timedelta  # since its last heartbeat

    def reason(self) -> str:
        same = "" if self.subnet == self.held.cidr else f" (which holds {self.held.cidr})"
        return (f"subnet {self.subnet} is served by daemon {self.held.daemon} ({self.held.address}){same}, "
                f"heartbeat {int(self.age.total_seconds())} s ago; "
                "two DHCP servers on one subnet would hand out the same addresses")


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    refused: tuple[Refusal, ...] = ()
    take: tuple[IPv4Network, ...] = ()          # new claims to insert
    taken_over: tuple[SubnetClaim, ...] = ()    # stale claims of others, deleted first
    renew: tuple[IPv4Network, ...] = ()         # ours already: heartbeat (and address) refreshed
    release: tuple[IPv4Network, ...] = ()       # ours, no longer served

    @property
    def ok(self) -> bool:
        return not self.refused


def plan(daemon: str, subnets: Sequence[IPv4Network], existing: Sequence[SubnetClaim], now: datetime,
         stale_after: timedelta = STALE_AFTER) -> ClaimPlan:
    wanted = sorted(set(subnets), key=lambda n: (int(n.network_address), n.prefixlen))
    ours = {c.cidr for c in existing if c.daemon == daemon}
    others = [c for c in existing if c.daemon != daemon]
    refused: list[Refusal] = []
    stale: dict[IPv4Network, SubnetClaim] = {}
    for subnet in wanted:
        for claim in others:
            if not claim.cidr.overlaps(subnet):
                continue
            age = now - claim.heartbeat_at
            if age <= stale_after:
                refused.append(Refusal(subnet, claim, max(age, timedelta(0))))
            else:
                stale[claim.cidr] = claim
    return ClaimPlan(
        refused=tuple(refused),
        take=tuple(n for n in wanted if n not in ours),
        taken_over=tuple(stale.values()),
        renew=tuple(n for n in wanted if n in ours),
        release=tuple(sorted(ours - set(wanted), key=lambda n: (int(n.network_address), n.prefixlen))))
