"""One TFTP read transfer, sans-IO: datagrams and clock ticks in, actions out.

    session = ReadSession(request, content, limits)
    actions = session.start(now)                  # OACK, or DATA 1
    actions = session.receive(packet, now)        # ACKs, ERRORs from the peer
    actions = session.timeout(now)                # the last ArmTimer's deadline passed

Actions are Send(bytes), ArmTimer(deadline) and Done(ok, reason); the
transport only moves bytes and keeps one timer. So retransmission, windows,
block-number rollover and duplicate ACKs are all tested with a fake clock.

Rules:
- Options (RFC 2347): blksize 8..65464 (RFC 2348), clamped to what the path
  MTU allows; tsize (RFC 2349) answered with the size of the content as sent
  (for netascii the converted size, which the file cache knows exactly);
  windowsize 1..65535 (RFC 7440), clamped to our maximum. Invalid or unknown
  options are left out of the OACK, which RFC 2347 allows.
- timeout (RFC 2349) may be 1..255 s, and the server must echo the client's
  value or leave the option out. A transfer that sees no progress ends after
  `retries` timeouts, so a client asking 255 s would hold a transfer slot for
  (retries + 1) x 255 s (25 min at the default 5 retries). A value above
  Limits.max_timeout is left out of the OACK and our own timer stays: no
  transfer idles longer than (retries + 1) x max(timeout, max_timeout).
- With an OACK sent, the transfer starts at the client's ACK 0; an ERROR 8
  instead is the client declining (UEFI's tsize probe does this), not a fault.
- Blocks are numbered modulo 65536 on the wire (RFC 1350 has 16 bits) and
  counted without limit here, so files past 32 MiB at 512-byte blocks work.
- An ACK moves the window to the block after it (RFC 7440 section 4: the
  client acknowledges the last block it has in order). A duplicate or stale ACK
  changes nothing: retransmitting on duplicates is the Sorcerer's Apprentice
  bug (RFC 1123 section 4.2.3.1). Only the timer retransmits.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from bootd.tftp import packet as p

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464
_DATA_HEADER = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class ArmTimer:
    deadline: float


@dataclass(frozen=True, slots=True)
class Done:
    ok: bool
    reason: str


Action = Send | ArmTimer | Done


@dataclass(frozen=True, slots=True)
class Limits:
    max_blksize: int = 1468  # Ethernet MTU 1500 - IP 20 - UDP 8 - TFTP 4
    max_windowsize: int = 64
    timeout: float = 1.0
    retries: int = 5
    max_timeout: float = 5.0  # the longest client timeout option (RFC 2349) we accept


class ReadSession:
    def __init__(self, request: p.Request, content: bytes | memoryview | mmap.mmap,
                 limits: Limits | None = None) -> None:
        self.content = memoryview(content)
        self.size = len(self.content)
        self.limits = limits or Limits()
        self.blksize = DEFAULT_BLKSIZE
        self.windowsize = 1
        self.timeout_s = self.limits.timeout
        self.oack = self._negotiate(request.options)
        self.last_block = self.size // self.blksize + 1  # a final short (maybe empty) block ends it
        # Highest block the client has, in order; the OACK stands for block 0, so
        # while it is unacknowledged nothing is.
        self.acked = -1 if self.oack else 0
        self.sent = 0  # highest block sent
        self.retries = 0
        self.finished = False
        self.complete = False  # the client acknowledged the last block
        self.bytes_sent = 0

    def _negotiate(self, asked: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in asked.items():
            if not value.isdigit():
                continue
            n = int(value)
            if name == "blksize" and MIN_BLKSIZE <= n <= MAX_BLKSIZE:
                self.blksize = min(n, self.limits.max_blksize)
                out[name] = str(self.blksize)
            elif name == "tsize":
                out[name] = str(self.size)
            elif name == "timeout" and 1 <= n <= 255 and n <= self.limits.max_timeout:
                self.timeout_s = float(n)
                out[name] = value
            elif name == "windowsize" and 1 <= n <= 65535:
                self.windowsize = min(n, self.limits.max_windowsize)
                out[name] = str(self.windowsize)
        return out

    # -- events ----------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if self.oack:
            return [Send(p.oack(self.oack)), ArmTimer(now + self.timeout_s)]
        return self._window(now)

    def receive(self, packet: p.Packet, now: float) -> list[Action]:
        if self.finished:
            return []
        if isinstance(packet, p.Error):
            self.finished = True
            if packet.code == p.ErrorCode.OPTION_REFUSED or self.acked < 0:
                return [Done(True, f"client declined after options ({packet.message or 'no reason'})")]
            return [Done(False, f"client aborted: error {packet.code} {packet.message!r}")]
        if not isinstance(packet, p.Ack):
            self.finished = True
            return [Send(p.error(p.ErrorCode.ILLEGAL_OPERATION, "expected an ACK")),
                    Done(False, f"unexpected {type(packet).__name__} during a read")]
        return self.ack(packet.block, now)

    def ack(self, wire_block: int, now: float) -> list[Action]:
        """An ACK of `wire_block` (16 bits) arrived; the hot path, parsed by the caller."""
        if self.finished:
            return []
        block = self._absolute(wire_block)
        if block is None or block <= self.acked:
            return []  # duplicate or stale: never a retransmission trigger
        self.acked = block
        self.retries = 0
        if self.acked >= self.last_block:
            self.finished = self.complete = True
            return [Done(True, "complete")]
        # An ACK short of the window's end means the client lost the block after it
        # and dropped the rest: go back to that block (RFC 7440 section 4).
        self.sent = self.acked
        return self._window(now)

    def next_data(self, wire_block: int) -> bytes | None:
        """The lockstep hot path: the ACK of the block just sent gives the next DATA.

        When this returns bytes, the session moved exactly as ack(wire_block, now)
        would have, and ack() would have returned [Send(those bytes),
        ArmTimer(now + timeout_s)]: the caller re-arms its own timer. None means
        "not that case" (a window, the last block, a duplicate, the end) and
        changes nothing: call ack(). This skips the action objects, which cost
        more than the rest of a block's work in Python (measured).
        """
        sent = self.sent
        if (wire_block != sent & 0xFFFF or self.acked != sent - 1 or sent >= self.last_block
                or self.windowsize != 1 or self.finished):
            return None
        self.acked = sent
        self.retries = 0
        self.sent = sent + 1
        start = sent * self.blksize
        chunk = self.content[start : start + self.blksize]
        self.bytes_sent += len(chunk)
        return _DATA_HEADER.pack(3, (sent + 1) & 0xFFFF) + chunk  # 3: DATA (RFC 1350 section 5)

    def timeout(self, now: float) -> list[Action]:
        if self.finished:
            return []
        self.retries += 1
        if self.retries > self.limits.retries:
            self.finished = True
            return [Done(False, f"no answer after {self.limits.retries} retransmissions")]
        if self.acked < 0:
            return [Send(p.oack(self.oack)), ArmTimer(now + self.timeout_s)]
        self.sent = self.acked  # resend the unacknowledged part of the window
        return self._window(now)

    # -- helpers ---------------------------------------------------------------------

    def _absolute(self, wire_block: int) -> int | None:
        """The block count an on-the-wire (16-bit) ACK refers to, within what was sent."""
        candidate = self.sent - ((self.sent - wire_block) & 0xFFFF)
        return candidate if self.acked <= candidate <= self.sent else None

    def _window(self, now: float) -> list[Action]:
        actions: list[Action] = []
        end = min(self.acked + self.windowsize, self.last_block)
        for block in range(self.sent + 1, end + 1):
            start = (block - 1) * self.blksize
            chunk = self.content[start : start + self.blksize]
            actions.append(Send(p.data(block, chunk)))
            self.bytes_sent += len(chunk)
        self.sent = max(self.sent, end)
        actions.append(ArmTimer(now + self.timeout_s))
        return actions
