"""The TFTP service (read-only): requests on port 69, one ephemeral port per transfer.

This module is the listener: it takes requests off port 69 (intake.examine
decides accept, refuse or ignore, and cleans the name once), enforces the
limits, finds the content and starts a Transfer (transfer.py) on a fresh
connected socket; cache.py holds the files; session.py is the protocol.

Content: names the policy knows (per-node pxelinux and GRUB configs) are
generated for the asking machine; everything else comes from files under the
TFTP root, read once in a worker thread into the bounded memory cache shared
by every transfer of that file (cache.py: not mmap, and netascii converted
there too, never per transfer on the event loop).

Limits, so that a flood of requests (spoofed sources, random names and
options) costs bounded memory: at most max_transfers transfers running or
loading at once, at most max_per_client per client address, each ending
after (retries + 1) x timeout without progress (session.py clamps the
client's timeout option). Every table here is keyed by a running or loading
transfer, except the recently completed requests, which live STALE_REQUEST_WINDOW
seconds and are capped at max_transfers (a request repeated within that window is
served all the same, but quietly: see request()). Refusals are counted per reason and
logged once per reason per minute, failed transfers at most FAILED_LINES a
minute (refusals.py): nothing is keyed by what a peer chose.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol

import netifaces

from bootd.config import Config
from bootd.files import BadName, Missing, NotRegular, OutsideRoot, Refused
from bootd.logs import kv
from bootd.metrics import Metrics
from bootd.service import BindError
from bootd.tftp import packet as p
from bootd.tftp.cache import FileCache, TooLarge, netascii
from bootd.tftp.intake import Accept, Refuse, examine
from bootd.tftp.refusals import LineBudget, Reason, RefusalLog
from bootd.tftp.session import MAX_BLKSIZE, Done, Limits, ReadSession
from bootd.tftp.transfer import TFTP_OVERHEAD, Pump, Transfer, transfer_socket

log = logging.getLogger("bootd.tftp")
STALE_REQUEST_WINDOW = 2.0  # seconds: the same request from the same port right after completing
LOGGED_NAME = 120  # characters of a refused name that go into the log line

Peer = tuple[str, int]


class TftpPolicy(Protocol):
    """The one question TFTP asks the policy (bootd.policy.Policy answers it)."""

    async def tftp_file(self, path: str, peer: IPv4Address) -> bytes | None:
        """A generated file for a clean relative path, or None for a plain file under the root."""

    def fetched(self, peer: IPv4Address | None, kind: str, detail: str) -> None:
        """A transfer ended (for the machine's recent activity)."""


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, service: TftpService, address: str) -> None:
        self.service, self.address = service, address

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service.request(self.address, data, addr)


