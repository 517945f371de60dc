"""IPv6 router advertisements with router lifetime 0 on the admin interfaces.

Why: firmware with an IPv6 stack solicits routers when its link comes up and
waits for IPv6 autoconfiguration before it boots; iPXE waits about 13 s on a
link with no router, even after its DHCPv4 lease (LAB-NOTES). A Router
Advertisement (RFC 4861 section 4.2) with router lifetime 0 ("not a default
router"), M and O clear and no prefix tells it at once that there is nothing
more to configure: no default route, no DHCPv6, only its link-local address.

Codec (pure, total): `RouterAdvertisement.pack`/`unpack` and
`RouterSolicitation.unpack` (section 4.1), with the source link-layer address
option (section 4.6.1). Garbage raises `MalformedMessage`. The checksum is left
0: the kernel computes it for raw ICMPv6 sockets (RFC 3542 section 3.1).

Schedule (pure, the caller's clock and random source), per interface:
- unsolicited RAs to ff02::1 at intervals drawn uniformly from
  [MinRtrAdvInterval, MaxRtrAdvInterval] (section 6.2.4; `[ra] interval` is the
  maximum, the minimum its default 0.33x), the first
  MAX_INITIAL_RTR_ADVERTISEMENTS at most MAX_INITIAL_RTR_ADVERT_INTERVAL apart;
- each Router Solicitation answered after a random 0-MAX_RA_DELAY_TIME delay
  (section 6.2.6): unicast to a solicitor that has an address (allowed there),
  at most ANSWER_RATE a second per interface; beyond that, or from the
  unspecified address, one multicast answer at most every MIN_DELAY_BETWEEN_RAS.

Transport: one raw ICMPv6 socket per admin interface, bound to its link-local
address (an RA must come from one, section 6.1.2), hop limit 255 (receivers
drop anything else), joined to ff02::2 (a host's interface does not receive
all-routers traffic otherwise) and filtered to Router Solicitations
(ICMP6_FILTER). An interface without a usable link-local address (IPv6
disabled, or duplicate address detection still running) is said once in the
log and retried every RETRY_SECONDS: never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path

from bootd.config import Config
from bootd.logs import kv
from bootd.model.bucket import TokenBucket
from bootd.service import BindError

log = logging.getLogger("bootd.ra")

ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT = 133, 134
OPTION_SOURCE_LLA = 1
ALL_NODES, ALL_ROUTERS = "ff02::1", "ff02::2"
HOP_LIMIT = 255               # section 6.1.2: sent and required on receipt
CUR_HOP_LIMIT = 64            # what hosts should use as their own hop limit
# RFC 4861 section 10, router constants.
MAX_INITIAL_RTR_ADVERT_INTERVAL = 16.0
MAX_INITIAL_RTR_ADVERTISEMENTS = 3
MAX_RA_DELAY_TIME = 0.5
MIN_DELAY_BETWEEN_RAS = 3.0
# Unicast answers per second per interface (a rack booting at the BMC power-on rate
# sends a few RS a second); beyond that the multicast answer serves everyone.
ANSWER_RATE, ANSWER_BURST = 20.0, 50.0
RETRY_SECONDS = 2.0
IF_INET6 = Path("/proc/net/if_inet6")
IFA_F_TENTATIVE, IFA_F_DADFAILED = 0x40, 0x08
SCOPE_LINK = 0x20
ICMP6_FILTER = 1  # linux/icmpv6.h; not in Python's socket module


class MalformedMessage(ValueError):
    """Bytes that are not a valid message of the kind asked for (RFC 4861 section 6.1)."""


def _options(data: bytes) -> dict[int, bytes]:
    """Options (section 4.6): type, length in units of 8 octets (never 0), value."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        if len(data) - i < 2 or data[i + 1] == 0:
            raise MalformedMessage("option with length 0 or truncated")
        end = i + 8 * data[i + 1]
        if end > len(data):
            raise MalformedMessage("option runs past the message")
        out.setdefault(data[i], data[i + 2:end])
        i = end
    return out


