"""Other DHCP servers on our admin links: what a seen reply means, and our probe (pure).

A DHCP server answers a client's DISCOVER with an OFFER and its REQUEST with an
ACK (RFC 2131 section 4.3.1), broadcast to the client's link when the client
has no address yet or asks for it with the broadcast flag (section 4.1). So on
an admin link every server that answers a booting machine is visible to us,
passively, and any server at all answers a DISCOVER of our own, actively.
`examine` decides what one such BOOTREPLY is:

- OURS: sent by this daemon (server identifier or source address is one of
  ours). Never a finding; the transport already skips frames we sent.
- ALLOWED: from a server the operator listed in `[rogue] allowed`.
- EXPECTED: proxy mode (config.dhcp.mode = proxy) exists beside a real DHCP
  server, which hands out the addresses (PXE specification 2.1, section 2.2.5
  "ProxyDHCP"): its offers are expected and are findings only when they carry
  PXE boot options themselves (vendor class "PXEClient", a boot file or a
  TFTP server name): then it is another PXE server that competes with us for
  every booting machine. When the operator names the real server(s) in
  `allowed`, any other server is a finding, PXE options or not.
- FOREIGN: anything else that offers or acknowledges: a finding.
- IGNORED / MALFORMED: not an OFFER or ACK (requests, NAKs), or broken bytes.
  A broken packet is counted by the caller and dropped; `read` never raises.

The server is named by option 54, its server identifier (section 4.3.1 "MUST
include"), else by the IP source address; its MAC is the Ethernet source.

The probe (`build_probe`) is a DISCOVER from a locally administered MAC derived
from our interface's (IEEE 802 "U/L" bit set, so it never equals a machine's
real address and no lease any server keeps for the admin node itself is
touched), with the broadcast flag (section 4.1: servers broadcast the OFFER,
so we see it without an address). It is deliberately NOT a PXE client (no
vendor class "PXEClient", no RFC 4578 options): a PXE server that records
machines as they PXE-boot (bootd itself, Crowbar, Cobbler) would add the probe
to its inventory every few minutes. So PXE-only proxy servers, which answer
only PXE clients, are found passively, when real machines boot.
`frame`/`unframe` wrap DHCP in IPv4/UDP (RFC 791, RFC 768) for the packet
socket that sends the probe from 0.0.0.0:68, as a client without an address
does (RFC 2131 section 4.1).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from bootd.config import DhcpMode
from bootd.dhcp.options import MalformedPacket, MessageType, Opt, Options, u8
from bootd.dhcp.packet import BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, ZERO, Packet, build, parse
from bootd.model.findings import Offered, ReplyKind

CLIENT_PORT, SERVER_PORT = 68, 67
BROADCAST = IPv4Address("255.255.255.255")
PXE_VENDOR = b"PXEClient"
PROBE_PARAMETERS = bytes((Opt.SUBNET_MASK, Opt.ROUTER, Opt.DNS_SERVERS, Opt.DOMAIN_NAME, Opt.LEASE_TIME,
                          Opt.SERVER_ID, Opt.VENDOR_SPECIFIC, Opt.VENDOR_CLASS, Opt.TFTP_SERVER_NAME,
                          Opt.BOOTFILE_NAME))
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
UDP = 17


class Verdict(enum.StrEnum):
    FOREIGN = "foreign"
    OURS = "ours"
    ALLOWED = "allowed"
    EXPECTED = "expected"
    IGNORED = "ignored"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Identity:
    """What we are, for telling our replies from others'."""

    own: frozenset[IPv4Address]        # our server identifiers and interface addresses
    allowed: frozenset[IPv4Address] = frozenset()
    mode: DhcpMode = DhcpMode.SERVER


@dataclass(frozen=True, slots=True)
class Examined:
    verdict: Verdict
    reason: str = ""
    server_ip: IPv4Address | None = None
    offered: Offered | None = None
    xid: int = 0
    chaddr: bytes = b""


def read(data: bytes, source: IPv4Address, me: Identity) -> Examined:
    """`examine` of the bytes of one UDP payload; broken bytes are MALFORMED, never an exception."""
    try:
        return examine(parse(data), source, me)
    except MalformedPacket as exc:
        return Examined(Verdict.MALFORMED, str(exc))


def examine(packet: Packet, source: IPv4Address, me: Identity) -> Examined:
    """What one BOOTREPLY received from IP `source` means (see the module docstring).
    Raises MalformedPacket for bad option values."""
    if packet.op != BOOTREPLY:
        return Examined(Verdict.IGNORED, "not a BOOTREPLY")
    kind = packet.message_type
    if kind not in (MessageType.OFFER, MessageType.ACK):
        return Examined(Verdict.IGNORED, f"{'no message type' if kind is None else kind.name}: not an answer")
    server_id = packet.options.server_id
    server = server_id if server_id is not None else source
    what = offered(packet)
    base = Examined(Verdict.FOREIGN, "another DHCP server", server, what, packet.xid, packet.hardware_address)
    if server in me.own or source in me.own:
        return _with(base, Verdict.OURS, "our own reply")
    if server in me.allowed or source in me.allowed:
        return _with(base, Verdict.ALLOWED, "a server listed in [rogue] allowed")
    if me.mode is DhcpMode.PROXY and not me.allowed:
        if not what.pxe:
            return _with(base, Verdict.EXPECTED, "proxy mode: the network's DHCP server, without PXE options")
        return _with(base, Verdict.FOREIGN, "another PXE server")
    return base


