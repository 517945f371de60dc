"""A hostile host's flood, run inside a lab namespace by tests/test_flood_lab.py.

Half PXE DHCPDISCOVERs from random (spoofed) MACs as raw Ethernet broadcasts,
half TFTP RRQs with random names and options from random source ports. The
frames are built once with scapy (the oracle) and mutated in place, so the
flood is limited by the kernel, not by packet building. Bounded in count and
time; prints a JSON summary.

    python3 tests/flood.py IFNAME SERVER_IP PACKETS [both|dhcp|tftp]
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

ETH_P_ALL = 0x0003


def discover_template() -> bytearray:
    frame = (Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01")
             / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
             / BOOTP(chaddr=bytes.fromhex("020000000001") + bytes(10), xid=1, flags=0x8000)
             / DHCP(options=[("message-type", "discover"),
                             ("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
                             ("client_architecture", b"\x00\x00"), "end"]))
    return bytearray(bytes(frame))


def rrq(rng: random.Random) -> bytes:
    name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz/._-01") for _ in range(rng.randint(1, 200)))
    parts = [b"\x00\x01", name.encode(), b"\x00", rng.choice([b"octet", b"netascii", b"mail", b"x"]), b"\x00"]
    for _ in range(rng.randint(0, 6)):
        key = rng.choice([b"blksize", b"tsize", b"timeout", b"windowsize", b"junk" * rng.randint(1, 30)])
        parts += [key, b"\x00", str(rng.randint(-5, 70000)).encode(), b"\x00"]
    return b"".join(parts)


def main() -> None:
    ifname, server, packets = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "both"
    rng = random.Random(1)
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    raw.bind((ifname, 0))
    frame = discover_template()
    frame[40:42] = b"\x00\x00"  # UDP checksum 0 = none (RFC 768): the mutations below keep it valid
    # Ethernet 14 + IP 20 + UDP 8 = 42: BOOTP xid at +4, chaddr at +28.
    xid_at, chaddr_at = 42 + 4, 42 + 28
    udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    for s in udp:
        s.setblocking(False)
    start, sent_dhcp, sent_tftp = time.monotonic(), 0, 0
    deadline = start + 60.0
    for i in range(packets):
        if time.monotonic() > deadline:
            break
        if mode == "dhcp" or (mode == "both" and i % 2 == 0):
            mac = bytes([0x02]) + os.urandom(5)
            frame[6:12] = mac
            frame[chaddr_at:chaddr_at + 6] = mac
            frame[xid_at:xid_at + 4] = os.urandom(4)
            try:
                raw.send(frame)
                sent_dhcp += 1
            except OSError:
                time.sleep(0.001)
        else:
            try:
                rng.choice(udp).sendto(rrq(rng), (server, 69))
                sent_tftp += 1
            except OSError:
                time.sleep(0.001)
    print(json.dumps({"dhcp": sent_dhcp, "tftp": sent_tftp, "seconds": round(time.monotonic() - start, 2)}))


if __name__ == "__main__":
    main()
