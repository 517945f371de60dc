"""One TFTP transfer on its own connected socket, driven straight from the selector.

RFC 1350 section 4: each transfer gets a fresh transfer identifier, our own
UDP port, so many transfers run at once on one event loop with no thread or
process per transfer. The transfer socket is connect()ed to its client (as
tftpd-hpa does): the kernel then drops datagrams from any other source with
an ICMP port-unreachable instead of us answering error 5, sends take no route
lookup, and IP_MTU tells the path MTU that bounds blksize (RFC 2348).

asyncio's datagram transport costs more per packet than the whole session
logic (about 10 us against 2 us, measured): a lockstep transfer is one round
trip per block, so the transfer reads and writes its socket itself, with
loop.add_reader, and keeps one timer for the sans-IO session (session.py).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import Protocol

from bootd.tftp import packet as p
from bootd.tftp.session import ArmTimer, Done, ReadSession, Send

IP_MTU = 14  # <linux/in.h>; the socket module does not export it
TFTP_OVERHEAD = 20 + 8 + 4  # IPv4 header, UDP header, TFTP DATA header
RECV_SIZE = 1024  # client datagrams are ACKs and ERRORs; a longer one is cut and fails to parse
# A lone lockstep transfer waits this long for its next ACK before going back to
# the event loop: about one round trip to a client on the same segment, and far
# less than a wake-up from epoll costs on these VMs (measured: 5.7 -> 21 MB/s at
# blksize 512). The loop itself still gets its turn at least every SPIN_BUDGET.
SPIN_SECONDS = 100e-6
SPIN_BUDGET = 2e-3


def transfer_socket(local: str, peer: tuple[str, int]) -> tuple[socket.socket, int]:
    """A fresh port connected to the peer, and the path MTU to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((local, 0))
        sock.connect(peer)
        mtu = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError:
        sock.close()
        raise
    return sock, mtu


class Owner(Protocol):
    """What a transfer needs from the service that started it."""

    def running(self) -> int:
        """Transfers running now (a lone one may spin for its next ACK)."""

    def finished(self, transfer: Transfer, done: Done) -> None:
        """The transfer ended; its socket is closed."""


class Transfer:
    """One read transfer: the session's actions applied to one connected socket."""

    def __init__(self, owner: Owner, sock: socket.socket, peer: tuple[str, int], name: str,
                 session: ReadSession, request: bytes) -> None:
        self.owner, self.sock, self.peer, self.name = owner, sock, peer, name
        self.session, self.request = session, request
        self.fd = sock.fileno()
        self.backlog: deque[bytes] = deque()  # datagrams waiting for room in the send buffer
        self.closed = False
        # One timer per transfer, re-armed lazily: a window moves the deadline,
        # the callback re-schedules itself if it fires early (no heap churn per ACK).
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()  # for the transfer-time metric

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)
        self._apply(self.session.start(self.loop.time()))

    def stop(self, reason: str) -> None:
        self._finish(Done(False, reason))

    def _readable(self) -> None:
        # One datagram per wake-up (a second recv() would mostly fail with EAGAIN;
        # the selector is level-triggered), except for a lone lockstep transfer:
        # its next ACK is one round trip away, and waiting for it briefly here
        # saves the event loop's wake-up on every block (see SPIN_SECONDS).
        spin_until = 0.0
        budget_end = time.perf_counter() + SPIN_BUDGET
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                if spin_until and time.perf_counter() < spin_until:
                    continue
                return
            except ConnectionRefusedError:
                # ICMP port unreachable: the client's port is closed, it has gone away.
                self._finish(Done(False, "client went away (port unreachable)"))
                return
            except OSError as exc:
                self._finish(Done(False, f"receive failed: {exc.strerror}"))
                return
            self._datagram(data)
            if self.closed or self.session.windowsize != 1 or self.owner.running() != 1:
                return
            now = time.perf_counter()
            if now >= budget_end:
                return  # let the loop run: other services, new requests
            spin_until = now + SPIN_SECONDS

    def _datagram(self, data: bytes) -> None:
        # The socket is connected: only the client's datagrams arrive here.
        if len(data) == 4 and data[0] == 0 and data[1] == 4:  # ACK, the hot path
            actions = self.session.ack((data[2] << 8) | data[3], self.loop.time())
        else:
            try:
                packet = p.parse(data)
            except p.MalformedPacket as exc:
                actions = [Send(p.error(p.ErrorCode.ILLEGAL_OPERATION, str(exc))),
                           Done(False, f"malformed packet: {exc}")]
            else:
                actions = self.session.receive(packet, self.loop.time())
        if actions:
            self._apply(actions)

    def _send(self, data: bytes) -> None:
        if self.backlog:
            self.backlog.append(data)
            return
        try:
            self.sock.send(data)
        except BlockingIOError:
            self.backlog.append(data)
            self.loop.add_writer(self.fd, self._writable)
        except ConnectionRefusedError:
            self._finish(Done(False, "client went away (port unreachable)"))
        except OSError as exc:
            self._finish(Done(False, f"send failed: {exc.strerror}"))

    def _writable(self) -> None:
        while self.backlog:
            try:
                self.sock.send(self.backlog[0])
            except BlockingIOError:
                return
            except OSError as exc:
                self._finish(Done(False, f"send failed: {exc.strerror}"))
                return
            self.backlog.popleft()
        self.loop.remove_writer(self.fd)

    def _on_timer(self) -> None:
        self.timer = None
        now = self.loop.time()
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        self._apply(self.session.timeout(now))

    def _apply(self, actions: list[Send | ArmTimer | Done]) -> None:
        for action in actions:
            if self.closed:
                return
            if isinstance(action, Send):
                self._send(action.data)
            elif isinstance(action, ArmTimer):
                self.deadline = action.deadline
                if self.timer is None:
                    self.timer = self.loop.call_at(action.deadline, self._on_timer)
            else:
                self._finish(action)

    def _finish(self, done: Done) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.loop.remove_reader(self.fd)
        if self.backlog:
            self.loop.remove_writer(self.fd)
            self.backlog.clear()
        self.sock.close()
        self.owner.finished(self, done)
