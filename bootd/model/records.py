"""Domain records every layer shares: nodes, leases, events, as frozen values.

The repository hands these out, never ORM objects: ORM objects are bound to a
session and lazy-load; records are plain values that cross into protocol code
and JSON without surprises. No record carries a secret (node token, BMC
password): those have their own narrow methods.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address

from bootd.model.states import NodeState


class LeaseState(enum.StrEnum):
    OFFERED = "offered"
    BOUND = "bound"
    RELEASED = "released"
    DECLINED = "declined"  # RFC 2131 4.3.3: address in use by someone else; quarantined
    EXPIRED = "expired"


@dataclass(frozen=True)
class InterfaceRecord:
    mac: str
    is_boot: bool


@dataclass(frozen=True)
class BmcRecord:
    address: str
    username: str
    reachable: bool | None = None
    power: str | None = None
    last_error: str | None = None
    checked_at: datetime | None = None


@dataclass(frozen=True)
class BmcCredentials:
    address: str
    username: str
    password: str

    def __repr__(self) -> str:  # never let a password reach a log line by accident
        return f"BmcCredentials(address={self.address!r}, username={self.username!r})"


@dataclass(frozen=True)
class NodeRecord:
    name: str
    state: NodeState
    allocated: bool
    profile: str | None
    admin_ip: IPv4Address | None
    rack: str | None
    location: str | None
    interfaces: tuple[InterfaceRecord, ...]
    bmc: BmcRecord | None
    created_at: datetime
    updated_at: datetime
    state_changed_at: datetime
    retries: int = 0
    inventory: str | None = None  # JSON text from the discovery agent
    origin: str = "operator"  # or "booted" (recorded from a PXE boot): see NewNode
    version: int = 0  # bumped by every write: the lifecycle's optimistic concurrency

    @property
    def boot_mac(self) -> str | None:
        return next((i.mac for i in self.interfaces if i.is_boot), None)


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One interface of a known node: what DHCP needs to address it."""

    mac: str
    name: str
    admin_ip: IPv4Address | None
    location: str | None
    state: NodeState = NodeState.DISCOVERING
    profile: str | None = None
    # The node's token encrypted under the state directory's key: only the policy,
    # which holds the key, opens it, and only for the node's own lease holder.
    token_sealed: bytes | None = None

    def __repr__(self) -> str:
        return f"DirectoryEntry({self.mac}, {self.name}, {self.state.value})"


@dataclass(frozen=True)
class NewNode:
    """An operator's description of a node to add; the first MAC is the boot one."""

    name: str
    macs: tuple[str, ...] = ()
    profile: str | None = None
    admin_ip: IPv4Address | None = None
    rack: str | None = None
    state: NodeState = NodeState.DISCOVERING
    origin: str = "operator"  # or "booted": recorded from a PXE boot, expires if it never reports


@dataclass(frozen=True)
class EventRecord:
    id: int
    node_name: str
    at: datetime
    kind: str
    from_state: NodeState | None
    to_state: NodeState | None
    actor: str
    message: str


@dataclass(frozen=True)
class LeaseRecord:
    ip: IPv4Address
    mac: str
    state: LeaseState
    expires_at: datetime
    client_id: str | None = None
    hostname: str | None = None
