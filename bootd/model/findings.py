"""Other DHCP servers seen on our admin interfaces: the records every layer shares.

`bootd.dhcp.rogue` (pure) turns a foreign BOOTREPLY into a `Sighting`; the fleet
findings service (`bootd.fleet.findings`) records it, one `FindingRecord` per
(daemon, interface, server address, server MAC), and tells the operator. The
DHCP edge, the HTTP edge and the database all speak these types, so none of
them imports another's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address


class Method(enum.StrEnum):
    PASSIVE = "passive"  # an OFFER/ACK to someone else's client, seen on the wire
    ACTIVE = "active"    # an answer to our own probe DISCOVER


class ReplyKind(enum.StrEnum):
    OFFER = "offer"
    ACK = "ack"


@dataclass(frozen=True, slots=True)
class Offered:
    """What another server handed out in one reply (RFC 2131 section 4.3.1 fields)."""

    kind: ReplyKind
    address: IPv4Address | None           # yiaddr; None for a PXE proxy's address-less offer
    server_id: IPv4Address | None         # option 54
    router: IPv4Address | None = None     # option 3, the first
    lease_time: int | None = None         # option 51, seconds
    next_server: IPv4Address | None = None  # siaddr
    boot_file: str = ""                   # option 67, else the BOOTP file field
    pxe: bool = False                     # PXE boot options (vendor class PXEClient, option 43, a boot file)

    def summary(self) -> str:
        """One line for logs, the database's `offered` column and the status banner."""
        parts = [str(self.address) if self.address is not None else "no address"]
        if self.router is not None:
            parts.append(f"router {self.router}")
        if self.lease_time is not None:
            parts.append(f"lease {self.lease_time} s")
        if self.boot_file:
            parts.append(f"boot file {self.boot_file}")
        if self.next_server is not None:
            parts.append(f"next server {self.next_server}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One foreign reply: where, from whom, and what it offered."""

    interface: str
    server_ip: IPv4Address   # option 54 when present, else the IP source address
    server_mac: str          # the Ethernet source, aa:bb:cc:dd:ee:ff
    method: Method
    offered: Offered


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """One server as stored: first and last time seen, how many replies."""

    daemon: str
    interface: str
    server_ip: IPv4Address
    server_mac: str
    method: Method   # how it was last seen
    offered: str     # Offered.summary() of the last reply
    first_seen: datetime
    last_seen: datetime
    count: int

    @property
    def key(self) -> tuple[str, str, IPv4Address, str]:
        return (self.daemon, self.interface, self.server_ip, self.server_mac)