class TftpService:
    name = "tftp"

    def __init__(self, config: Config, policy: TftpPolicy, root: Path | None = None, *,
                 metrics: Metrics | None = None) -> None:
        self.config, self.policy, self._metrics = config, policy, metrics
        self.port = config.tftp.port
        self.files = FileCache(root or config.tftp_root, config.tftp.cache_mb << 20)
        self._listeners: list[asyncio.DatagramTransport] = []
        self._pump: Pump | None = None  # made in start(): it needs the running loop
        self.transfers: dict[Peer, Transfer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[Peer] = set()  # peers whose file is being loaded
        self._per_client: dict[str, int] = {}  # running or loading, by client address
        # Requests of transfers that just completed: a busy loop can read a client's
        # retransmitted RRQ from port 69 only after the transfer it asked for ended.
        # Keyed by a digest: a request may be a 64 KiB datagram of options.
        self._recent: OrderedDict[tuple[Peer, bytes], float] = OrderedDict()
        self._repeats: set[Peer] = set()  # running or loading transfers that answer such a repeat
        self.refusals = RefusalLog()
        self._failed_lines = LineBudget()
        self.counters = {"requests": 0, "started": 0, "complete": 0, "declined": 0, "failed": 0,
                         "refused": 0, "bytes": 0}

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
        self._pump = Pump()
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
            transfer.stop("server stopping")
        for task in list(self._tasks):
            task.cancel()
        if self._pump is not None:
            self._pump.close()
            self._pump = None
        log.info("stopped", extra=kv(**self.counters))

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def _listener_for(self, address: str) -> Callable[[], _Listener]:
        return lambda: _Listener(self, address)

    def running(self) -> int:
        return len(self.transfers)

    def refusal_counts(self) -> dict[str, int]:
        """Refusals so far by reason label (the metrics scrape reads it)."""
        return {reason.label: n for reason, n in self.refusals.counts.items()}

    def tables(self) -> dict[str, int]:
        """Sizes of everything this service remembers (bounded under any flood; tests read it)."""
        return {"transfers": len(self.transfers), "pending": len(self._pending),
                "tasks": len(self._tasks), "per_client": len(self._per_client),
                "recent": len(self._recent), "cache_bytes": self.files.size}

    # -- requests -------------------------------------------------------------------

    def request(self, local: str, data: bytes, peer: Peer) -> None:
        self.counters["requests"] += 1
        decision = examine(data)
        if decision is None:
            return  # a stray DATA/ACK to port 69: nothing to answer (RFC 1350 section 4)
        if isinstance(decision, Refuse):
            self._refuse(local, peer, decision)
            return
        # The same request from the same port as a transfer that just completed is
        # either that client's late retransmission or a new client that drew the same
        # ephemeral port (500 atftp at once from one address: a few per run). Ignoring
        # it stalls the new client for its whole retransmission timeout (seconds,
        # measured in bench/tftp); so serve it, as tftpd-hpa serves every request, and
        # if nobody takes it (the old client answers error 5 or its port is closed:
        # RFC 1350 section 4, an unknown TID) end it as declined, without a warning.
        repeat = bool(self._recent) and self._just_completed(peer, data)
        if peer in self.transfers or peer in self._pending:
            # The client repeated its request before our first answer reached it;
            # the running transfer retransmits on its own timer. A second transfer
            # to the same port would only be ignored by the client.
            return
        name = decision.request.filename
        t = self.config.tftp
        if len(self.transfers) + len(self._pending) >= t.max_transfers:
            self._refuse(local, peer, Refuse(Reason.BUSY, "server busy, try again", name))
            return
        if self._per_client.get(peer[0], 0) >= t.max_per_client:
            self._refuse(local, peer, Refuse(
                Reason.CLIENT_LIMIT, f"too many transfers from {peer[0]} at once, try again", name))
            return
        self._pending.add(peer)
        if repeat:
            self._repeats.add(peer)
        self._per_client[peer[0]] = self._per_client.get(peer[0], 0) + 1
        task = asyncio.get_running_loop().create_task(self._serve(local, peer, decision, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, local: str, peer: Peer, accept: Accept, raw: bytes) -> None:
        started = False
        try:
            started = await self._start(local, peer, accept, raw)
        finally:
            self._pending.discard(peer)
            if not started:
                self._repeats.discard(peer)
                self._release(peer[0])

    async def _start(self, local: str, peer: Peer, accept: Accept, raw: bytes) -> bool:
        """Find the content and start the transfer; False if refused instead."""
        req, path = accept.request, accept.path
        try:
            generated = await self.policy.tftp_file(path.text, IPv4Address(peer[0]))
            if generated is not None:
                content = netascii(generated) if accept.netascii else generated  # a few KiB
            else:
                content = await asyncio.to_thread(self.files.load, path, accept.netascii)
        except (Refused, Missing) as exc:
            self._refuse(local, peer, Refuse(_reason(exc), str(exc), req.filename))
            return False
        try:
            sock, mtu = transfer_socket(local, peer)
        except OSError as exc:
            self._refuse(local, peer, Refuse(Reason.NO_SOCKET, "no transfer socket", req.filename))
            log.error("cannot open a transfer socket", extra=kv(peer=peer[0], file=path.text,
                                                               reason=exc.strerror))
            return False
        t = self.config.tftp
        limits = Limits(max_blksize=max(512, min(t.max_blksize, mtu - TFTP_OVERHEAD, MAX_BLKSIZE)),
                        max_windowsize=t.max_windowsize, timeout=t.timeout, retries=t.retries,
                        max_timeout=t.max_timeout)
        if self._pump is None:
            sock.close()
            return False  # stopped while the file loaded
        transfer = Transfer(self, self._pump, sock, peer, path.text, ReadSession(req, content, limits), raw)
        self.transfers[peer] = transfer
        self.counters["started"] += 1
        transfer.start()
        return True

    def _release(self, address: str) -> None:
        left = self._per_client.get(address, 0) - 1
        if left > 0:
            self._per_client[address] = left
        else:
            self._per_client.pop(address, None)

    def _just_completed(self, peer: Peer, data: bytes) -> bool:
        now = time.monotonic()
        while self._recent:
            key, when = next(iter(self._recent.items()))
            if now - when < STALE_REQUEST_WINDOW:
                break
            del self._recent[key]
        return (peer, _digest(data)) in self._recent

    def finished(self, transfer: Transfer, done: Done) -> None:
        if self.transfers.get(transfer.peer) is transfer:
            del self.transfers[transfer.peer]
            self._release(transfer.peer[0])
        session = transfer.session
        repeat = transfer.peer in self._repeats
        self._repeats.discard(transfer.peer)
        if session.complete:
            self._recent[(transfer.peer, _digest(transfer.request))] = time.monotonic()
            while len(self._recent) > self.config.tftp.max_transfers:
                self._recent.popitem(last=False)
        self.counters["bytes"] += session.bytes_sent
        kind = "complete" if session.complete else "declined" if done.ok or repeat else "failed"
        self.counters[kind] += 1
        self.policy.fetched(IPv4Address(transfer.peer[0]), "tftp",
                            f"{transfer.name}: {kind}, {session.bytes_sent} bytes")
        if self._metrics is not None:
            self._metrics.tftp_transfer(kind, transfer.loop.time() - transfer.started)
        if done.ok or repeat:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("transfer " + kind, extra=kv(
                    peer=f"{transfer.peer[0]}:{transfer.peer[1]}", file=transfer.name, reason=done.reason,
                    bytes=session.bytes_sent, blksize=session.blksize, windowsize=session.windowsize))
            return
        unlogged = self._failed_lines(time.monotonic())
        if unlogged is not None:
            log.warning("transfer failed", extra=kv(
                peer=f"{transfer.peer[0]}:{transfer.peer[1]}", file=transfer.name, reason=done.reason,
                bytes=session.bytes_sent, blksize=session.blksize, windowsize=session.windowsize,
                unlogged=unlogged or None))

    def _refuse(self, local: str, peer: Peer, refusal: Refuse) -> None:
        """Answer with an error from a fresh port (RFC 1350: errors come from a transfer TID)."""
        self.counters["refused"] += 1
        reason = refusal.reason
        unlogged = self.refusals(time.monotonic(), reason)
        if unlogged is not None:
            (log.info if reason.routine else log.warning)("request refused", extra=kv(
                peer=f"{peer[0]}:{peer[1]}", file=refusal.name[:LOGGED_NAME], code=reason.error.name.lower(),
                why=reason.label, reason=refusal.message[:LOGGED_NAME],
                unlogged=unlogged or None))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.bind((local, 0))
                s.sendto(p.error(reason.error, refusal.message), peer)
        except OSError as exc:
            log.debug("cannot send error", extra=kv(peer=peer[0], reason=exc.strerror))


def _reason(exc: Refused | Missing) -> Reason:
    if isinstance(exc, Missing):
        return Reason.NOT_FOUND
    for kind, reason in ((TooLarge, Reason.TOO_LARGE), (BadName, Reason.BAD_NAME),
                         (OutsideRoot, Reason.OUTSIDE_ROOT), (NotRegular, Reason.NOT_REGULAR)):
        if isinstance(exc, kind):
            return reason
    return Reason.REFUSED


def _digest(request: bytes) -> bytes:
    return hashlib.blake2b(request, digest_size=16).digest()


def _raise_file_limit() -> None:
    """One descriptor per transfer: let the soft limit go up to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
