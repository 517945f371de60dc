"""The DHCP codec against scapy (the oracle), both directions, plus hostile bytes."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from bootd.dhcp.options import MalformedPacket, MessageType, Opt, Options, encode_tlvs
from bootd.dhcp.packet import BOOTREPLY, BOOTREQUEST, HEADER_SIZE, MAGIC, Packet, build, parse

MAC = bytes.fromhex("525400123456")
CHADDR = MAC + bytes(10)


def scapy_options(raw: bytes) -> dict[str, object]:
    pkt = BOOTP(raw)
    return {k: v for k, *vs in pkt[DHCP].options if isinstance(k, str) and k != "end"
            for v in [vs[0] if len(vs) == 1 else tuple(vs)]}


def test_reply_we_build_parses_the_same_in_scapy() -> None:
    reply = Packet(op=BOOTREPLY, xid=0xDEADBEEF, chaddr=CHADDR, flags=0x8000,
                   yiaddr=IPv4Address("198.18.0.100"), siaddr=IPv4Address("198.18.0.1"),
                   giaddr=IPv4Address("198.19.0.1"), file=b"undionly.kpxe")
    items = [(Opt.MESSAGE_TYPE, b"\x02"), (Opt.SERVER_ID, IPv4Address("198.18.0.1").packed),
             (Opt.LEASE_TIME, struct.pack("!I", 3600)), (Opt.SUBNET_MASK, bytes((255, 255, 255, 0))),
             (Opt.ROUTER, IPv4Address("198.18.0.254").packed), (Opt.HOSTNAME, b"node-01"),
             (Opt.BOOTFILE_NAME, b"undionly.kpxe")]
    raw = build(reply, items)
    assert len(raw) >= 300
    pkt = BOOTP(raw)
    assert (pkt.op, pkt.xid, pkt.flags) == (2, 0xDEADBEEF, 0x8000)
    assert (pkt.yiaddr, pkt.siaddr, pkt.giaddr) == ("198.18.0.100", "198.18.0.1", "198.19.0.1")
    assert pkt.chaddr[:6] == MAC
    assert pkt.file.rstrip(b"\0") == b"undionly.kpxe"
    opts = scapy_options(raw)
    assert opts["message-type"] == 2
    assert opts["server_id"] == "198.18.0.1"
    assert opts["lease_time"] == 3600
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == "198.18.0.254"
    assert opts["hostname"] == b"node-01"
    # And our own parser reads back what it wrote.
    back = parse(raw)
    assert back.yiaddr == IPv4Address("198.18.0.100")
    assert back.file == b"undionly.kpxe"
    assert back.options[Opt.HOSTNAME] == b"node-01"


ARCHES = [0, 6, 7, 9, 11, 16, 19]


@pytest.mark.parametrize("arch", ARCHES)
def test_pxe_discover_built_by_scapy_parses(arch: int) -> None:
    vendor = f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    uuid = bytes(range(16))
    raw = bytes(BOOTP(op=1, xid=0x1234, chaddr=CHADDR, flags=0x8000, giaddr="198.19.0.1") / DHCP(
        options=[("message-type", "discover"), ("vendor_class_id", vendor),
                 ("client_id", b"\x01" + MAC), ("param_req_list", [1, 3, 43, 60, 66, 67]),
                 ("max_dhcp_size", 1464), (93, struct.pack("!H", arch)), (94, b"\x01\x02\x01"),
                 (97, b"\x00" + uuid), ("user_class", b"\x04iPXE"),
                 ("relay_agent_information", b"\x01\x05port7\x02\x03sw1"), "end"]))
    p = parse(raw)
    assert p.op == BOOTREQUEST
    assert p.xid == 0x1234
    assert p.mac == "52:54:00:12:34:56"
    assert p.broadcast
    assert p.giaddr == IPv4Address("198.19.0.1")
    o = p.options
    assert o.message_type is MessageType.DISCOVER
    assert o.vendor_class == vendor
    assert o.client_id == b"\x01" + MAC
    assert o.parameter_request_list == bytes([1, 3, 43, 60, 66, 67])
    assert o.max_message_size == 1464
    assert o.client_arches == (arch,)
    assert o.client_uuid == uuid
    assert o.user_classes == (b"iPXE",)
    assert o.relay_agent_info == {1: b"port7", 2: b"sw1"}


def test_bare_user_class_and_ipxe_encapsulated_options() -> None:
    o = Options([(Opt.USER_CLASS, b"iPXE"), (Opt.IPXE, b"\x13\x01\x01\x17\x01\x01")])
    assert o.user_classes == (b"iPXE",)
    assert o.ipxe == {0x13: b"\x01", 0x17: b"\x01"}
    assert Options([(Opt.USER_CLASS, b"\x03abc\x02de")]).user_classes == (b"abc", b"de")


def test_long_options_are_split_and_joined_rfc3396() -> None:
    long_value = bytes(range(256)) * 2  # 512 octets: three instances on the wire
    wire = encode_tlvs([(Opt.VENDOR_SPECIFIC, long_value)])
    assert [wire[0], wire[1]] == [43, 255]
    assert wire.count(bytes((43,))) >= 3
    header = Packet(op=BOOTREQUEST, xid=1, chaddr=CHADDR)
    raw = build(header, [(Opt.MESSAGE_TYPE, b"\x01"), (Opt.VENDOR_SPECIFIC, long_value)],
                max_message=1500)
    assert parse(raw).options[Opt.VENDOR_SPECIFIC] == long_value


def test_options_overflow_into_file_and_sname_when_the_client_is_small() -> None:
    header = Packet(op=BOOTREPLY, xid=7, chaddr=CHADDR)
    items = [(Opt.MESSAGE_TYPE, b"\x05")] + [(200 + i, bytes([i]) * 60) for i in range(6)]
    raw = build(header, items)  # 6 * 62 octets of options do not fit in 576 - 28 - 240
    assert len(raw) <= 576 - 28
    p = parse(raw)
    assert p.options.overload in (1, 3)
    for i in range(6):
        assert p.options[200 + i] == bytes([i]) * 60
    assert p.file == b""
    # scapy does not implement overloading; it still sees option 52 in the options field.
    assert scapy_options(raw)["dhcp-option-overload"] in (1, 3)


def test_overloaded_packet_from_the_wire() -> None:
    file_opts = encode_tlvs([(Opt.HOSTNAME, b"from-file")]) + b"\xff"
    sname_opts = encode_tlvs([(Opt.DOMAIN_NAME, b"from.sname")]) + b"\xff"
    raw = bytes(BOOTP(op=1, xid=9, chaddr=CHADDR, file=file_opts, sname=sname_opts) / DHCP(
        options=[("message-type", "request"), (52, b"\x03"), "end"]))
    p = parse(raw)
    assert p.options[Opt.HOSTNAME] == b"from-file"
    assert p.options[Opt.DOMAIN_NAME] == b"from.sname"
    assert (p.file, p.sname) == (b"", b"")


def test_client_id_is_kept_as_sent() -> None:
    raw = bytes(BOOTP(op=1, xid=2, chaddr=CHADDR) / DHCP(
        options=[("message-type", "request"), ("client_id", b"\xffopaque-duid-iaid"), "end"]))
    assert parse(raw).options.client_id == b"\xffopaque-duid-iaid"


GARBAGE = [
    (b"", "too short"),
    (bytes(239), "too short"),
    (bytes(236) + b"\x00\x00\x00\x00", "magic cookie"),
    (b"\x03" + bytes(235) + MAGIC, "invalid op"),
    (b"\x01\x01\x11" + bytes(233) + MAGIC, "hardware address length"),
    (b"\x01\x01\x06" + bytes(233) + MAGIC + b"\x35", "no length byte"),
    (b"\x01\x01\x06" + bytes(233) + MAGIC + b"\x35\x05\x01", "runs past the end"),
]


@pytest.mark.parametrize(("raw", "reason"), GARBAGE)
def test_garbage_raises_malformed_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        parse(raw)


@pytest.mark.parametrize(("items", "getter", "reason"), [
    ([(53, b"\x01\x02")], "message_type", "must be 1 bytes"),
    ([(53, b"\x63")], "message_type", "unknown DHCP message type 99"),
    ([(50, b"\x01\x02\x03")], "requested_ip", "must be 4 bytes"),
    ([(52, b"\x07")], "overload", "invalid value 7"),
    ([(61, b"\x01")], "client_id", "shorter than 2"),
    ([(93, b"\x00")], "client_arches", "odd length"),
    ([(97, b"\x01" * 17)], "client_uuid", "not type 0"),
    ([(82, b"\x01\x09ab")], "relay_agent_info", "runs past the end"),
])
def test_bad_option_values_raise_malformed(items: list[tuple[int, bytes]], getter: str,
                                           reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        getattr(Options(items), getter)


def _all_getters(p: Packet) -> None:
    o = p.options
    for name in ("message_type", "requested_ip", "server_id", "overload", "client_id",
                 "max_message_size", "parameter_request_list", "vendor_class", "user_classes",
                 "client_arches", "client_uuid", "relay_agent_info", "ipxe", "hostname"):
        getattr(o, name)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_parse_or_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        _all_getters(parse(data))


_VALID = bytes(BOOTP(op=1, xid=5, chaddr=CHADDR) / DHCP(options=[
    ("message-type", "discover"), ("client_id", b"\x01" + MAC), (93, b"\x00\x07"),
    (97, b"\x00" + bytes(16)), ("vendor_class_id", b"PXEClient"), (52, b"\x01"), "end"]))


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=12),
       st.integers(HEADER_SIZE - 4, len(_VALID)))
def test_mutated_packets_parse_or_raise_malformed(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_VALID)
    for index, value in flips:
        data[index] = value
    with contextlib.suppress(MalformedPacket):
        _all_getters(parse(bytes(data[:cut])))


def test_pxelinux_options_rfc5071_match_scapy() -> None:
    items = [(Opt.MESSAGE_TYPE, b"\x05"), (Opt.PXELINUX_MAGIC, b"\xf1\x00\x74\x7e"),
             (Opt.PXELINUX_CONFIG_FILE, b"pxelinux.cfg/rack1"), (Opt.PXELINUX_PATH_PREFIX, b"/bios/"),
             (Opt.PXELINUX_REBOOT_TIME, struct.pack("!I", 300))]
    raw = build(Packet(op=BOOTREPLY, xid=3, chaddr=CHADDR), items)
    opts = scapy_options(raw)
    assert opts["pxelinux_magic"] == b"\xf1\x00\x74\x7e"
    assert opts["pxelinux_configuration_file"] == b"pxelinux.cfg/rack1"
    assert opts["pxelinux_path_prefix"] == b"/bios/"
    assert opts["pxelinux_reboot_time"] == struct.pack("!I", 300)
    back = parse(raw).options
    assert back[Opt.PXELINUX_CONFIG_FILE] == b"pxelinux.cfg/rack1"