def _lla_option(mac: bytes) -> bytes:
    body = bytes([OPTION_SOURCE_LLA, 0]) + mac
    body += bytes(-len(body) % 8)
    return body[:1] + bytes([len(body) // 8]) + body[2:]


def _lla(options: dict[int, bytes]) -> bytes | None:
    value = options.get(OPTION_SOURCE_LLA)
    return value[:6] if value is not None else None  # Ethernet: 6 octets, padding after


@dataclass(frozen=True)
class RouterAdvertisement:
    """Section 4.2. The defaults are what bootd sends: not a router, nothing to configure."""

    cur_hop_limit: int = CUR_HOP_LIMIT
    managed: bool = False
    other: bool = False
    router_lifetime: int = 0   # seconds; 0: not a default router
    reachable_time: int = 0    # ms; 0: unspecified
    retrans_timer: int = 0     # ms; 0: unspecified
    source_lla: bytes | None = None

    def pack(self) -> bytes:
        flags = (0x80 if self.managed else 0) | (0x40 if self.other else 0)
        head = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, self.cur_hop_limit, flags,
                           self.router_lifetime, self.reachable_time, self.retrans_timer)
        return head + (_lla_option(self.source_lla) if self.source_lla is not None else b"")

    @classmethod
    def unpack(cls, data: bytes) -> RouterAdvertisement:
        if len(data) < 16:
            raise MalformedMessage("shorter than a router advertisement")
        kind, code, _, hops, flags, lifetime, reachable, retrans = struct.unpack_from("!BBHBBHII", data)
        if kind != ROUTER_ADVERTISEMENT or code != 0:
            raise MalformedMessage(f"type {kind} code {code} is not a router advertisement")
        return cls(hops, bool(flags & 0x80), bool(flags & 0x40), lifetime, reachable, retrans,
                   _lla(_options(data[16:])))


@dataclass(frozen=True)
class RouterSolicitation:
    """Section 4.1."""

    source_lla: bytes | None = None

    def pack(self) -> bytes:
        head = struct.pack("!BBHI", ROUTER_SOLICITATION, 0, 0, 0)
        return head + (_lla_option(self.source_lla) if self.source_lla is not None else b"")

    @classmethod
    def unpack(cls, data: bytes, *, unspecified_source: bool = False) -> RouterSolicitation:
        if len(data) < 8:
            raise MalformedMessage("shorter than a router solicitation")
        if data[0] != ROUTER_SOLICITATION or data[1] != 0:
            raise MalformedMessage(f"type {data[0]} code {data[1]} is not a router solicitation")
        lla = _lla(_options(data[8:]))
        if lla is not None and unspecified_source:  # section 6.1.1
            raise MalformedMessage("source link-layer address option from the unspecified address")
        return cls(lla)


def link_local(if_inet6: str, interface: str) -> tuple[IPv6Address | None, bool]:
    """The interface's link-local address from /proc/net/if_inet6's text, and whether it
    is still tentative (duplicate address detection running: not bindable yet)."""
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) != 6 or fields[5] != interface or int(fields[3], 16) != SCOPE_LINK:
            continue
        flags = int(fields[4], 16)
        if flags & IFA_F_DADFAILED:
            continue
        return IPv6Address(bytes.fromhex(fields[0])), bool(flags & IFA_F_TENTATIVE)
    return None, False


