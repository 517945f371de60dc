"""The TFTP service (read-only): requests on port 69, one ephemeral port per transfer.

RFC 1350 section 4: each transfer gets a fresh transfer identifier, our own
UDP port, so many transfers run at once on one event loop with no thread or
process per transfer. The transfer socket is connect()ed to its client (as
tftpd-hpa does): the kernel then drops datagrams from any other source with
an ICMP port-unreachable instead of us answering error 5, sends take no route
lookup, and IP_MTU tells the path MTU that bounds blksize (RFC 2348).

Content: names the policy knows (per-node pxelinux and GRUB configs) are
generated for the asking machine; everything else comes from files under the
TFTP root (files.resolve), read once in a worker thread into a bounded memory
cache shared by every transfer of that file, so the loop never waits on the
disk and the iPXE binary every node asks for is read once. (Not mmap: a file
truncated under a live mapping kills the process with SIGBUS.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import netifaces

from bootd.config import Config
from bootd.files import Missing, Refused, clean_parts, resolve
from bootd.logs import Throttle, kv
from bootd.policy import Policy
from bootd.service import BindError
from bootd.tftp import packet as p
from bootd.tftp.session import MAX_BLKSIZE, ArmTimer, Done, Limits, ReadSession, Send

log = logging.getLogger("bootd.tftp")
IP_MTU = 14  # <linux/in.h>; the socket module does not export it
TFTP_OVERHEAD = 20 + 8 + 4  # IPv4 header, UDP header, TFTP DATA header
REFUSAL_LOG_INTERVAL = 60.0
RECV_SIZE = 1024  # client datagrams are ACKs and ERRORs; a longer one is cut and fails to parse
STALE_REQUEST_WINDOW = 2.0  # seconds: the same request from the same port right after completing
# A lone lockstep transfer waits this long for its next ACK before going back to
# the event loop: about one round trip to a client on the same segment, and far
# less than a wake-up from epoll costs on these VMs (measured: 5.7 -> 21 MB/s at
# blksize 512). The loop itself still gets its turn at least every SPIN_BUDGET.
SPIN_SECONDS = 100e-6
SPIN_BUDGET = 2e-3


class TooLarge(Refused):
    """A file bigger than the whole cache."""


class FileCache:
    """Files under the root, in memory, least recently used dropped past the budget.

    An entry is reused while the file's inode, size and mtime are unchanged, so
    a replaced loader is served fresh on the next request; transfers already
    running keep the bytes they started with.
    """

    def __init__(self, root: Path, budget: int) -> None:
        self.root, self.budget = root, budget
        self._entries: OrderedDict[Path, tuple[tuple[int, int, int], bytes]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()  # load() runs in worker threads

    def load(self, name: str) -> bytes:
        """Blocking: call in a worker thread. Raises Refused or Missing."""
        path = resolve(self.root, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise Missing(exc.strerror or "cannot open") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused("not a regular file")
            if st.st_size > self.budget:
                raise TooLarge(f"{st.st_size} bytes is more than tftp.cache_mb allows; "
                               "fetch it over HTTP")
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            with self._lock:
                cached = self._entries.get(path)
                if cached is not None and cached[0] == key:
                    self._entries.move_to_end(path)
                    return cached[1]
            content = _read_all(fd, st.st_size)
        except OSError as exc:
            raise Missing(exc.strerror or "cannot open") from None
        finally:
            os.close(fd)
        with self._lock:
            old = self._entries.pop(path, None)
            if old is not None:
                self._size -= len(old[1])
            self._entries[path] = (key, content)
            self._size += len(content)
            while self._size > self.budget and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._size -= len(dropped)
        return content


def _read_all(fd: int, size: int) -> bytes:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break  # shrank while we read: serve what was there
        got += n
    return bytes(view[:got])


def netascii(data: bytes) -> bytes:
    """RFC 764 NVT ASCII as RFC 1350 requires for mode netascii: CR -> CR NUL, LF -> CR LF."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


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


