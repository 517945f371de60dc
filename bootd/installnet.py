"""The network an installer finds on its node's subnet, so that it asks no question.

An installer at critical priority still stops when its network lacks something it
expects: Debian's installer asks "Continue without a default route?" when DHCP
gave no router and "Name server addresses:" when it gave no DNS server (measured
with the real Debian 12 d-i, LAB-NOTES "Installers"). bootd knows the answer
from the config, so it says it up front: on the kernel command line, which the
installer reads before its network is up, and in the answer file.

The subnet of a node: the one holding its reserved admin address; else the one
holding the address bootd leased it (the interface or relay it boots on); else,
when the config has exactly one subnet, that one (`bootd init` writes one).
Unknown (proxy DHCP, a node rendered off-line in a multi-subnet config): nothing
is asserted and the installer uses what the DHCP server gave it.

Name servers: the subnet's `dns_servers`, minus bootd's own address unless
bootd serves DNS (`[services] dns`, bootd.dns). A name server that does not
answer is worse than none: every lookup waits for its timeout. DHCP hands out
the same list (`name_servers` is the one function both use).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from bootd.config import Config
from bootd.config.sections import Subnet

# bootd answers DNS (bootd.dns) whenever [services] dns is on; with it off, its own
# address is never handed out as a name server.
BOOTD_SERVES_DNS = True


def name_servers(config: Config, subnet: Subnet) -> tuple[IPv4Address, ...]:
    """The name servers a node on `subnet` is told about: only ones that answer."""
    own_dns = BOOTD_SERVES_DNS and config.services.dns
    return tuple(a for a in subnet.dns_servers if own_dns or a != config.admin_address)


def subnet_of(config: Config, admin_ip: IPv4Address | None,
              leased: IPv4Address | None = None) -> Subnet | None:
    for address in (admin_ip, leased):
        if address is not None and (found := config.subnet_for(address)) is not None:
            return found
    return config.subnets[0] if len(config.subnets) == 1 else None


@dataclass(frozen=True, slots=True)
class InstallNetwork:
    """What the installer is told about its network; `known` False: nothing at all."""

    known: bool
    router: IPv4Address | None = None
    name_servers: tuple[IPv4Address, ...] = ()
    domain: str = ""
    cidr: IPv4Network | None = None

    def netmask_of(self, address: IPv4Address | None) -> IPv4Address | None:
        """The netmask for a static `address`, if it is on this subnet."""
        if self.cidr is None or address is None or address not in self.cidr:
            return None
        return self.cidr.netmask


def install_network(config: Config, admin_ip: IPv4Address | None,
                    leased: IPv4Address | None = None) -> InstallNetwork:
    subnet = subnet_of(config, admin_ip, leased)
    if subnet is None:
        return InstallNetwork(known=False)
    return InstallNetwork(True, subnet.router, name_servers(config, subnet), subnet.domain or "",
                          subnet.cidr)