class Schedule:
    """When one interface advertises (sections 6.2.4, 6.2.6); pure, the caller's clock."""

    def __init__(self, interval: float, rng: random.Random, now: float) -> None:
        self.max_interval = interval
        self.min_interval = 0.33 * interval if interval >= 9 else interval  # section 6.2.1 defaults
        self.rng = rng
        self.sent = 0
        self.last_multicast = -MIN_DELAY_BETWEEN_RAS
        self.multicast_due: float | None = None
        self.bucket = TokenBucket(ANSWER_BURST, now)

    def unsolicited(self, now: float) -> float:
        """An unsolicited RA goes out now; returns seconds until the next one."""
        self.sent += 1
        self.last_multicast = now
        delay = self.rng.uniform(self.min_interval, self.max_interval)
        if self.sent <= MAX_INITIAL_RTR_ADVERTISEMENTS:
            delay = min(delay, MAX_INITIAL_RTR_ADVERT_INTERVAL)
        return delay

    def solicited(self, now: float, *, unicast: bool) -> tuple[float, bool] | None:
        """An RS arrived: (seconds to wait, unicast?) for the answer, or None (one is due)."""
        delay = self.rng.uniform(0.0, MAX_RA_DELAY_TIME)
        if unicast and self.bucket.take(now, ANSWER_RATE, ANSWER_BURST):
            return delay, True
        if self.multicast_due is not None and self.multicast_due >= now:
            return None  # the answer already scheduled serves this solicitor too
        due = max(now, self.last_multicast + MIN_DELAY_BETWEEN_RAS) + delay
        self.multicast_due = self.last_multicast = due
        return due - now, False


class _Link:
    """One interface's socket; sends and reads, nothing else."""

    def __init__(self, interface: str, sock: socket.socket, address: IPv6Address, mac: bytes | None) -> None:
        self.interface, self.sock, self.address = interface, sock, address
        self.index = socket.if_nametoindex(interface)
        self.advertisement = RouterAdvertisement(source_lla=mac).pack()
        self.handles: set[asyncio.TimerHandle] = set()

    def send(self, to: str) -> bool:
        try:
            self.sock.sendto(self.advertisement, (to, 0, 0, self.index))
        except OSError as exc:  # buffer full, link down, address gone: the next one may pass
            log.debug("advertisement not sent", extra=kv(interface=self.interface, to=to, reason=str(exc)))
            return False
        return True

    def close(self) -> None:
        for handle in self.handles:
            handle.cancel()
        self.handles.clear()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()


def _open(interface: str, address: IPv6Address) -> socket.socket:
    index = socket.if_nametoindex(interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setblocking(False)
        blocked = [0xFFFFFFFF] * 8
        blocked[ROUTER_SOLICITATION >> 5] &= ~(1 << (ROUTER_SOLICITATION & 31))
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *blocked))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        sock.bind((str(address), 0, 0, index))  # also binds the socket to the interface
        group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
    except OSError:
        sock.close()
        raise
    return sock


def _mac(interface: str) -> bytes | None:
    try:
        text = Path(f"/sys/class/net/{interface}/address").read_text().strip()
    except OSError:
        return None
    return bytes.fromhex(text.replace(":", "")) if len(text) == 17 else None


