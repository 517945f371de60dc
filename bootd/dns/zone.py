"""The names bootd is authoritative for, kept in memory, pure (no I/O).

Forward zones: each subnet's `domain`. In a domain D:
- D itself: SOA and NS (the name server is `bootd.D`);
- `bootd.D`: the admin address (the daemon's own name, the NS target);
- `<node>.D`: the node's reserved admin address, else the address bootd leased
  to one of its MACs (the policy knows leases; asked at query time, so a new
  lease answers at once);
- `<node>-bmc.D`: the node's BMC address;
- `d<mac>.D` (the MAC's 12 hex digits): any MAC holding a lease, named or not,
  so a machine has a stable name before anyone names it.
A name belongs to the domain of the subnet holding its address; an address in
no subnet with a domain (or none yet) is answered in every domain.

Reverse zones (RFC 1035 3.5): the in-addr.arpa zones covering each subnet, cut
at octet boundaries (a /22 is four /24 zones; a /26 is served as its /24). PTR
names are the forward names above, a node's own name before `d<mac>`.

RFC 6303 zones (private and special-use reverse zones) are answered locally,
NXDOMAIN with their SOA, and never forwarded: a lookup of 10.x.x.x's name must
not leak to the Internet's root servers.

Negative answers carry the zone's SOA in the authority section so they are
cached for the SOA minimum (RFC 2308 5), which is the zone TTL: 30 s.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from bootd.config import Config
from bootd.model.records import NodeRecord

ADMIN_LABEL = "bootd"
BMC_SUFFIX = "-bmc"

# RFC 6303 section 4 (and RFC 7793's 100.64/10): served locally, never forwarded.
_V4_PRIVATE = ("10", *(f"{n}.172" for n in range(16, 32)), "168.192", "0", "127", "254.169", "2.0.192",
               "100.51.198", "113.0.203", "255.255.255.255", *(f"{n}.100" for n in range(64, 128)))
_V6_PRIVATE = ("0." * 31 + "0", "1" + ".0" * 31, "d.f", "8.e.f", "9.e.f", "a.e.f", "b.e.f",
               "8.b.d.0.1.0.0.2")
PRIVATE_ZONES = (*(f"{z}.in-addr.arpa" for z in _V4_PRIVATE), *(f"{z}.ip6.arpa" for z in _V6_PRIVATE))


class Leases(Protocol):
    """Who holds which address now (bootd.policy.Policy implements it)."""

    def lease_of(self, mac: str) -> IPv4Address | None: ...

    def lease_holder(self, ip: IPv4Address) -> str | None: ...


class Kind(enum.Enum):
    FORWARD = "forward"  # one of the subnets' domains
    REVERSE = "reverse"  # a reverse zone of one of the subnets
    LOCAL = "local"      # an RFC 6303 zone: always empty here


@dataclass(frozen=True, slots=True)
class Host:
    """One node's names: what the zone keeps of a NodeRecord."""

    name: str
    macs: tuple[str, ...]
    admin_ip: IPv4Address | None
    bmc_ip: IPv4Address | None

    @classmethod
    def of(cls, node: NodeRecord) -> Host:
        bmc = None
        if node.bmc is not None:
            try:
                bmc = IPv4Address(node.bmc.address)
            except ValueError:  # a BMC given by host name has no A record of ours
                bmc = None
        return cls(node.name, tuple(i.mac for i in node.interfaces), node.admin_ip, bmc)


@dataclass(frozen=True, slots=True)
class Found:
    """The zone that answers a name, and what the name holds there."""

    apex: str
    kind: Kind
    exists: bool = False
    address: IPv4Address | None = None
    target: str | None = None  # a PTR's name


def reverse_name(address: IPv4Address) -> str:
    return ".".join(reversed(str(address).split("."))) + ".in-addr.arpa"


