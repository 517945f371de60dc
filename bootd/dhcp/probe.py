"""Conflict checks: is anybody already using an address we are about to offer?

On a subnet we are attached to, an ARP probe (RFC 5227 section 2.1.1: sender IP
0.0.0.0, so no neighbour cache is disturbed) for each address; any ARP packet
from that address within the window means it is taken. Behind a relay, where
ARP cannot reach, an ICMP echo (RFC 792) instead.

Probes run ahead of demand and in batches (the server keeps a stock of
probed-free addresses per pool), never in the reply path: a ping before each
offer is what makes dnsmasq add seconds to every new client (LAB-NOTES).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from ipaddress import IPv4Address

log = logging.getLogger("bootd.dhcp.probe")
ETH_P_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6


def _arp_probe(src_mac: bytes, target: int) -> bytes:
    eth = BROADCAST_MAC + src_mac + struct.pack("!H", ETH_P_ARP)
    # htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src_mac, bytes(4), bytes(6),
                      struct.pack("!I", target))
    return eth + arp


class ArpProber:
    def __init__(self, interface: str, mac: bytes, window: float = 0.5) -> None:
        self.interface, self.mac, self.window = interface, mac, window

    async def probe(self, targets: list[int]) -> set[int]:
        """The subset of targets that answered (in use)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        sock.setblocking(False)
        try:
            sock.bind((self.interface, ETH_P_ARP))
            wanted, taken = set(targets), set[int]()
            for ip in targets:
                sock.send(_arp_probe(self.mac, ip))
            deadline = time.monotonic() + self.window
            while (left := deadline - time.monotonic()) > 0 and taken != wanted:
                try:
                    frame = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
                except TimeoutError:
                    break
                if len(frame) >= 42 and frame[12:14] == b"\x08\x06":
                    sender_ip = struct.unpack("!I", frame[28:32])[0]
                    if sender_ip in wanted:
                        taken.add(sender_ip)
            return taken
        finally:
            sock.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class IcmpProber:
    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.ident = os.getpid() & 0xFFFF

    async def probe(self, targets: list[int]) -> set[int]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setblocking(False)
        try:
            wanted, taken = set(targets), set[int]()
            for seq, ip in enumerate(targets):
                header = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq & 0xFFFF)
                packet = struct.pack("!BBHHH", 8, 0, _checksum(header + b"bootd"), self.ident,
                                     seq & 0xFFFF) + b"bootd"
                try:
                    sock.sendto(packet, (str(IPv4Address(ip)), 0))
                except OSError:
                    continue  # no route: nobody we could collide with is reachable either
            deadline = time.monotonic() + self.window
            while (left := deadline - time.monotonic()) > 0 and taken != wanted:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4 if data else 0
                if len(data) >= ihl + 8 and data[ihl] == 0:  # echo reply
                    source = struct.unpack("!I", data[12:16])[0]
                    if source in wanted:
                        taken.add(source)
            return taken
        finally:
            sock.close()