class RaService:
    name = "ra"

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, if_inet6: Path = IF_INET6) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not a secret
        self._if_inet6 = if_inet6
        self._links: dict[str, _Link] = {}
        self._said: dict[str, str] = {}  # interface -> the last state logged
        self._schedules: dict[str, Schedule] = {}
        self.counters: Counter[str] = Counter()

    def _say(self, interface: str, state: str, message: str, **fields: str) -> None:
        if self._said.get(interface) != state:
            self._said[interface] = state
            log.info(message, extra=kv(interface=interface, **fields))

    def _link(self, interface: str) -> _Link | None:
        """The interface's open link, opening it if its link-local address is usable now."""
        link = self._links.get(interface)
        if link is not None:
            return link
        try:
            text = self._if_inet6.read_text()
        except OSError:
            text = ""  # no IPv6 in this kernel
        address, tentative = link_local(text, interface)
        if address is None:
            self._say(interface, "none", "no IPv6 link-local address (IPv6 disabled?); no router "
                      "advertisements until it has one")
            return None
        if tentative:
            self._say(interface, "tentative", "link-local address still tentative; waiting",
                      address=str(address))
            return None
        try:
            sock = _open(interface, address)
        except PermissionError as exc:
            raise BindError(f"router advertisements need CAP_NET_RAW ({exc.strerror}); "
                            "or set [ra] enabled = false") from None
        except OSError as exc:
            # EADDRNOTAVAIL: DAD between the read and the bind; the interface may be gone.
            self._say(interface, f"error {exc.errno}", "cannot open the ICMPv6 socket; retrying",
                      reason=exc.strerror or str(exc))
            return None
        link = _Link(interface, sock, address, _mac(interface))
        self._links[interface] = link
        asyncio.get_running_loop().add_reader(sock, self._readable, link)
        self._say(interface, "up", "advertising: router lifetime 0", address=str(address))
        return link

    def _drop_link(self, link: _Link) -> None:
        link.close()
        if self._links.get(link.interface) is link:
            del self._links[link.interface]

    async def start(self) -> None:
        if not self.config.ra.enabled:
            return
        self._schedules = {i: Schedule(self.config.ra.interval, self._rng, self._clock())
                           for i in self.config.interfaces}
        for interface in self.config.interfaces:
            self._link(interface)

    async def run(self) -> None:
        if not self._schedules:
            await asyncio.Event().wait()  # disabled or no interfaces; a service never returns
        async with asyncio.TaskGroup() as group:
            for interface in self.config.interfaces:
                group.create_task(self._advertise(interface), name=f"ra {interface}")

    async def _advertise(self, interface: str) -> None:
        schedule = self._schedules[interface]
        while True:
            link = self._link(interface)
            if link is None:
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if link.send(ALL_NODES):
                self.counters["unsolicited"] += 1
                await asyncio.sleep(schedule.unsolicited(self._clock()))
            else:  # the address or the interface may have changed: look again, reopen
                self.counters["send-errors"] += 1
                self._drop_link(link)
                await asyncio.sleep(RETRY_SECONDS)

    def _readable(self, link: _Link) -> None:
        """Read every pending solicitation (the socket's filter passes only RS)."""
        for _ in range(64):  # bounded per wake-up; the rest wait for the next
            try:
                data, ancillary, _, source = link.sock.recvmsg(1500, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("ICMPv6 socket failed; reopening", extra=kv(interface=link.interface,
                                                                         reason=str(exc)))
                self._drop_link(link)
                return
            self._solicitation(link, data, ancillary, source[0].split("%")[0])

    def _solicitation(self, link: _Link, data: bytes, ancillary: list[tuple[int, int, bytes]],
                      source: str) -> None:
        hops = next((struct.unpack("@i", d[:4])[0] for level, kind, d in ancillary
                     if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(d) >= 4), None)
        unspecified = IPv6Address(source).is_unspecified
        try:
            if hops != HOP_LIMIT:
                raise MalformedMessage(f"hop limit {hops}, not {HOP_LIMIT}")
            RouterSolicitation.unpack(data, unspecified_source=unspecified)
        except MalformedMessage:
            self.counters["malformed"] += 1
            return
        self.counters["solicitations"] += 1
        schedule = self._schedules[link.interface]
        answer = schedule.solicited(self._clock(), unicast=not unspecified)
        if answer is None:
            return
        delay, unicast = answer
        loop = asyncio.get_running_loop()
        now = loop.time()
        link.handles = {h for h in link.handles if h.when() > now}  # bounded by the schedule's limits
        link.handles.add(loop.call_later(delay, self._answer, link, source if unicast else ALL_NODES))

    def _answer(self, link: _Link, to: str) -> None:
        self.counters["answers" if link.send(to) else "send-errors"] += 1

    async def stop(self) -> None:
        for link in list(self._links.values()):
            self._drop_link(link)
        if self.counters:
            log.info("stopped", extra=kv(**{k: str(v) for k, v in sorted(self.counters.items())}))

    def reconfigure(self, config: Config) -> None:
        self.config = config  # [ra] and the interfaces take effect after a restart