def reverse_zones(network: IPv4Network) -> list[str]:
    """The in-addr.arpa apexes covering `network`, cut at octet boundaries."""
    prefix = min(24, -(-network.prefixlen // 8) * 8)
    nets = [network.supernet(new_prefix=prefix)] if network.prefixlen > prefix else \
        list(network.subnets(new_prefix=prefix))
    octets = prefix // 8
    return [".".join(reversed(str(n.network_address).split(".")[:octets])) + ".in-addr.arpa"
            if octets else "in-addr.arpa" for n in nets]


class Zone:
    def __init__(self, config: Config, leases: Leases, serial: int = 1) -> None:
        self.config = config
        self.leases = leases
        self.serial = serial & 0xFFFFFFFF
        self._hosts: dict[str, Host] = {}
        self._by_mac: dict[str, str] = {}
        self._by_ip: dict[IPv4Address, str] = {}  # admin and BMC addresses -> their label
        self._stale = False  # the two maps above need a rebuild before the next reverse answer
        self._domains: dict[IPv4Address, str | None] = {}  # subnet_for is a scan over subnets
        domains = [s.domain for s in config.subnets if s.domain]
        self.domains = tuple(dict.fromkeys(domains))
        self.reverse = tuple(dict.fromkeys(z for s in config.subnets for z in reverse_zones(s.cidr)))
        # Longest apex first: an own reverse zone inside an RFC 6303 one wins.
        zones = [(d, Kind.FORWARD) for d in self.domains] + [(z, Kind.REVERSE) for z in self.reverse]
        zones += [(z, Kind.LOCAL) for z in PRIVATE_ZONES]
        # Own zones first, so an own reverse zone equal to an RFC 6303 one stays own.
        self._zones: dict[str, Kind] = {}
        for apex, kind in zones:
            self._zones.setdefault(apex, kind)

    # -- keeping it current ------------------------------------------------------

    def load(self, hosts: Iterable[Host]) -> None:
        self._hosts = {}
        for host in hosts:
            self._hosts[host.name] = host
        self._index()

    def hosts(self) -> list[Host]:
        return list(self._hosts.values())

    def put(self, host: Host, old_name: str | None = None) -> None:
        if old_name is not None:
            self._hosts.pop(old_name, None)
        self._hosts[host.name] = host
        self._index()

    def remove(self, name: str) -> None:
        if self._hosts.pop(name, None) is not None:
            self._index()

    def _index(self) -> None:
        # The serial moves at once (cached answers end); the reverse maps are rebuilt
        # (O(nodes), ~10 ms at 10,000) only when a reverse query needs them: a fleet
        # install changes hundreds of nodes a second and asks few PTRs meanwhile.
        self._stale = True
        self.serial = (self.serial + 1) & 0xFFFFFFFF or 1

    def _rebuild(self) -> None:
        self._stale = False
        self._by_mac = {mac: h.name for h in self._hosts.values() for mac in h.macs}
        by_ip: dict[IPv4Address, str] = {}
        for h in self._hosts.values():
            if h.bmc_ip is not None:
                by_ip.setdefault(h.bmc_ip, h.name + BMC_SUFFIX)
        for h in self._hosts.values():
            if h.admin_ip is not None:
                by_ip[h.admin_ip] = h.name
        self._by_ip = by_ip

    # -- answers -------------------------------------------------------------------

    def ns_name(self, apex: str, kind: Kind) -> str:
        if kind is Kind.FORWARD:
            return f"{ADMIN_LABEL}.{apex}"
        if kind is Kind.LOCAL:
            return apex  # RFC 6303 section 3
        admin = self.domain_of(self.config.admin_address)
        return f"{ADMIN_LABEL}.{admin}" if admin else (f"{ADMIN_LABEL}.{self.domains[0]}" if self.domains
                                                          else apex)

    def domain_of(self, address: IPv4Address) -> str | None:
        if address in self._domains:
            return self._domains[address]
        subnet = self.config.subnet_for(address)
        domain = subnet.domain if subnet is not None and subnet.domain else None
        if len(self._domains) >= 65536:  # bounded: addresses come from the wire too
            self._domains.clear()
        self._domains[address] = domain
        return domain

    def address_of(self, host: Host) -> IPv4Address | None:
        if host.admin_ip is not None:
            return host.admin_ip
        return next((a for a in map(self.leases.lease_of, host.macs) if a is not None), None)

    def find(self, qname: str) -> Found | None:
        """The own zone `qname` falls in and its data there; None: not ours."""
        # The longest enclosing apex, by suffixes: as many dict lookups as the name has labels.
        labels = qname.split(".")
        apex, kind = "", None
        for i in range(len(labels)):
            apex = ".".join(labels[i:])
            kind = self._zones.get(apex)
            if kind is not None:
                break
        if kind is None:
            return None
        if qname == apex:
            return Found(apex, kind, exists=True)
        label = qname[:-len(apex) - 1]
        if kind is Kind.FORWARD:
            return self._forward(apex, label)
        if kind is Kind.REVERSE:
            return self._reverse(apex, qname)
        return Found(apex, kind)

    def _forward(self, domain: str, label: str) -> Found:
        none = Found(domain, Kind.FORWARD)
        if "." in label:
            return none
        if label == ADMIN_LABEL:
            return self._in(domain, self.config.admin_address) or none
        host = self._hosts.get(label)
        if host is not None:
            return self._in(domain, self.address_of(host)) or none
        if label.endswith(BMC_SUFFIX) and (host := self._hosts.get(label[:-len(BMC_SUFFIX)])) is not None:
            return self._in(domain, host.bmc_ip) or none
        if len(label) == 13 and label[0] == "d":
            mac = ":".join(label[i:i + 2] for i in range(1, 13, 2))
            leased = self.leases.lease_of(mac)
            if leased is not None:
                return self._in(domain, leased) or none
        return none

    def _in(self, domain: str, address: IPv4Address | None) -> Found | None:
        """The name with `address` as seen from `domain`: exists there, or not at all."""
        if address is None:  # known, no address yet: the name exists, with no A (NODATA)
            return Found(domain, Kind.FORWARD, exists=True)
        own = self.domain_of(address)
        if own is not None and own != domain:
            return None
        return Found(domain, Kind.FORWARD, exists=True, address=address)

    def _reverse(self, apex: str, qname: str) -> Found:
        labels = qname.removesuffix(".in-addr.arpa").split(".")
        if len(labels) < 4:  # an empty non-terminal above the addresses: exists, no data
            return Found(apex, Kind.REVERSE, exists=all(x.isdigit() for x in labels))
        try:
            address = IPv4Address(".".join(reversed(labels)))
        except ValueError:
            return Found(apex, Kind.REVERSE)
        target = self._name_of(address)
        return Found(apex, Kind.REVERSE, exists=target is not None, target=target)

    def _name_of(self, address: IPv4Address) -> str | None:
        domain = self.domain_of(address) or (self.domains[0] if self.domains else None)
        if domain is None:
            return None
        if self._stale:
            self._rebuild()
        if address == self.config.admin_address:
            label: str | None = ADMIN_LABEL
        else:
            label = self._by_ip.get(address)
        if label is None:
            mac = self.leases.lease_holder(address)
            if mac is not None:
                host = self._hosts.get(self._by_mac.get(mac, ""))
                named = host is not None and host.admin_ip is None
                label = host.name if host is not None and named else "d" + mac.replace(":", "")
        return None if label is None else f"{label}.{domain}"