def _with(e: Examined, verdict: Verdict, reason: str) -> Examined:
    return Examined(verdict, reason, e.server_ip, e.offered, e.xid, e.chaddr)


def offered(packet: Packet) -> Offered:
    o = packet.options
    kind = ReplyKind.ACK if packet.message_type is MessageType.ACK else ReplyKind.OFFER
    router = o.get(Opt.ROUTER, b"")
    if router and len(router) % 4:
        raise MalformedPacket(f"option 3 (router) has length {len(router)}, not a multiple of 4")
    lease = o.get(Opt.LEASE_TIME)
    if lease is not None and len(lease) != 4:
        raise MalformedPacket(f"option 51 (lease time) must be 4 bytes, not {len(lease)}")
    boot_file = _text(o.get(Opt.BOOTFILE_NAME) or packet.file)
    vendor = o.vendor_class or b""
    pxe = vendor.startswith(PXE_VENDOR) or bool(boot_file) or bool(o.get(Opt.TFTP_SERVER_NAME))
    return Offered(kind=kind, address=packet.yiaddr if packet.yiaddr != ZERO else None,
                   server_id=o.server_id, router=IPv4Address(router[:4]) if router else None,
                   lease_time=None if lease is None else int.from_bytes(lease, "big"),
                   next_server=packet.siaddr if packet.siaddr != ZERO else None,
                   boot_file=boot_file, pxe=pxe)


def _text(raw: bytes) -> str:
    """A wire string for display: NULs cut, non-printable bytes escaped, bounded."""
    raw = raw.split(b"\0", 1)[0][:128]
    return "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in raw)


# -- the probe ----------------------------------------------------------------------------


def probe_mac(interface_mac: bytes) -> bytes:
    """A locally administered MAC (first octet bit 1, IEEE 802) derived from ours;
    stable, so every probe from one interface is the same client to a server."""
    if len(interface_mac) != 6:
        raise ValueError("an Ethernet MAC is 6 bytes")
    first = interface_mac[0] | 0x02
    rest = interface_mac[1:]
    if first == interface_mac[0]:  # already locally administered: still a different address
        rest = rest[:-1] + bytes((rest[-1] ^ 0xFF,))
    return bytes((first & 0xFE,)) + rest  # unicast (I/G bit clear)


def build_probe(chaddr: bytes, xid: int) -> bytes:
    """Our DISCOVER (see the module docstring), as a DHCP payload."""
    items: list[tuple[int, bytes]] = [
             (Opt.MESSAGE_TYPE, u8(MessageType.DISCOVER)),
             (Opt.PARAMETER_REQUEST_LIST, PROBE_PARAMETERS),
             (Opt.MAX_MESSAGE_SIZE, struct.pack("!H", 1500))]
    packet = Packet(op=BOOTREQUEST, xid=xid & 0xFFFFFFFF, chaddr=chaddr, flags=BROADCAST_FLAG,
                    options=Options(items))
    return build(packet, items)


def answers_probe(e: Examined, chaddr: bytes, xid: int) -> bool:
    """Is this reply to our probe (same transaction and client hardware address)?"""
    return e.xid == xid and e.chaddr == chaddr


# -- IPv4/UDP around it (for a packet socket) -----------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total > 0xFFFF:
        total = (total >> 16) + (total & 0xFFFF)
    return ~total & 0xFFFF


def frame(payload: bytes, source: IPv4Address = ZERO, destination: IPv4Address = BROADCAST,
          sport: int = CLIENT_PORT, dport: int = SERVER_PORT, ident: int = 0) -> bytes:
    """An IPv4 datagram (TTL 64, DF clear) carrying `payload` in UDP; UDP checksum 0
    ("none", allowed over IPv4 by RFC 768)."""
    length = _IP.size + _UDP.size + len(payload)
    header = _IP.pack(0x45, 0, length, ident & 0xFFFF, 0, 64, UDP, 0, source.packed, destination.packed)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + _UDP.pack(sport, dport, _UDP.size + len(payload), 0) + payload


@dataclass(frozen=True, slots=True)
class Datagram:
    source: IPv4Address
    destination: IPv4Address
    sport: int
    dport: int
    payload: bytes


def unframe(data: bytes) -> Datagram:
    """The UDP datagram in one IPv4 packet; MalformedPacket if it is not one (or a fragment)."""
    if len(data) < _IP.size or data[0] >> 4 != 4:
        raise MalformedPacket("not an IPv4 packet")
    ihl = (data[0] & 0x0F) * 4
    total = int.from_bytes(data[2:4], "big")
    if ihl < _IP.size or total < ihl + _UDP.size or total > len(data):
        raise MalformedPacket("IPv4 header or total length out of range")
    if data[9] != UDP:
        raise MalformedPacket("not UDP")
    if int.from_bytes(data[6:8], "big") & 0x3FFF:  # more-fragments or an offset
        raise MalformedPacket("an IPv4 fragment")
    sport, dport, ulen, _ = _UDP.unpack_from(data, ihl)
    if ulen < _UDP.size or ihl + ulen > total:
        raise MalformedPacket("UDP length out of range")
    return Datagram(IPv4Address(data[12:16]), IPv4Address(data[16:20]), sport, dport,
                    data[ihl + _UDP.size : ihl + ulen])
