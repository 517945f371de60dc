"""Watching the admin links for other DHCP servers: the sockets (thin; decisions in rogue.py).

One packet socket per admin interface (AF_PACKET, SOCK_DGRAM, ETH_P_IP; needs
CAP_NET_RAW, which the daemon keeps for ARP probes) with a classic BPF filter
(packet(7), SO_ATTACH_FILTER) that passes only unfragmented IPv4 UDP to port 68:
the kernel drops every other frame (installers' HTTP traffic) before we see it.
Why not a UDP socket bound to port 68: it would not tell the server's MAC (the
packet socket gives the Ethernet source), and it would share port 68 with a DHCP
client on the admin node itself, which could lose unicast replies to it. The
packet socket binds no port and takes nothing from anyone.

Passive: every OFFER/ACK arriving on the interface is examined (rogue.examine)
and a foreign one reported. We see what reaches our NIC: broadcast replies (a
client without an address, or one that set the broadcast flag, RFC 2131 section
4.1) and replies to us; a reply unicast to another machine is not visible
without promiscuous capture (and on a switched network, not even then), so
passive watching misses servers whose clients never ask for broadcast. The
active probe covers that.

Active: every `probe_interval` seconds, on each interface, a DISCOVER
(rogue.build_probe) from 0.0.0.0:68 to 255.255.255.255:67, sent as a whole IPv4
packet on the same packet socket. Our own DHCP server does not see it (a
packet socket's frames are not looped back to the local IP stack), so it never
answers or records our probe. Replies carrying the probe's xid and chaddr in
the next `probe_wait` seconds are reported as active findings.

Frames we send (our own server's replies) come back as PACKET_OUTGOING and
are skipped; a broken packet is counted and dropped; a socket error on one
interface is logged (rate-limited) and never stops the daemon.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import secrets
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

import netifaces

from bootd.config import Config
from bootd.dhcp.options import MalformedPacket
from bootd.dhcp.rogue import (
    CLIENT_PORT,
    Identity,
    Verdict,
    answers_probe,
    build_probe,
    frame,
    probe_mac,
    read,
    unframe,
)
from bootd.logs import Throttle, kv
from bootd.model.findings import Method, Sighting

log = logging.getLogger("bootd.dhcp.rogue")
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
BATCH = 64
IDLE = 60.0  # seconds between looks at the config when probing is off

# Classic BPF over the network header (a SOCK_DGRAM packet socket's filter starts
# there): IPv4 UDP, not a fragment, destination port 68.
_BPF = (
    (0x30, 0, 0, 9),        # ldb [9]             protocol
    (0x15, 0, 5, 17),       # jeq #17 (UDP)       else drop
    (0x28, 0, 0, 6),        # ldh [6]             flags, fragment offset
    (0x45, 3, 0, 0x3FFF),   # jset MF|offset      drop
    (0xB1, 0, 0, 0),        # ldx 4*([0]&0xf)     IP header length
    (0x48, 0, 0, 2),        # ldh [x+2]           UDP destination port
    (0x15, 0, 1, CLIENT_PORT),  # jeq #68         else drop
    (0x06, 0, 0, 0xFFFF),   # ret: accept
    (0x06, 0, 0, 0),        # ret: drop
)


class Reporter(Protocol):
    """Where findings go (the fleet findings service): called on the event loop, must be quick."""

    def sighted(self, sighting: Sighting) -> None: ...


def _attach_filter(sock: socket.socket) -> None:
    program = b"".join(struct.pack("HBBI", *ins) for ins in _BPF)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(_BPF), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


@dataclass
class _Probe:
    chaddr: bytes
    xid: int
    until: float


class _Link:
    def __init__(self, interface: str, sock: socket.socket, mac: bytes | None) -> None:
        self.interface, self.sock, self.mac = interface, sock, mac
        self.probe: _Probe | None = None


def _addresses(interface: str) -> list[IPv4Address]:
    try:
        entries = netifaces.ifaddresses(interface).get(netifaces.AF_INET, [])
    except ValueError:
        return []
    return [IPv4Address(e["addr"]) for e in entries if "addr" in e]


def _mac(interface: str) -> bytes | None:
    try:
        links = netifaces.ifaddresses(interface).get(netifaces.AF_LINK, [])
    except ValueError:
        return None
    text = links[0].get("addr", "") if links else ""
    return bytes.fromhex(text.replace(":", "")) if len(text) == 17 else None


class RogueWatcher:
    """The service: one packet socket per admin interface, the passive watch and the probes."""

    name = "rogue-dhcp"

    def __init__(self, config: Config, reporter: Reporter, *,
                 interfaces: Collection[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._reporter = reporter
        self._interfaces = tuple(interfaces if interfaces is not None else config.interfaces)
        self._clock = clock
        self._links: dict[str, _Link] = {}
        self._counters: Counter[str] = Counter()
        self._say = Throttle(60.0, keys=256)
        self.identity = Identity(frozenset({config.admin_address}), frozenset(config.rogue.allowed),
                                 config.dhcp.mode)

    @property
    def counters(self) -> Mapping[str, int]:
        """received, malformed, one key per rogue.Verdict, probes, send_errors."""
        return self._counters

    # -- service ------------------------------------------------------------------------

    async def start(self) -> None:
        own = {self.config.admin_address}
        for interface in self._interfaces:
            own.update(_addresses(interface))
            try:
                # Protocol 0: nothing is queued until the bind below, after the filter is on
                # (a socket made with ETH_P_IP hears every interface until it is bound).
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
            except PermissionError as exc:
                log.warning("cannot watch for other DHCP servers: no CAP_NET_RAW",
                            extra=kv(interface=interface, reason=exc.strerror))
                continue
            try:
                _attach_filter(sock)
                sock.bind((interface, ETH_P_IP))  # Python converts the protocol to network order
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                log.warning("cannot watch for other DHCP servers",
                            extra=kv(interface=interface, reason=exc.strerror or str(exc)))
                continue
            link = _Link(interface, sock, _mac(interface))
            self._links[interface] = link
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, link)
        self.identity = Identity(frozenset(own), self.identity.allowed, self.identity.mode)
        log.info("watching for other DHCP servers", extra=kv(
            interfaces=",".join(self._links) or "-", passive=self.config.rogue.watch,
            probe_interval=self.config.rogue.probe_interval))

    async def run(self) -> None:
        # probe_interval is re-read each round: a reload (SIGHUP) may turn probing on or off.
        while True:
            interval = self.config.rogue.probe_interval
            if interval <= 0 or not self._links:
                await asyncio.sleep(IDLE)  # passive only (or nothing): a service never returns
                continue
            await asyncio.gather(*(self.probe(link.interface) for link in list(self._links.values())))
            await asyncio.sleep(max(0.0, interval - self.config.rogue.probe_wait))

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for link in self._links.values():
            loop.remove_reader(link.sock.fileno())
            link.sock.close()
        self._links.clear()

    def reconfigure(self, config: Config) -> None:
        # allowed, watch, probe_wait take effect now; interfaces and probe_interval at a restart.
        own = self.identity.own - {self.config.admin_address} | {config.admin_address}
        self.config = config
        self.identity = Identity(own, frozenset(config.rogue.allowed), config.dhcp.mode)

    # -- the probe ------------------------------------------------------------------------

    async def probe(self, interface: str) -> None:
        """One DISCOVER on `interface`; answers in the next probe_wait seconds are active findings."""
        link = self._links.get(interface)
        if link is None or link.mac is None:
            return
        wait = self.config.rogue.probe_wait
        probe = _Probe(probe_mac(link.mac), secrets.randbits(32), self._clock() + wait)
        data = frame(build_probe(probe.chaddr, probe.xid), ident=probe.xid & 0xFFFF)
        try:
            link.sock.sendto(data, (interface, ETH_P_IP, 0, 0, b"\xff" * 6))
        except OSError as exc:
            self._counters["send_errors"] += 1
            if self._say(time.monotonic(), interface, "send"):
                log.warning("probe DISCOVER not sent", extra=kv(interface=interface,
                                                                reason=exc.strerror or str(exc)))
            return
        self._counters["probes"] += 1
        link.probe = probe
        await asyncio.sleep(wait)
        if link.probe is probe:
            link.probe = None

    # -- receiving ------------------------------------------------------------------------

    def _readable(self, link: _Link) -> None:
        for _ in range(BATCH):
            try:
                data, address = link.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if self._say(time.monotonic(), link.interface, "receive"):
                    log.warning("receive failed", extra=kv(interface=link.interface,
                                                           reason=exc.strerror or str(exc)))
                return
            if len(address) >= 5 and address[2] == PACKET_OUTGOING:
                continue  # our own frames (our server's replies, our probes)
            mac = address[4][:6].hex(":") if len(address) >= 5 else ""
            self._received(link, data, mac)

    def _received(self, link: _Link, data: bytes, mac: str) -> None:
        self._counters["received"] += 1
        try:
            datagram = unframe(data)
        except MalformedPacket as exc:
            self._malformed(link, str(exc))
            return
        e = read(datagram.payload, datagram.source, self.identity)
        if e.verdict is Verdict.MALFORMED:
            self._malformed(link, e.reason)
            return
        self._counters[e.verdict.value] += 1
        if e.verdict is not Verdict.FOREIGN or e.server_ip is None or e.offered is None:
            return
        probe = link.probe
        active = (probe is not None and self._clock() <= probe.until
                  and answers_probe(e, probe.chaddr, probe.xid))
        if active or self.config.rogue.watch:
            self._counters["answers"] += 1
            self._reporter.sighted(Sighting(link.interface, e.server_ip, mac,
                                            Method.ACTIVE if active else Method.PASSIVE, e.offered))

    def _malformed(self, link: _Link, reason: str) -> None:
        self._counters["malformed"] += 1
        if self._say(time.monotonic(), link.interface, "malformed"):
            log.info("malformed DHCP reply dropped (counted; logged once a minute)",
                     extra=kv(interface=link.interface, reason=reason))
