"""A TFTP mutation corpus and the session harness, shared by tests/test_tftp_fuzz.py and bench/fuzz_tftp.py.

The corpus is what real clients send (firmware, iPXE, shim/GRUB, pxelinux,
tftp-hpa, atftp, curl: RRQs with blksize/tsize/timeout/windowsize, ACKs,
ERRORs) plus what they never should (WRQ, DATA and OACK to a server,
garbage). mutate() applies a few byte-level and field-level mutations, so most
results stay close enough to TFTP to reach past the codec into the session.

SessionHarness drives ReadSessions with a fake clock and checks the
invariants the transport relies on: receive/ack/timeout never raise; every
Send parses with our own codec; a DATA payload is at most the negotiated
blksize; a timer is armed in the future; a finished session says nothing more;
and every session ends within retries + 1 timeouts once the peer goes quiet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bootd.tftp import packet as p
from bootd.tftp.intake import Accept, examine
from bootd.tftp.session import Action, ArmTimer, Done, Limits, ReadSession, Send

RRQ, WRQ = p.Opcode.RRQ, p.Opcode.WRQ


def _rrq(name: str, mode: str = "octet", **options: str) -> bytes:
    return p.request(RRQ, name, mode, options)


CORPUS: tuple[bytes, ...] = (
    _rrq("undionly.kpxe"),
    _rrq("undionly.kpxe", blksize="1468", tsize="0"),
    _rrq("ipxe.efi", blksize="1468", windowsize="4"),  # OVMF, shim
    _rrq("shimx64.efi", tsize="0", blksize="1468", windowsize="4"),
    _rrq("pxelinux.cfg/01-52-54-00-12-34-56"),
    _rrq("pxelinux.cfg/C612000A", blksize="1408"),
    _rrq("/grub/grub.cfg", tsize="0", blksize="1024"),
    _rrq("\\boot\\x64\\wdsnbp.com"),
    _rrq("text.txt", "netascii", tsize="0"),
    _rrq("text.txt", "NETASCII", timeout="1", blksize="100"),
    _rrq("undionly.kpxe", timeout="255", tsize="0"),
    _rrq("undionly.kpxe", BLKSIZE="65464", WindowSize="65535", TSIZE="0", Timeout="3", multicast=""),
    p.request(WRQ, "upload.bin"),
    p.ack(0), p.ack(1), p.ack(65535), p.ack(2) + b"pad",
    p.data(1, b"x" * 512), p.data(0, b""),
    p.error(p.ErrorCode.OPTION_REFUSED, "tsize only"), p.error(0, "user abort"), b"\x00\x05\x00\x01",
    p.oack({"tsize": "70001"}),
    b"", b"\x00", b"\x00\x01", b"\x00\x07junk\x00", b"\xff\xff\xff\xff",
)
NUMBERS = ("0", "1", "7", "8", "9", "255", "256", "512", "1468", "65464", "65465", "65535", "65536",
           "-1", "", "00000000000000000000000000000008", "99999999999999999999999", "1e3", "0x10")
BYTES = b"\x00\x01\x05\x06\xff/.\\\n\r\x7f"


def mutate(rng: random.Random, seed: bytes | None = None) -> bytes:
    """One mutated datagram: a corpus entry (or `seed`) with 0-3 mutations."""
    data = bytearray(seed if seed is not None else rng.choice(CORPUS))
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        kind = rng.randrange(9)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a bit
            data[at % len(data)] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # an interesting byte
            data[at % len(data)] = rng.choice(BYTES)
        elif kind == 2:  # cut
            del data[at:]
        elif kind == 3:  # insert random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 4 and data:  # repeat a slice
            end = rng.randint(at, len(data))
            data[at:at] = data[at:end] * rng.randint(1, 8)
        elif kind == 5:  # splice with another corpus entry
            other = rng.choice(CORPUS)
            data = data[:at] + other[rng.randrange(len(other) + 1):]
        elif kind == 6:  # a numeric field replaced by an edge value
            fields = bytes(data).split(b"\0")
            if len(fields) > 2:
                i = rng.randrange(len(fields))
                fields[i] = rng.choice(NUMBERS).encode()
                data = bytearray(b"\0".join(fields))
        elif kind == 7:  # another option pair
            name = rng.choice((b"blksize", b"tsize", b"timeout", b"windowsize", b"x" * rng.randint(1, 600)))
            data += name + b"\0" + rng.choice(NUMBERS).encode() + b"\0"
        else:  # the opcode
            data[0:2] = rng.randrange(9).to_bytes(2, "big")
    return bytes(data)


class Violation(AssertionError):
    """A session broke an invariant the transport relies on."""


@dataclass
class SessionHarness:
    """Live sessions over fake content with a fake clock; feed() datagrams, end() them all."""

    contents: tuple[bytes, ...] = (b"", b"abc", bytes(512), bytes(range(256)) * 300)
    limits: Limits = field(default_factory=lambda: Limits(timeout=1.0, retries=3, max_timeout=5,
                                                          max_windowsize=16))
    now: float = 0.0
    started: int = 0
    ended: int = 0
    completed: int = 0  # the peer acknowledged the last block

    def __post_init__(self) -> None:
        self.sessions: list[ReadSession] = []

    def start(self, request: p.Request, rng: random.Random, capacity: int = 32) -> None:
        session = ReadSession(request, rng.choice(self.contents), self.limits)
        self.started += 1
        self.check(session, session.start(self.now))
        if len(self.sessions) >= capacity:
            self.finish(self.sessions.pop(rng.randrange(len(self.sessions))))
        self.sessions.append(session)

    def feed(self, raw: bytes, rng: random.Random) -> None:
        """A datagram from the peer of a random live session, as the transport hands it over."""
        if not self.sessions:
            return
        session = rng.choice(self.sessions)
        self.now += rng.choice((0.0, 0.001, 0.5, 2.0))
        if rng.random() < 0.5:
            # Half the time a plausible ACK instead, so sessions get far (windows, completion).
            block = rng.choice((session.sent, session.sent, session.acked + 1, session.sent - 1, 0))
            raw = p.ack(block & 0xFFFF)
        if rng.random() < 0.1:
            self.check(session, session.timeout(self.now))
        elif len(raw) == 4 and raw[:2] == b"\x00\x04":
            self.check(session, session.ack(int.from_bytes(raw[2:], "big"), self.now))
        else:
            try:
                packet = p.parse(raw)
            except p.MalformedPacket:
                return  # the transport answers error 4 and ends the transfer itself
            self.check(session, session.receive(packet, self.now))
        if session.finished:
            self.sessions.remove(session)
            self.ended += 1
            self.completed += session.complete

    def finish(self, session: ReadSession) -> None:
        """The peer goes quiet: the session must end within retries + 1 timeouts."""
        for _ in range(self.limits.retries + 1):
            if session.finished:
                break
            self.now += max(self.limits.timeout, self.limits.max_timeout)
            self.check(session, session.timeout(self.now))
        if not session.finished:
            raise Violation("a session outlived retries + 1 timeouts")
        self.ended += 1

    def end(self) -> None:
        while self.sessions:
            self.finish(self.sessions.pop())

    def check(self, session: ReadSession, actions: list[Action]) -> None:
        was_done = False
        for action in actions:
            if was_done:
                raise Violation(f"an action after Done: {action}")
            if isinstance(action, Send):
                packet = p.parse(action.data)  # MalformedPacket here is a violation too
                if isinstance(packet, p.Data) and len(packet.data) > session.blksize:
                    raise Violation(f"DATA of {len(packet.data)} bytes at blksize {session.blksize}")
            elif isinstance(action, ArmTimer):
                if action.deadline <= self.now:
                    raise Violation("a timer armed in the past")
            elif isinstance(action, Done):
                was_done = True
                if not session.finished:
                    raise Violation("Done from a session that is not finished")


@dataclass
class Counts:
    packets: int = 0
    malformed: int = 0  # parse raised MalformedPacket: the one documented error
    accepted: int = 0  # requests the listener would serve
    refused: int = 0
    crashes: int = 0  # any other exception, or a broken invariant: must stay 0
    examples: list[str] = field(default_factory=list)  # the first few crashes, as hex and reason


def fuzz_one(raw: bytes, rng: random.Random, harness: SessionHarness, counts: Counts) -> None:
    """One datagram through the codec, the listener's decision, and a live session."""
    counts.packets += 1
    try:
        try:
            packet = p.parse(raw)
        except p.MalformedPacket:
            counts.malformed += 1
        else:
            if isinstance(packet, p.Request):
                # What the codec accepts, it builds back to the same request.
                again = p.parse(p.request(packet.opcode, packet.filename, packet.mode, packet.options))
                if again != packet:
                    raise Violation(f"round trip changed {packet} into {again}")
        decision = examine(raw)
        if isinstance(decision, Accept):
            counts.accepted += 1
            harness.start(decision.request, rng)
        else:
            counts.refused += decision is not None
            harness.feed(raw, rng)
    except Exception as exc:  # any exception at all is a crash: counting them is the point
        counts.crashes += 1
        if len(counts.examples) < 10:
            counts.examples.append(f"{raw.hex()}: {type(exc).__name__}: {exc}")


def fuzz(packets: int, seed: int = 1) -> tuple[Counts, SessionHarness]:
    """`packets` mutated datagrams through codec, intake and sessions; then every session ended."""
    rng, harness, counts = random.Random(seed), SessionHarness(), Counts()
    for _ in range(packets):
        fuzz_one(mutate(rng), rng, harness, counts)
    try:
        harness.end()
    except Exception as exc:
        counts.crashes += 1
        counts.examples.append(f"end: {type(exc).__name__}: {exc}")
    return counts, harness
