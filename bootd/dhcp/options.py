"""DHCP options: codes, the TLV codec, and typed accessors (pure).

Options are TLVs after the magic cookie (RFC 2132 section 2). Pad (0) and End
(255) have no length. One option may appear several times: RFC 3396 section 7
says the instances are concatenated, in the order of the aggregate buffer,
which is the options field, then `file`, then `sname` when option 52 overloads
them (RFC 2131 section 4.1, RFC 2132 section 9.3). `Options` holds the
concatenated values by code; typed getters check lengths and raise
MalformedPacket, the one error of this codec, so a bad option value drops the
packet with a reason instead of crashing a handler.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator, Mapping
from ipaddress import IPv4Address


class MalformedPacket(ValueError):
    """Bytes that are not a usable DHCP message; str() says why."""


MAX_CLIENT_ID = 127


class Opt(enum.IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS_SERVERS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    BROADCAST_ADDRESS = 28
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER_NAME = 66
    BOOTFILE_NAME = 67
    USER_CLASS = 77
    RELAY_AGENT_INFO = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_UUID = 97
    IPXE = 175
    PXELINUX_MAGIC = 208
    PXELINUX_CONFIG_FILE = 209
    PXELINUX_PATH_PREFIX = 210
    PXELINUX_REBOOT_TIME = 211
    END = 255


class MessageType(enum.IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class RelaySub(enum.IntEnum):
    """RFC 3046 section 2.0 sub-options of option 82."""

    CIRCUIT_ID = 1
    REMOTE_ID = 2


# iPXE's encapsulated option 175: sub-option 176 "no-pxedhcp" tells iPXE not to
# wait for ProxyDHCP offers (about 2 s per boot otherwise; LAB-NOTES).
IPXE_NO_PXEDHCP = 176
# PXE 2.1 option 43 sub-option 6, PXE_DISCOVERY_CONTROL; bit 3 (value 8) means
# "use the boot file name in this packet, skip boot server discovery".
PXE_DISCOVERY_CONTROL = 6


def parse_tlvs(buf: bytes, where: str) -> Iterator[tuple[int, bytes]]:
    """(code, value) for each option instance in buf, stopping at End."""
    i, n = 0, len(buf)
    while i < n:
        code = buf[i]
        if code == Opt.PAD:
            i += 1
            continue
        if code == Opt.END:
            return
        if i + 1 >= n:
            raise MalformedPacket(f"option {code} in {where} has no length byte")
        length = buf[i + 1]
        end = i + 2 + length
        if end > n:
            raise MalformedPacket(f"option {code} in {where} runs past the end ({length} bytes)")
        yield code, buf[i + 2 : end]
        i = end
    # RFC 2131 requires End, but many clients' packets are cut at the last
    # option: accept a buffer that simply runs out.


def encode_tlvs(items: Iterable[tuple[int, bytes]]) -> bytes:
    """Options as bytes, values over 255 octets split into instances (RFC 3396 section 6)."""
    out = bytearray()
    for code, value in items:
        size = len(value)
        if size <= 255:  # nearly every option: one instance, no slicing (the reply hot path)
            out.append(code)
            out.append(size)
            out += value
            continue
        for start in range(0, size, 255):
            chunk = value[start : start + 255]
            out += bytes((code, len(chunk))) + chunk
    return bytes(out)


class Options(Mapping[int, bytes]):
    """Option values by code, each the concatenation of its instances."""

    __slots__ = ("_values",)

    def __init__(self, items: Iterable[tuple[int, bytes]] = ()) -> None:
        self._values = Options.collect(items)

    @staticmethod
    def collect(items: Iterable[tuple[int, bytes]], values: dict[int, bytes] | None = None
                ) -> dict[int, bytes]:
        """Instances concatenated by code (RFC 3396), into `values` when given."""
        if values is None:
            values = {}
        for code, value in items:
            values[code] = values[code] + value if code in values else value
        return values

    @classmethod
    def of(cls, values: dict[int, bytes]) -> Options:
        """Options over `values` as they are (collect()'s result), without copying."""
        options = cls.__new__(cls)
        options._values = values
        return options

    def __getitem__(self, code: int) -> bytes:
        return self._values[code]

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def __contains__(self, code: object) -> bool:
        return code in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return "Options({" + ", ".join(f"{c}: {v!r}" for c, v in self._values.items()) + "})"

    # -- typed getters --------------------------------------------------------

    def _fixed(self, code: Opt, size: int) -> bytes | None:
        value = self._values.get(code)
        if value is not None and len(value) != size:
            raise MalformedPacket(f"option {code.value} ({code.name.lower()}) must be {size} "
                                  f"bytes, not {len(value)}")
        return value

    def _ip(self, code: Opt) -> IPv4Address | None:
        value = self._fixed(code, 4)
        return None if value is None else IPv4Address(value)

    @property
    def message_type(self) -> MessageType | None:
        value = self._fixed(Opt.MESSAGE_TYPE, 1)
        if value is None:
            return None
        try:
            return MessageType(value[0])
        except ValueError:
            raise MalformedPacket(f"unknown DHCP message type {value[0]}") from None

    @property
    def requested_ip(self) -> IPv4Address | None:
        return self._ip(Opt.REQUESTED_IP)

    @property
    def server_id(self) -> IPv4Address | None:
        return self._ip(Opt.SERVER_ID)

    @property
    def overload(self) -> int:
        value = self._fixed(Opt.OVERLOAD, 1)
        if value is None:
            return 0
        if value[0] not in (1, 2, 3):
            raise MalformedPacket(f"option 52 (overload) has invalid value {value[0]}")
        return value[0]

    @property
    def client_id(self) -> bytes | None:
        value = self._values.get(Opt.CLIENT_ID)
        if value is not None and len(value) < 2:  # RFC 2132 9.14: at least 2 octets
            raise MalformedPacket("option 61 (client identifier) is shorter than 2 bytes")
        if value is not None and len(value) > MAX_CLIENT_ID:
            # RFC 3396 lets a long option span several TLVs; a lease row keeps it (as
            # hex) in 255 characters, and no real client needs more than a DUID's 130.
            raise MalformedPacket(f"option 61 (client identifier) is longer than {MAX_CLIENT_ID} bytes")
        return value

    @property
    def max_message_size(self) -> int | None:
        value = self._fixed(Opt.MAX_MESSAGE_SIZE, 2)
        return None if value is None else int(struct.unpack("!H", value)[0])

    @property
    def parameter_request_list(self) -> bytes:
        return self._values.get(Opt.PARAMETER_REQUEST_LIST, b"")

    @property
    def vendor_class(self) -> bytes | None:
        return self._values.get(Opt.VENDOR_CLASS)

    @property
    def user_classes(self) -> tuple[bytes, ...]:
        """RFC 3004 section 4: length-prefixed items. Many clients (iPXE among
        them) send one bare string instead; that is read as a single item."""
        value = self._values.get(Opt.USER_CLASS)
        if not value:
            return ()
        items, i = [], 0
        while i < len(value):
            length = value[i]
            if length == 0 or i + 1 + length > len(value):
                return (value,)
            items.append(value[i + 1 : i + 1 + length])
            i += 1 + length
        return tuple(items)

    @property
    def client_arches(self) -> tuple[int, ...]:
        """RFC 4578 section 2.1: a list of 16-bit architecture types."""
        value = self._values.get(Opt.CLIENT_ARCH)
        if value is None:
            return ()
        if not value or len(value) % 2:
            raise MalformedPacket(f"option 93 (client architecture) has odd length {len(value)}")
        return struct.unpack(f"!{len(value) // 2}H", value)

    @property
    def client_uuid(self) -> bytes | None:
        """RFC 4578 section 2.3: type 0 then 16 octets of UUID/GUID."""
        value = self._values.get(Opt.CLIENT_UUID)
        if value is None:
            return None
        if len(value) != 17 or value[0] != 0:
            raise MalformedPacket("option 97 (client machine identifier) is not type 0 + 16 bytes")
        return value[1:]

    @property
    def relay_agent_info(self) -> dict[int, bytes]:
        value = self._values.get(Opt.RELAY_AGENT_INFO)
        return {} if value is None else dict(Options(parse_tlvs(value, "option 82")))

    @property
    def ipxe(self) -> dict[int, bytes]:
        value = self._values.get(Opt.IPXE)
        return {} if value is None else dict(Options(parse_tlvs(value, "option 175")))

    @property
    def hostname(self) -> bytes | None:
        return self._values.get(Opt.HOSTNAME)


def u8(value: int) -> bytes:
    return bytes((value,))


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def ips(*addresses: IPv4Address) -> bytes:
    return b"".join(a.packed for a in addresses)
