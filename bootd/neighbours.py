"""Which link-layer address the kernel has for an IPv4 neighbour (/proc/net/arp).

A lease says that bootd gave an address to a MAC; it does not say that the host
now speaking from that address is that MAC: a spoofed DHCP exchange (someone
else's chaddr, a client id of one's own) can bind a pool address to a victim's
MAC. For a peer on a directly attached subnet the kernel's ARP entry names the
machine that actually answers for the address, so the policy checks it before it
hands out a node's token. Through a relay the neighbour is the router, so no
entry is found for the peer itself and the lease is all there is.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

ARP_TABLE = Path("/proc/net/arp")
COMPLETE = 0x2  # ATF_COM: the entry has a link-layer address


def link_address(ip: IPv4Address, table: Path = ARP_TABLE) -> str | None:
    """The MAC of a complete ARP entry for `ip` in this network namespace, or None."""
    try:
        text = table.read_text()
    except OSError:
        return None
    wanted = str(ip)
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[0] == wanted:
            try:
                complete = int(fields[2], 16) & COMPLETE
            except ValueError:
                continue
            if complete:
                return fields[3].lower()
    return None
