"""TFTP packets (RFC 1350 section 5) with options (RFC 2347), pure.

    RRQ/WRQ  | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
    DATA     | 03 | block | data (0..blksize)
    ACK      | 04 | block
    ERROR    | 05 | code | message | 0
    OACK     | 06 | opt1 | 0 | value1 | 0 | ...

Option names are case-insensitive (RFC 2347); they come back lower-cased.
Garbage raises MalformedPacket, this codec's one error.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

MAX_FIELD = 512  # longest filename, mode or option we accept


class MalformedPacket(ValueError):
    """Bytes that are not a TFTP packet; str() says why."""


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8  # RFC 2347: the client aborts an OACK it cannot accept


@dataclass(frozen=True, slots=True)
class Request:
    opcode: Opcode  # RRQ or WRQ
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OAck:
    options: dict[str, str]


Packet = Request | Data | Ack | Error | OAck


def _strings(body: bytes, what: str) -> list[str]:
    if not body.endswith(b"\0"):
        raise MalformedPacket(f"{what}: fields not NUL-terminated")
    parts = body[:-1].split(b"\0")
    out = []
    for part in parts:
        if len(part) > MAX_FIELD:
            raise MalformedPacket(f"{what}: a field is longer than {MAX_FIELD} bytes")
        try:
            out.append(part.decode("ascii"))
        except UnicodeDecodeError:
            # RFC 1350 names are netascii; bytes above 127 are not a name we serve.
            raise MalformedPacket(f"{what}: non-ASCII bytes in a field") from None
    return out


def parse(data: bytes) -> Packet:
    if len(data) < 4:
        raise MalformedPacket(f"too short for TFTP ({len(data)} bytes)")
    opcode = int.from_bytes(data[:2], "big")
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        fields = _strings(data[2:], "request")
        if len(fields) < 2 or len(fields) % 2:
            raise MalformedPacket("request: needs filename, mode and option/value pairs")
        options: dict[str, str] = {}
        for i in range(2, len(fields), 2):
            options[fields[i].lower()] = fields[i + 1]
        return Request(Opcode(opcode), fields[0], fields[1].lower(), options)
    if opcode == Opcode.DATA:
        return Data(int.from_bytes(data[2:4], "big"), data[4:])
    if opcode == Opcode.ACK:
        if len(data) != 4:
            # Some clients pad; RFC 1350 ACKs are exactly 4 bytes, but extra bytes are harmless.
            data = data[:4]
        return Ack(int.from_bytes(data[2:4], "big"))
    if opcode == Opcode.ERROR:
        code = int.from_bytes(data[2:4], "big")
        message = data[4:].split(b"\0", 1)[0].decode("ascii", "replace")
        return Error(code, message)
    if opcode == Opcode.OACK:
        fields = _strings(data[2:], "oack")
        if len(fields) % 2:
            raise MalformedPacket("oack: option without value")
        return OAck({fields[i].lower(): fields[i + 1] for i in range(0, len(fields), 2)})
    raise MalformedPacket(f"unknown opcode {opcode}")


_DATA_HEADER = struct.Struct("!HH")


def data(block: int, payload: bytes | memoryview) -> bytes:
    return _DATA_HEADER.pack(3, block & 0xFFFF) + payload  # 3: Opcode.DATA, as a plain int (hot path)


def ack(block: int) -> bytes:
    return _DATA_HEADER.pack(Opcode.ACK, block & 0xFFFF)


def error(code: int, message: str) -> bytes:
    return _DATA_HEADER.pack(Opcode.ERROR, code) + message.encode("ascii", "replace")[:400] + b"\0"


def oack(options: dict[str, str]) -> bytes:
    return struct.pack("!H", Opcode.OACK) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())


def request(opcode: Opcode, filename: str, mode: str = "octet",
            options: dict[str, str] | None = None) -> bytes:
    body = filename.encode() + b"\0" + mode.encode() + b"\0"
    for k, v in (options or {}).items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    return struct.pack("!H", opcode) + body
