"""What a DHCP decision says, as data: a verdict, the reply's bytes, and effects.

The decision (decide.py) is pure; the service (server.py) applies an Outcome:
it persists a PersistLease before it sends the reply (an ACK is a promise that
must survive a crash), tells the policy who booted and who holds which
address, and hands used probed-free addresses back to the conflict-check
stock. Nothing here is parsed from text: `reason` is for people (log lines,
NAK messages), the verdict and the Drop reason for code and counters.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from bootd.dhcp.leases import Lease
from bootd.model.clients import BootClient


class Verdict(enum.StrEnum):
    OFFER = "offer"
    ACK = "ack"
    NAK = "nak"
    INFORM = "inform"              # an ACK without an address (RFC 2131 4.3.5)
    PROXY_OFFER = "proxy-offer"
    PROXY_ACK = "proxy-ack"
    DECLINED = "declined"
    RELEASED = "released"
    EXHAUSTED = "exhausted"        # nothing to offer: no free address, or no pool
    IGNORED = "ignored"            # well-formed, but not ours to answer
    DROPPED = "dropped"            # malformed or unexpected: counted, logged per Drop reason


class Drop(enum.StrEnum):
    """Why a packet was dropped: a small fixed set, so counters and the log throttle
    key on it and never on text an attacker chose."""

    MALFORMED = "malformed"
    NOT_A_REQUEST = "not-a-request"
    NO_MESSAGE_TYPE = "no-message-type"
    UNEXPECTED_TYPE = "unexpected-type"
    NO_SUBNET = "no-subnet"
    INCOMPLETE = "incomplete-request"
    HARDWARE = "unsupported-hardware"
    TOO_LARGE = "reply-too-large"


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes  # encoded before anything else changes: a reply that cannot be built changes nothing
    ip: IPv4Address
    port: int


@dataclass(frozen=True, slots=True)
class PersistLease:
    """Write this lease (durably, before the reply goes out)."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class Booted:
    """A network-boot client asked: the policy records unknown machines."""

    client: BootClient
    location: str | None
    rack: str | None = None  # the subnet's configured rack, for a machine not yet known


@dataclass(frozen=True, slots=True)
class UsedProbed:
    """This probed-free address was handed out: take it from the stock."""

    ip: int


@dataclass(frozen=True, slots=True)
class PoolExhausted:
    """Nothing left to offer on this subnet: refill the probed stock now."""

    subnet: IPv4Network


Effect = PersistLease | Booted | UsedProbed | PoolExhausted
# Probed-free addresses per dynamic pool, keyed by the pool's (first, last) as ints.
# None: conflict checks are off, every address is usable. A pool missing from the
# map has no stock (not probed): usable too.
FreeSets = Mapping[tuple[int, int], Set[int]]


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str = ""
    reply: Reply | None = None
    effects: tuple[Effect, ...] = field(default_factory=tuple)
    drop: Drop | None = None
    client: BootClient | None = None

    @property
    def dropped(self) -> bool:
        return self.verdict is Verdict.DROPPED

    @property
    def persist(self) -> Lease | None:
        return next((e.lease for e in self.effects if isinstance(e, PersistLease)), None)


def dropped(drop: Drop, reason: str) -> Outcome:
    return Outcome(Verdict.DROPPED, reason, drop=drop)
