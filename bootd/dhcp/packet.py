"""DHCP messages (RFC 2131 section 2, figure 1) to typed values and back (pure).

    op htype hlen hops | xid | secs flags | ciaddr yiaddr siaddr giaddr
    chaddr[16] | sname[64] | file[128] | magic cookie 99.130.83.99 | options

`parse` reads the fixed part with one struct call, then the options; when
option 52 overloads `file` and/or `sname`, their contents are options too and
the fields themselves are reported empty. `build` lays out a reply: options
that do not fit in the client's maximum message size spill into `file`, then
`sname`, if those are unused (option overloading, RFC 2131 section 4.1), and a
short reply is padded to the 300-octet BOOTP minimum that old relays and PXE
ROMs expect (RFC 1542 section 2.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from bootd.dhcp.options import MalformedPacket, MessageType, Opt, Options, encode_tlvs, parse_tlvs

MAGIC = b"\x63\x82\x53\x63"
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
HEADER_SIZE = _HEADER.size  # 240, cookie included
MIN_MESSAGE = 300
DEFAULT_MAX_MESSAGE = 576  # RFC 2131 section 2: every client accepts this much
IP_UDP_HEADERS = 28
BOOTREQUEST, BOOTREPLY = 1, 2
HTYPE_ETHERNET = 1
BROADCAST_FLAG = 0x8000
ZERO = IPv4Address(0)


@dataclass(frozen=True, slots=True)
class Packet:
    op: int
    xid: int
    chaddr: bytes  # 16 octets as on the wire
    options: Options = field(default_factory=Options)
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    yiaddr: IPv4Address = ZERO
    siaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    sname: bytes = b""
    file: bytes = b""

    @property
    def message_type(self) -> MessageType | None:
        return self.options.message_type

    @property
    def hardware_address(self) -> bytes:
        return self.chaddr[: min(self.hlen, 16)]

    @property
    def mac(self) -> str:
        return self.hardware_address.hex(":")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)


_DISCOVER_FIRST = bytes((Opt.MESSAGE_TYPE, 1, MessageType.DISCOVER))


def is_discover(data: bytes) -> bool:
    """Cheaply, before parsing: is this a DISCOVER? (For the receive backlog's lanes.)
    Clients put option 53 first; otherwise the options field is scanned. Anything
    unreadable counts as a DISCOVER: the lane that is shed first."""
    if data[HEADER_SIZE : HEADER_SIZE + 3] == _DISCOVER_FIRST:
        return True
    if data[HEADER_SIZE : HEADER_SIZE + 2] == _DISCOVER_FIRST[:2]:
        return False  # message type first, and not DISCOVER
    try:
        for code, value in parse_tlvs(data[HEADER_SIZE:], "options"):
            if code == Opt.MESSAGE_TYPE:
                return value == _DISCOVER_FIRST[2:]
    except MalformedPacket:
        return True
    return True


def _cstring(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def parse(data: bytes) -> Packet:
    if len(data) < HEADER_SIZE:
        raise MalformedPacket(f"too short for DHCP ({len(data)} bytes)")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file, magic) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedPacket("no DHCP magic cookie (plain BOOTP is not served)")
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket(f"invalid op {op}")
    if hlen > 16:
        raise MalformedPacket(f"invalid hardware address length {hlen}")
    if htype == HTYPE_ETHERNET and hlen != 6:
        # RFC 1700 / ARP: Ethernet addresses are 6 octets; anything else would be
        # stored as a MAC no interface has (and, at 16 octets, longer than a MAC column).
        raise MalformedPacket(f"Ethernet (htype 1) with hardware address length {hlen}, not 6")
    values = Options.collect(parse_tlvs(data[HEADER_SIZE:], "options"))
    options = Options.of(values)
    overload = options.overload
    if overload & 1:
        Options.collect(parse_tlvs(file, "file"), values)
        file = b""
    if overload & 2:
        Options.collect(parse_tlvs(sname, "sname"), values)
        sname = b""
    return Packet(op, xid, chaddr, options, htype, hlen, hops, secs, flags, _address(ciaddr),
                  _address(yiaddr), _address(siaddr), _address(giaddr),
                  _cstring(sname) if sname[:1] != b"\0" else b"",
                  _cstring(file) if file[:1] != b"\0" else b"")


_ZERO_PACKED = bytes(4)


def _address(raw: bytes) -> IPv4Address:
    return ZERO if raw == _ZERO_PACKED else IPv4Address(raw)


def _packed(address: IPv4Address) -> bytes:
    return _ZERO_PACKED if address is ZERO else address.packed


def build(packet: Packet, items: list[tuple[int, bytes]] | None = None,
          max_message: int = DEFAULT_MAX_MESSAGE) -> bytes:
    """The wire form of `packet`. `items` (ordered) override packet.options when given."""
    if items is None:
        items = list(packet.options.items())
    if len(packet.sname) > 64 or len(packet.file) > 128:
        raise MalformedPacket("sname or file too long for its field")
    space = max(max_message, DEFAULT_MAX_MESSAGE) - IP_UDP_HEADERS - HEADER_SIZE - 1  # 1: End
    encoded = encode_tlvs(items)
    sname, file, overload = packet.sname, packet.file, 0
    if len(encoded) > space:
        encoded, file, sname, overload = _overload(items, space, packet)
    header = _HEADER.pack(packet.op, packet.htype, packet.hlen, packet.hops, packet.xid,
                          packet.secs, packet.flags, _packed(packet.ciaddr), _packed(packet.yiaddr),
                          _packed(packet.siaddr), _packed(packet.giaddr), packet.chaddr.ljust(16, b"\0"),
                          sname.ljust(64, b"\0"), file.ljust(128, b"\0"), MAGIC)
    if overload:
        encoded = encode_tlvs([(Opt.OVERLOAD, bytes((overload,)))]) + encoded
    out = header + encoded + b"\xff"
    return out.ljust(MIN_MESSAGE, b"\0")


def _overload(items: list[tuple[int, bytes]], space: int, packet: Packet
              ) -> tuple[bytes, bytes, bytes, int]:
    """Fill options (less 3 octets for option 52), then file, then sname (RFC 3396 section 7)."""
    fields = [space - 3]
    if not packet.file:
        fields.append(128 - 1)  # each overloaded field ends with its own End
    if not packet.sname and not packet.file:
        fields.append(64 - 1)
    buffers: list[bytearray] = [bytearray() for _ in fields]
    current = 0
    for code, value in items:
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            tlv = bytes((code, len(chunk))) + chunk
            while current < len(fields) and len(buffers[current]) + len(tlv) > fields[current]:
                current += 1
            if current == len(fields):
                raise MalformedPacket("reply options do not fit in the client's maximum message size")
            buffers[current] += tlv
    options = bytes(buffers[0])
    file = bytes(buffers[1]) + b"\xff" if len(buffers) > 1 and buffers[1] else packet.file
    sname = bytes(buffers[2]) + b"\xff" if len(buffers) > 2 and buffers[2] else packet.sname
    overload = (1 if len(buffers) > 1 and buffers[1] else 0) | (2 if len(buffers) > 2 and buffers[2] else 0)
    return options, file, sname, overload
