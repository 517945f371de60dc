"""DHCP sockets: thin. Receive, hand the bytes on, send what comes back.

One UDP socket per (interface, port), bound to 0.0.0.0 with SO_BINDTODEVICE,
so that broadcasts arrive and leave on exactly the configured interfaces and
nowhere else, and several interfaces can share port 67 (SO_REUSEADDR). Relayed
messages arrive unicast on the same sockets. IP_PKTINFO tells which local
address a message was sent to (broadcast or our unicast address).

Every wakeup drains what the socket holds (up to DRAIN datagrams) from one
reader callback (no task, no thread per packet) into the service's backlog,
which decides what is worth answering (server.py, backlog.py); a socket error
on send is logged and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from bootd.logs import kv
from bootd.service import BindError

log = logging.getLogger("bootd.dhcp")
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
DRAIN = 1024


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    source: tuple[str, int]
    local: IPv4Address | None  # destination address of the datagram (IP_PKTINFO)


Handler = Callable[["DhcpSocket", Datagram], None]


class DhcpSocket:
    def __init__(self, interface: str, port: int, handler: Handler) -> None:
        self.interface, self.port = interface, port
        self._handler = handler
        self._sock: socket.socket | None = None
        self.send_errors = 0
        self._locals: dict[bytes, IPv4Address] = {}  # our addresses (and broadcast), few

    def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.bind(("0.0.0.0", self.port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise BindError(f"DHCP cannot listen on {self.interface} port {self.port}: "
                            f"{exc.strerror or exc}") from None
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        recvmsg, handler, locals_ = sock.recvmsg, self._handler, self._locals
        for _ in range(DRAIN):
            try:
                data, ancdata, _flags, source = recvmsg(4096, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("receive failed", extra=kv(interface=self.interface, reason=exc.strerror))
                return
            local = None
            for level, kind, payload in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= _PKTINFO.size:
                    raw = payload[8:12]  # in_pktinfo.ipi_addr: the header's destination
                    local = locals_.get(raw)
                    if local is None:
                        local = IPv4Address(raw)
                        if len(locals_) < 64:
                            locals_[raw] = local
            handler(self, Datagram(data, source, local))

    def send(self, data: bytes, ip: IPv4Address, port: int) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(data, (str(ip), port))
            return True
        except OSError as exc:
            self.send_errors += 1
            log.warning("send failed", extra=kv(interface=self.interface, to=f"{ip}:{port}",
                                                reason=exc.strerror))
            return False

    def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
