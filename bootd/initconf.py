"""`bootd init`: a working config for the subnet on one interface.

The interface's first IPv4 address becomes the admin address and its network
the first subnet. Loopback interfaces, and interfaces with no IPv4 address (or
only a link-local one), are refused, naming the interfaces that would fit: a
DHCP server on 127.0.0.0/8 serves nobody. The usable host addresses (RFC 950: not the network or
broadcast address) are split around the admin address: the longer run of
addresses on either side of it is cut in two, the first half the static range
for known nodes, the second half the dynamic pool for unknown ones. The
interface's default gateway, if it has one, becomes the router; the admin node
is the DNS server, since bootd serves DNS for the admin network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import netifaces

from bootd.config import DEFAULT_HTTP_PORT, DEFAULT_LEASE_TIME, AddressRange, parse_config
from bootd.errors import BootdError

IFF_LOOPBACK = 0x8  # <linux/if.h>, in /sys/class/net/IF/flags


class InitError(BootdError):
    pass


@dataclass(frozen=True)
class Detected:
    interface: str
    address: IPv4Address
    network: IPv4Network
    router: IPv4Address | None


def _is_loopback(interface: str) -> bool:
    try:
        flags = int(Path(f"/sys/class/net/{interface}/flags").read_text(), 16)
    except (OSError, ValueError):
        return interface == "lo"
    return bool(flags & IFF_LOOPBACK)


def _usable(interface: str) -> IPv4Interface | None:
    """The first IPv4 address machines could reach bootd at on `interface`: not on a
    loopback interface, not loopback or link-local itself (RFC 3927 addresses are
    not routed and a DHCP server does not serve that range)."""
    if _is_loopback(interface):
        return None
    for entry in netifaces.ifaddresses(interface).get(netifaces.AF_INET, []):
        iface = IPv4Interface(f"{entry['addr']}/{entry['netmask']}")
        if not (iface.ip.is_loopback or iface.ip.is_link_local):
            return iface
    return None


def fitting() -> list[tuple[str, IPv4Interface]]:
    """Interfaces `bootd init` can serve, with the address it would take."""
    out = []
    for name in sorted(netifaces.interfaces()):
        iface = _usable(name)
        if iface is not None:
            out.append((name, iface))
    return out


def _fits() -> str:
    found = fitting()
    if not found:
        return "no interface on this host has a usable IPv4 address"
    return "interfaces that fit: " + ", ".join(f"{name} ({iface})" for name, iface in found)


def detect(interface: str) -> Detected:
    if interface not in netifaces.interfaces():
        raise InitError(f"no interface named {interface!r} on this host ({_fits()})")
    if _is_loopback(interface):
        raise InitError(f"interface {interface} is a loopback interface: no machine can boot from it "
                        f"({_fits()})")
    iface = _usable(interface)
    if iface is None:
        has_v4 = bool(netifaces.ifaddresses(interface).get(netifaces.AF_INET))
        what = "only a loopback or link-local IPv4 address" if has_v4 else "no IPv4 address"
        raise InitError(f"interface {interface} has {what}; give it one first ({_fits()})")
    router = None
    gateways: dict[Any, Any] = netifaces.gateways()
    for gw_addr, gw_iface, *_ in gateways.get(netifaces.AF_INET, []):
        if gw_iface == interface and IPv4Address(gw_addr) in iface.network:
            router = IPv4Address(gw_addr)
            break
    return Detected(interface, iface.ip, iface.network, router)


def split_ranges(network: IPv4Network, admin: IPv4Address,
                 router: IPv4Address | None) -> tuple[AddressRange, AddressRange]:
    """(static_range, dynamic_pool): disjoint, inside `network`, avoiding admin and router."""
    if network.prefixlen > 29:
        raise InitError(f"subnet {network} is too small (at most /29)")
    lo, hi = int(network.network_address) + 1, int(network.broadcast_address) - 1
    taken = sorted(int(a) for a in (admin, router) if a is not None and lo <= int(a) <= hi)
    # Free runs between the taken addresses; keep the longest.
    runs, start = [], lo
    for addr in taken:
        runs.append((start, addr - 1))
        start = addr + 1
    runs.append((start, hi))
    first, last = max(runs, key=lambda r: r[1] - r[0])
    if last - first + 1 < 4:
        raise InitError(f"subnet {network} leaves too few free addresses around {admin}")
    mid = first + (last - first + 1) // 2
    return (AddressRange(IPv4Address(first), IPv4Address(mid - 1)),
            AddressRange(IPv4Address(mid), IPv4Address(last)))


def render(found: Detected, state_dir: Path) -> str:
    static, dynamic = split_ranges(found.network, found.address, found.router)
    router = f'router = "{found.router}"\n' if found.router else \
        "# router = \"...\"        # no default gateway on this interface\n"
    return f"""\
# bootd configuration, written by `bootd init --interface {found.interface}`.
# Reference: README.md, section Configuration. Reload with `systemctl reload bootd`.

[server]
admin_address = "{found.address}"
interfaces = ["{found.interface}"]
state_dir = "{state_dir}"
# database_url = "postgresql+asyncpg://bootd:secret@db.example/bootd"  # default: SQLite in state_dir
log_level = "info"

[services]
dhcp = true
tftp = true
http = true
dns = true

[http]
listen = "{found.address}:{DEFAULT_HTTP_PORT}"

[[subnets]]
cidr = "{found.network}"
{router}dns_servers = ["{found.address}"]
domain = "bootd.internal"
lease_time = {DEFAULT_LEASE_TIME}
static_range = "{static}"    # known nodes: reserved addresses
dynamic_pool = "{dynamic}"   # unknown nodes while they are discovered
# bmc_range = "..."           # addresses handed to BMCs during hardware-install
"""


def write(path: Path, text: str, *, force: bool) -> None:
    parse_config(text, str(path))  # never write a config that `serve` would refuse
    if path.is_dir():
        raise InitError(f"{path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        fd = os.open(path, flags, 0o640)
    except FileExistsError:
        raise InitError(f"{path} exists; use --force to overwrite it") from None
    except OSError as exc:
        raise InitError(f"cannot write {path}: {exc.strerror}") from None
    # 0640 whatever the umask: in /etc/bootd (setgid, group bootd) the service user reads it.
    os.fchmod(fd, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