class _Transfer:
    """One transfer on its own connected socket, driven straight from the selector.

    asyncio's datagram transport costs more per packet than the whole session
    logic (about 10 us against 2 us, measured): a lockstep transfer is one
    round trip per block, so the transfer reads and writes its socket itself.
    """

    def __init__(self, service: TftpService, sock: socket.socket, peer: tuple[str, int], name: str,
                 session: ReadSession, request: bytes) -> None:
        self.service, self.sock, self.peer, self.name = service, sock, peer, name
        self.session, self.request = session, request
        self.fd = sock.fileno()
        self.backlog: deque[bytes] = deque()  # datagrams waiting for room in the send buffer
        self.closed = False
        # One timer per transfer, re-armed lazily: a window moves the deadline,
        # the callback re-schedules itself if it fires early (no heap churn per ACK).
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)
        self._apply(self.session.start(self.loop.time()))

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
            if self.closed or self.session.windowsize != 1 or len(self.service.transfers) != 1:
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
        self.service.finished(self, done)


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, service: TftpService, address: str) -> None:
        self.service, self.address = service, address

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service.request(self.address, data, addr)


class TftpService:
    name = "tftp"

    def __init__(self, config: Config, policy: Policy, root: Path | None = None) -> None:
        self.config, self.policy = config, policy
        self.port = config.tftp.port
        self.files = FileCache(root or config.tftp_root, config.tftp.cache_mb << 20)
        self._listeners: list[asyncio.DatagramTransport] = []
        self.transfers: dict[tuple[str, int], _Transfer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[tuple[str, int]] = set()  # peers whose file is being loaded
        # Requests of transfers that just completed: a busy loop can read a client's
        # retransmitted RRQ from port 69 only after the transfer it asked for ended.
        self._recent: OrderedDict[tuple[tuple[str, int], bytes], float] = OrderedDict()
        self._log_refusal = Throttle(REFUSAL_LOG_INTERVAL)
        self.counters = {"requests": 0, "complete": 0, "declined": 0, "failed": 0, "refused": 0,
                         "bytes": 0}

    def addresses(self) -> list[str]:
        out = {str(self.config.admin_address)}
        for interface in self.config.interfaces:
            try:
                for entry in netifaces.ifaddresses(interface).get(netifaces.AF_INET, []):
                    out.add(entry["addr"])
            except ValueError:
                continue
        return sorted(out)

    async def start(self) -> None:
        _raise_file_limit()
        loop = asyncio.get_running_loop()
        addresses = self.addresses()
        for address in addresses:
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    self._listener_for(address), local_addr=(address, self.port))
            except OSError as exc:
                raise BindError(f"TFTP cannot listen on {address}:{self.port}: "
                                f"{os.strerror(exc.errno) if exc.errno else exc}") from None
            self._listeners.append(transport)
        log.info("listening", extra=kv(addresses=",".join(addresses), port=self.port,
                                       root=str(self.files.root)))

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        for transfer in list(self.transfers.values()):
            transfer._finish(Done(False, "server stopping"))
        for task in list(self._tasks):
            task.cancel()
        log.info("stopped", extra=kv(**self.counters))

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def _listener_for(self, address: str) -> Callable[[], _Listener]:
        return lambda: _Listener(self, address)

    # -- requests -------------------------------------------------------------------

    def request(self, local: str, data: bytes, peer: tuple[str, int]) -> None:
        self.counters["requests"] += 1
        try:
            req = p.parse(data)
        except p.MalformedPacket as exc:
            self._refuse(local, peer, p.ErrorCode.ILLEGAL_OPERATION, str(exc), "-")
            return
        if not isinstance(req, p.Request):
            return  # a stray DATA/ACK to port 69: nothing to answer (RFC 1350 section 4)
        if req.opcode is p.Opcode.WRQ:
            self._refuse(local, peer, p.ErrorCode.ACCESS_VIOLATION, "this server is read-only",
                         req.filename)
            return
        if req.mode not in ("octet", "netascii"):
            self._refuse(local, peer, p.ErrorCode.ILLEGAL_OPERATION, f"mode {req.mode!r} not supported",
                         req.filename)
            return
        if self._recent and self._stale(peer, data):
            return
        if peer in self.transfers or peer in self._pending:
            # The client repeated its request before our first answer reached it;
            # the running transfer retransmits on its own timer. A second transfer
            # to the same port would only be ignored by the client.
            return
        if len(self.transfers) + len(self._pending) >= self.config.tftp.max_transfers:
            self._refuse(local, peer, p.ErrorCode.NOT_DEFINED, "server busy, try again",
                         req.filename)
            return
        self._pending.add(peer)
        task = asyncio.get_running_loop().create_task(self._serve(local, peer, req, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, local: str, peer: tuple[str, int], req: p.Request, raw: bytes) -> None:
        try:
            await self._start(local, peer, req, raw)
        finally:
            self._pending.discard(peer)

    async def _start(self, local: str, peer: tuple[str, int], req: p.Request, raw: bytes) -> None:
        try:
            clean_parts(req.filename)
            generated = self.policy.tftp_file(req.filename, IPv4Address(peer[0]))
            content = (generated if generated is not None
                       else await asyncio.to_thread(self.files.load, req.filename))
        except TooLarge as exc:
            self._refuse(local, peer, p.ErrorCode.NOT_DEFINED, str(exc), req.filename)
            return
        except Refused as exc:
            self._refuse(local, peer, p.ErrorCode.ACCESS_VIOLATION, str(exc), req.filename)
            return
        except Missing as exc:
            self._refuse(local, peer, p.ErrorCode.FILE_NOT_FOUND, str(exc), req.filename, quiet=True)
            return
        if req.mode == "netascii":
            content = netascii(content)
        try:
            sock, mtu = transfer_socket(local, peer)
        except OSError as exc:
            self._refuse(local, peer, p.ErrorCode.NOT_DEFINED, "no transfer socket", req.filename)
            log.error("cannot open a transfer socket", extra=kv(peer=peer[0], file=req.filename,
                                                               reason=exc.strerror))
            return
        t = self.config.tftp
        limits = Limits(max_blksize=max(512, min(t.max_blksize, mtu - TFTP_OVERHEAD, MAX_BLKSIZE)),
                        max_windowsize=t.max_windowsize, timeout=t.timeout, retries=t.retries)
        transfer = _Transfer(self, sock, peer, req.filename, ReadSession(req, content, limits), raw)
        self.transfers[peer] = transfer
        transfer.start()

    def _stale(self, peer: tuple[str, int], data: bytes) -> bool:
        now = time.monotonic()
        while self._recent:
            key, when = next(iter(self._recent.items()))
            if now - when < STALE_REQUEST_WINDOW:
                break
            del self._recent[key]
        return (peer, data) in self._recent

    def finished(self, transfer: _Transfer, done: Done) -> None:
        if self.transfers.get(transfer.peer) is transfer:
            del self.transfers[transfer.peer]
        session = transfer.session
        if session.complete:
            self._recent[(transfer.peer, transfer.request)] = time.monotonic()
        self.counters["bytes"] += session.bytes_sent
        kind = "failed" if not done.ok else "complete" if session.complete else "declined"
        self.counters[kind] += 1
        level = logging.DEBUG if done.ok else logging.WARNING
        if log.isEnabledFor(level):
            log.log(level, "transfer " + kind, extra=kv(
                peer=f"{transfer.peer[0]}:{transfer.peer[1]}", file=transfer.name, reason=done.reason,
                bytes=session.bytes_sent, blksize=session.blksize, windowsize=session.windowsize))

    def _refuse(self, local: str, peer: tuple[str, int], code: p.ErrorCode, reason: str, name: str,
                quiet: bool = False) -> None:
        """Answer with an error from a fresh port (RFC 1350: errors come from a transfer TID)."""
        self.counters["refused"] += 1
        if self._log_refusal(time.monotonic(), peer[0], reason):
            (log.info if quiet else log.warning)("request refused", extra=kv(
                peer=f"{peer[0]}:{peer[1]}", file=name, code=code.name.lower(), reason=reason))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.bind((local, 0))
                s.sendto(p.error(code, reason), peer)
        except OSError as exc:
            log.debug("cannot send error", extra=kv(peer=peer[0], reason=exc.strerror))


def _raise_file_limit() -> None:
    """One descriptor per transfer: let the soft limit go up to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
