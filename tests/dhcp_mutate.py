"""A DHCP mutation corpus and the server-path harness, shared by tests/test_dhcp_fuzz.py and
bench/fuzz_dhcp.py.

The corpus is what real clients send (RFC 2131 section 4.4, PXE 2.1, RFC 4578):
a BIOS PXE ROM, iPXE (user class and option 175), UEFI PXE and UEFI HTTP boot
(LAB-NOTES' option 60 strings), a relayed client with option 82 (RFC 3046), a
Linux client with a client-id and hostname, an RFC 4361 DUID client-id, each
REQUEST guise, INFORM, RELEASE, DECLINE, options overloaded into `file` and
`sname` and split over several instances (RFC 3396), and what a server should
never act on (a BOOTREPLY, plain BOOTP, non-Ethernet hardware). Each entry is a
Spec, so tests can build it with scapy too and check our parser against an
independent encoder. mutate() makes structured mutations (a new MAC, another
message type, relay, requested address, option value) and byte-level ones.

tests/dhcp_harness.py drives the server path behind the codec with it.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from bootd.dhcp.options import MessageType, Opt, Options, encode_tlvs
from bootd.dhcp.packet import MAGIC, ZERO, Packet

SERVER = IPv4Address("198.18.0.1")
RELAY = IPv4Address("198.19.0.1")
KNOWN_MAC, KNOWN_IP = "52:54:00:00:00:09", IPv4Address("198.18.0.15")
CONFIG = f"""
[server]
admin_address = "{SERVER}"
interfaces = ["eth0"]
[[subnets]]
cidr = "198.18.0.0/24"
router = "198.18.0.254"
dns_servers = ["198.18.0.53"]
domain = "rack1.lab"
lease_time = 600
static_range = "198.18.0.10-198.18.0.19"
dynamic_pool = "198.18.0.100-198.18.0.163"
[[subnets]]
cidr = "198.19.0.0/16"
lease_time = 3600
dynamic_pool = "198.19.1.1-198.19.1.200"
"""
Items = list[tuple[int, bytes]]
# RFC 2131 figure 1, written out here rather than imported: the corpus is laid out
# independently of the codec it feeds.
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def mac(n: int) -> bytes:
    return bytes.fromhex("0011223344") + bytes((n,))


PRL = bytes([1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 43, 54, 60, 66, 67, 128, 129, 130, 131, 132, 133,
             134, 135, 175, 203])
UUID = b"\x00" + bytes(range(16))
PXE_BIOS: Items = [(57, struct.pack("!H", 1260)), (93, b"\x00\x00"), (94, b"\x01\x02\x01"), (97, UUID),
                   (60, b"PXEClient:Arch:00000:UNDI:002001"), (55, PRL)]
IPXE: Items = [(57, struct.pack("!H", 1472)), (93, b"\x00\x00"), (94, b"\x01\x02\x01"), (97, UUID),
               (60, b"PXEClient:Arch:00000:UNDI:002001"), (77, b"iPXE"),
               (175, bytes.fromhex("b1050180861015eb0301010013010115010110010117010119010121010122"))]
UEFI_PXE: Items = [(57, struct.pack("!H", 1472)), (93, b"\x00\x07"), (94, b"\x01\x03\x00"), (97, UUID),
                   (60, b"PXEClient:Arch:00007:UNDI:003000"), (55, PRL)]
UEFI_HTTP: Items = [(57, struct.pack("!H", 1472)), (93, b"\x00\x10"), (94, b"\x01\x03\x00"), (97, UUID),
                    (60, b"HTTPClient:Arch:00016:UNDI:003000"), (55, PRL)]
OPTION82 = bytes((1, 6)) + b"eth1/4" + bytes((2, 8)) + b"switch-a"


def _t(kind: MessageType) -> tuple[int, bytes]:
    return (Opt.MESSAGE_TYPE, bytes((kind,)))


SELECT: Items = [(50, ip("198.18.0.100")), (54, SERVER.packed)]
D, R = MessageType.DISCOVER, MessageType.REQUEST


@dataclass(frozen=True)
class Spec:
    """One corpus packet: BOOTP header fields, options, and (overloaded) file/sname options."""

    name: str
    items: Items
    chaddr: bytes = mac(1)
    op: int = 1
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0x1234ABCD
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    file_items: Items | None = None  # options in `file` (option 52 bit 1)
    sname_items: Items | None = None  # options in `sname` (option 52 bit 2)
    end: bool = True

    def packet(self) -> Packet:
        return Packet(op=self.op, xid=self.xid, chaddr=self.chaddr.ljust(16, b"\0"), htype=self.htype,
                      hlen=self.hlen, hops=self.hops, flags=self.flags, ciaddr=self.ciaddr,
                      giaddr=self.giaddr, options=Options(self.items))

    def encode(self) -> bytes:
        """Wire bytes, laid out as given (no padding, overload or reordering by our builder)."""
        file = b"" if self.file_items is None else encode_tlvs(self.file_items) + b"\xff"
        sname = b"" if self.sname_items is None else encode_tlvs(self.sname_items) + b"\xff"
        p = self.packet()
        header = HEADER.pack(p.op, p.htype, p.hlen, p.hops, p.xid, 0, p.flags, p.ciaddr.packed,
                              ZERO.packed, ZERO.packed, p.giaddr.packed, p.chaddr, sname.ljust(64, b"\0"),
                              file.ljust(128, b"\0"), MAGIC)
        return header + encode_tlvs(self.items) + (b"\xff" if self.end else b"")


SPECS: tuple[Spec, ...] = (
    Spec("pxe-bios-discover", [_t(D), *PXE_BIOS], flags=0x8000),
    Spec("pxe-bios-request", [_t(R), *SELECT, *PXE_BIOS], flags=0x8000),
    Spec("ipxe-discover", [_t(D), (61, b"\x01" + mac(2)), *IPXE], chaddr=mac(2)),
    Spec("ipxe-request", [_t(R), (61, b"\x01" + mac(2)), *SELECT, *IPXE], chaddr=mac(2)),
    Spec("uefi-pxe-discover", [_t(D), *UEFI_PXE], chaddr=mac(3)),
    Spec("uefi-pxe-request", [_t(R), (50, ip("198.18.0.101")), (54, SERVER.packed), *UEFI_PXE],
         chaddr=mac(3)),
    Spec("uefi-http-discover", [_t(D), *UEFI_HTTP], chaddr=mac(4)),
    Spec("uefi-http-request", [_t(R), (50, ip("198.18.0.102")), (54, SERVER.packed), *UEFI_HTTP],
         chaddr=mac(4)),
    Spec("relayed-discover", [_t(D), *PXE_BIOS, (82, OPTION82)], chaddr=mac(5), giaddr=RELAY, hops=1),
    Spec("relayed-request", [_t(R), (50, ip("198.19.1.1")), (54, SERVER.packed), *PXE_BIOS, (82, OPTION82)],
         chaddr=mac(5), giaddr=RELAY, hops=1),
    Spec("linux-discover", [_t(D), (61, b"\x01" + mac(6)), (12, b"web-01"), (55, bytes([1, 3, 6, 15, 28]))],
         chaddr=mac(6)),
    Spec("linux-renewing", [_t(R), (61, b"\x01" + mac(6)), (12, b"web-01")], chaddr=mac(6),
         ciaddr=IPv4Address("198.18.0.103")),
    Spec("init-reboot", [_t(R), (50, ip("198.18.0.104")), (61, b"\x01" + mac(7))], chaddr=mac(7)),
    Spec("duid-discover", [_t(D), (61, b"\xff\x00\x00\x00\x01\x00\x04" + bytes(range(16))),
                           (57, b"\x02\x40")], chaddr=mac(8)),
    Spec("inform", [_t(MessageType.INFORM), (55, bytes([1, 3, 6, 15, 66, 67]))], chaddr=mac(10),
         ciaddr=IPv4Address("198.18.0.30")),
    Spec("release", [_t(MessageType.RELEASE), (54, SERVER.packed)], ciaddr=IPv4Address("198.18.0.100")),
    Spec("decline", [_t(MessageType.DECLINE), *SELECT]),
    Spec("known-node-discover", [_t(D), *PXE_BIOS], chaddr=bytes.fromhex(KNOWN_MAC.replace(":", ""))),
    Spec("overloaded-both", [_t(D), (52, b"\x03"), (57, b"\x05\xc0")], chaddr=mac(11),
         file_items=[(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00"), (55, PRL)],
         sname_items=[(12, b"overloaded"), (61, b"\x01" + mac(11))]),
    Spec("overloaded-file", [(52, b"\x01")], chaddr=mac(12), file_items=[_t(D), *UEFI_PXE]),
    Spec("split-options", [_t(D), (77, b"iP"), (55, PRL[:10]), (77, b"XE"), (55, PRL[10:]),
                           (60, b"PXEClient:Arch:00000"), (60, b":UNDI:002001")], chaddr=mac(13)),
    Spec("no-end", [_t(D), *PXE_BIOS], chaddr=mac(14), end=False),
    Spec("offer-from-another-server", [_t(MessageType.OFFER), (54, ip("198.18.0.2"))], op=2),
    Spec("plain-bootp", [], chaddr=mac(15)),
    Spec("token-ring", [_t(D)], htype=6, hlen=6, chaddr=mac(16)),
)
CORPUS: tuple[bytes, ...] = tuple(s.encode() for s in SPECS)

# -- mutation -------------------------------------------------------------------

POOL_IPS = ("198.18.0.100", "198.18.0.130", "198.18.0.163", "198.18.0.164", "198.18.0.15", "198.18.0.10",
            "198.19.1.1", "198.19.1.200", "198.19.2.1", "10.0.0.1", "0.0.0.0", "255.255.255.255")
GIADDRS = ("0.0.0.0", "0.0.0.0", "198.19.0.1", "198.19.255.254", "198.20.0.1", "198.18.0.5")
VALUES: dict[int, tuple[bytes, ...]] = {
    Opt.CLIENT_ID: (b"", b"\x01", b"\x01" + bytes(6), b"\x00" + b"c" * 126, b"\x00" + b"c" * 127,
                    b"\x00" * 300),
    Opt.RELAY_AGENT_INFO: (b"", OPTION82, b"\x01\xff" + b"a" * 255 + b"\x02\xff" + b"b" * 255,
                           b"\x01\x05abc", b"\x01\x00\x02\x00"),
    Opt.MAX_MESSAGE_SIZE: (b"\x00\x00", b"\x01\x2c", b"\x02\x40", b"\x05\xdc", b"\xff\xff", b"\x02", b""),
    Opt.OVERLOAD: (b"\x00", b"\x01", b"\x02", b"\x03", b"\x04", b"", b"\x03\x03"),
    Opt.CLIENT_ARCH: (b"", b"\x00", b"\x00\x00", b"\x00\x06", b"\x00\x07", b"\x00\x09", b"\x00\x0a",
                      b"\x00\x0b", b"\x00\x0f", b"\x00\x10", b"\x00\x13", b"\xff\xff", b"\x00\x07\x00\x00"),
    Opt.CLIENT_UUID: (UUID, b"\x01" + bytes(16), bytes(5), b""),
    Opt.USER_CLASS: (b"iPXE", b"\x04iPXE", b"\x04iPXE\x03abc", b"\x00", b"\x09iPXE"),
    Opt.VENDOR_CLASS: (b"PXEClient", b"HTTPClient:Arch:00016:UNDI:003000", b"PXEClient:Arch:00007",
                       b"MSFT 5.0", b"\xff" * 200),
    Opt.IPXE: (b"", b"\xb1\x05\x01\x80\x86\x10\x15", b"\xb1", b"\xb0\x01\x01"),
    Opt.HOSTNAME: (b"", b"host", b"\xff\xfe", b"h" * 255 + b"i" * 200),
    Opt.MESSAGE_TYPE: (*(bytes((n,)) for n in range(10)), b"", b"\x01\x01"),
    Opt.PARAMETER_REQUEST_LIST: (b"", PRL, bytes(range(256)), bytes(range(256)) * 2),
    Opt.REQUESTED_IP: (*(ip(a) for a in POOL_IPS), b"\x01\x02", b""),
    Opt.SERVER_ID: (SERVER.packed, ip("198.18.0.2"), b"\x01", b""),
}
BYTES = b"\x00\x01\x02\x03\x06\x10\x35\x52\x63\x7f\x80\xfe\xff"


def _structured(rng: random.Random, spec: Spec) -> bytes:
    """A field-level change to a corpus entry, so most results still reach decide."""
    kind = rng.randrange(8)
    items = list(spec.items)
    if kind <= 2:  # a new client: the lease table sees many MACs (a spoofed-MAC flood)
        new = bytes((0x02,)) + rng.randbytes(5)
        items = [(c, b"\x01" + new if c == Opt.CLIENT_ID and v[:1] == b"\x01" else v) for c, v in items]
        spec = replace(spec, chaddr=new, xid=rng.getrandbits(32))
    elif kind == 3:
        spec = replace(spec, giaddr=IPv4Address(rng.choice(GIADDRS)), hops=rng.randrange(20))
    elif kind == 4:
        spec = replace(spec, ciaddr=IPv4Address(rng.choice(POOL_IPS)), flags=rng.choice((0, 0x8000, 0xFFFF)))
    elif kind == 5:
        spec = replace(spec, htype=rng.choice((1, 1, 6, 32, 0)), hlen=rng.choice((6, 6, 0, 5, 16, 17, 255)),
                       op=rng.choice((1, 1, 2, 3)))
    else:  # an option replaced, added or removed
        code = rng.choice(tuple(VALUES))
        value = rng.choice(VALUES[code])
        items = [(c, v) for c, v in items if c != code]
        if kind == 6 or rng.random() < 0.8:
            items.insert(rng.randrange(len(items) + 1), (code, value))
    return replace(spec, items=items).encode()


def mutate(rng: random.Random, seed: bytes | None = None) -> bytes:
    """One mutated message: a corpus entry (or `seed`), structurally changed or not, with 0-3
    byte-level mutations."""
    if seed is None and rng.random() < 0.6:
        data = bytearray(_structured(rng, rng.choice(SPECS)))
    else:
        data = bytearray(seed if seed is not None else rng.choice(CORPUS))
    for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 3))):
        kind = rng.randrange(7)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a bit
            data[at % len(data)] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # an interesting byte, mostly in the options
            where = rng.randrange(236, len(data)) if len(data) > 236 and rng.random() < 0.7 else at
            data[where % len(data)] = rng.choice(BYTES)
        elif kind == 2:  # cut
            del data[at:]
        elif kind == 3:  # insert random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 4 and data:  # repeat a slice
            end = min(len(data), at + rng.randint(1, 64))
            data[at:at] = data[at:end] * rng.randint(1, 8)
        elif kind == 5:  # splice with another corpus entry
            other = rng.choice(CORPUS)
            data = data[:at] + other[rng.randrange(len(other) + 1):]
        else:  # an option TLV appended after End (or instead of it)
            code = rng.choice(tuple(VALUES))
            data += encode_tlvs([(code, rng.choice(VALUES[code]))])
    return bytes(data)
