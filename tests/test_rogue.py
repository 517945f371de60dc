"""Rogue DHCP detection, the pure part: replies built by scapy (the oracle) and read
by bootd.dhcp.rogue; our probe DISCOVER and its IPv4/UDP framing read back by scapy."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from bootd.config import DhcpMode
from bootd.dhcp.classify import classify
from bootd.dhcp.options import MalformedPacket, MessageType
from bootd.dhcp.packet import parse
from bootd.dhcp.rogue import (
    BROADCAST,
    Identity,
    Verdict,
    answers_probe,
    build_probe,
    frame,
    probe_mac,
    read,
    unframe,
)
from bootd.model.clients import Firmware
from bootd.model.findings import Offered, ReplyKind

US = IPv4Address("198.18.0.1")
ROGUE = IPv4Address("198.18.0.3")
CLIENT_MAC = bytes.fromhex("525400aa0001")
SERVER = Identity(own=frozenset({US}))
PROXY = Identity(own=frozenset({US}), mode=DhcpMode.PROXY)


def reply(kind: str = "offer", server: IPv4Address | None = ROGUE, *, yiaddr: str = "198.18.0.150",
          siaddr: str = "0.0.0.0", file: bytes = b"", xid: int = 0x1234, chaddr: bytes = CLIENT_MAC,
          extra: list[tuple[str, object]] | None = None, op: int = 2) -> bytes:
    options: list[object] = [("message-type", kind)]
    if server is not None:
        options.append(("server_id", str(server)))
    options += [("lease_time", 600), ("subnet_mask", "255.255.255.0"), ("router", "198.18.0.254"),
                *(extra or []), "end"]
    pkt = BOOTP(op=op, xid=xid, flags=0x8000, yiaddr=yiaddr, siaddr=siaddr, chaddr=chaddr + bytes(10),
                file=file) / DHCP(options=options)
    return bytes(pkt)


def test_a_foreign_offer_is_a_finding_with_what_it_offered() -> None:
    e = read(reply(), ROGUE, SERVER)
    assert e.verdict is Verdict.FOREIGN
    assert e.server_ip == ROGUE
    assert e.offered == Offered(ReplyKind.OFFER, IPv4Address("198.18.0.150"), ROGUE,
                                IPv4Address("198.18.0.254"), 600)
    assert e.offered.summary() == "198.18.0.150, router 198.18.0.254, lease 600 s"


def test_a_foreign_ack_with_a_boot_file_names_it() -> None:
    e = read(reply("ack", siaddr="198.18.0.3", extra=[("boot-file-name", b"pxelinux.0")]), ROGUE, SERVER)
    assert e.verdict is Verdict.FOREIGN
    assert e.offered is not None
    assert (e.offered.kind, e.offered.boot_file, e.offered.next_server, e.offered.pxe) == \
        (ReplyKind.ACK, "pxelinux.0", ROGUE, True)
    assert "boot file pxelinux.0, next server 198.18.0.3" in e.offered.summary()


def test_the_file_field_counts_as_a_boot_file_and_is_shown_escaped() -> None:
    e = read(reply(file=b"boot\x1b[31m.0"), ROGUE, SERVER)
    assert e.offered is not None and e.offered.boot_file == "boot\\x1b[31m.0"


def test_without_option_54_the_source_address_names_the_server() -> None:
    e = read(reply(server=None), ROGUE, SERVER)
    assert (e.verdict, e.server_ip) == (Verdict.FOREIGN, ROGUE)


@pytest.mark.parametrize(("server", "source"), [(US, US), (US, ROGUE), (ROGUE, US)])
def test_our_own_replies_are_never_findings(server: IPv4Address, source: IPv4Address) -> None:
    assert read(reply(server=server), source, SERVER).verdict is Verdict.OURS
    assert read(reply(server=server), source, PROXY).verdict is Verdict.OURS


def test_an_allowed_server_is_not_a_finding() -> None:
    me = Identity(own=frozenset({US}), allowed=frozenset({ROGUE}))
    assert read(reply(), ROGUE, me).verdict is Verdict.ALLOWED
    pxe = reply(extra=[("vendor_class_id", b"PXEClient")])
    assert read(pxe, ROGUE, Identity(frozenset({US}), frozenset({ROGUE}), DhcpMode.PROXY)).verdict \
        is Verdict.ALLOWED


def test_proxy_mode_expects_the_real_servers_plain_offers() -> None:
    assert read(reply(), ROGUE, PROXY).verdict is Verdict.EXPECTED
    assert read(reply("ack"), ROGUE, PROXY).verdict is Verdict.EXPECTED


def test_proxy_mode_with_the_real_server_named_flags_any_other() -> None:
    real = IPv4Address("198.18.0.2")
    me = Identity(own=frozenset({US}), allowed=frozenset({real}), mode=DhcpMode.PROXY)
    assert read(reply(server=real), real, me).verdict is Verdict.ALLOWED
    e = read(reply(), ROGUE, me)  # a second address server, no PXE options
    assert (e.verdict, e.reason) == (Verdict.FOREIGN, "another DHCP server")


@pytest.mark.parametrize(("extra", "file"), [
    ([("vendor_class_id", b"PXEClient")], b""),
    ([("boot-file-name", b"undionly.kpxe")], b""),
    ([("tftp_server_name", b"198.18.0.3")], b""),
    ([], b"pxelinux.0"),
])
def test_proxy_mode_flags_another_pxe_server(extra: list[tuple[str, object]], file: bytes) -> None:
    e = read(reply(extra=extra, file=file), ROGUE, PROXY)
    assert (e.verdict, e.reason) == (Verdict.FOREIGN, "another PXE server")


def test_a_pxe_proxys_address_less_offer_says_so() -> None:
    e = read(reply(yiaddr="0.0.0.0", extra=[("vendor_class_id", b"PXEClient")]), ROGUE, PROXY)
    assert e.offered is not None and e.offered.address is None
    assert e.offered.summary().startswith("no address")


@pytest.mark.parametrize("kind", ["nak", "discover", "request", "inform"])
def test_other_message_types_are_ignored(kind: str) -> None:
    assert read(reply(kind), ROGUE, SERVER).verdict is Verdict.IGNORED


def test_a_request_is_ignored() -> None:
    assert read(reply(op=1), ROGUE, SERVER).verdict is Verdict.IGNORED


@pytest.mark.parametrize("data", [
    b"", b"\x02" * 10, reply()[:200],
    reply().replace(b"\x63\x82\x53\x63", b"\0\0\0\0"),
    bytes(BOOTP(op=2) / DHCP(options=[("message-type", "offer"), (3, b"\xc6\x12\x00"), "end"])),
    bytes(BOOTP(op=2) / DHCP(options=[("message-type", "offer"), (51, b"\x01\x02"), "end"])),
    bytes(BOOTP(op=2) / DHCP(options=[(53, b"\x63"), "end"])),
    bytes(BOOTP(op=2) / DHCP(options=[("message-type", "offer"), (54, b"\x01\x02"), "end"])),
    bytes(BOOTP(op=2)) + b"\x63\x82\x53\x63\x35\x01\x02\x36\x04\x01",  # option 54 runs past the end
])
def test_broken_packets_are_malformed_never_an_exception(data: bytes) -> None:
    assert read(data, ROGUE, SERVER).verdict is Verdict.MALFORMED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 599), st.binary(min_size=1, max_size=8))
def test_read_is_total_on_mutated_replies(junk: bytes, at: int, patch: bytes) -> None:
    base = reply(extra=[("boot-file-name", b"x"), ("vendor_class_id", b"PXEClient")])
    mutated = base[:at] + patch + base[at + len(patch):]
    for data in (junk, mutated):
        assert read(data, ROGUE, PROXY).verdict in set(Verdict)


# -- the probe ---------------------------------------------------------------------------


def test_probe_mac_is_locally_administered_unicast_and_not_ours() -> None:
    ours = bytes.fromhex("525400123456")
    derived = probe_mac(ours)
    assert derived != ours and derived[0] & 0x02 and not derived[0] & 0x01
    assert probe_mac(ours) == derived  # stable: one client to every server
    global_mac = bytes.fromhex("001122334455")
    assert probe_mac(global_mac) == bytes.fromhex("021122334455")


def test_probe_is_a_broadcast_discover_scapy_reads_and_not_a_pxe_client() -> None:
    chaddr = probe_mac(bytes.fromhex("525400123456"))
    pkt = BOOTP(build_probe(chaddr, 0xCAFEF00D))
    assert (pkt.op, pkt.xid, pkt.flags, pkt.chaddr[:6]) == (1, 0xCAFEF00D, 0x8000, chaddr)
    opts = {k: v for k, *vs in pkt[DHCP].options if isinstance(k, str) and k != "end" for v in [vs[0]]}
    assert opts["message-type"] == 1
    # Not a PXE client: PXE servers that record booting machines must not record the probe.
    assert "vendor_class_id" not in opts and "client-arch" not in opts
    assert classify(parse(build_probe(chaddr, 1))).firmware is Firmware.OTHER
    assert {1, 3, 6, 51, 54, 66, 67} <= set(opts["param_req_list"])


def test_a_reply_to_our_probe_is_recognised_by_xid_and_chaddr() -> None:
    chaddr = probe_mac(bytes.fromhex("525400123456"))
    e = read(reply(xid=77, chaddr=chaddr), ROGUE, SERVER)
    assert answers_probe(e, chaddr, 77)
    assert not answers_probe(e, chaddr, 78)
    assert not answers_probe(read(reply(xid=77), ROGUE, SERVER), chaddr, 77)


def test_frame_is_ipv4_udp_from_a_client_without_address() -> None:
    payload = build_probe(probe_mac(bytes.fromhex("525400123456")), 1)
    pkt = IP(frame(payload))
    assert (pkt.src, pkt.dst, pkt[UDP].sport, pkt[UDP].dport) == ("0.0.0.0", "255.255.255.255", 68, 67)
    rebuilt = IP(bytes(pkt))
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == pkt.chksum  # scapy computes the same header checksum
    assert bytes(pkt[UDP].payload) == payload


def test_unframe_reads_what_scapy_frames() -> None:
    data = bytes(IP(src="198.18.0.3", dst="255.255.255.255") / UDP(sport=67, dport=68) / Raw(reply()))
    d = unframe(data)
    assert (d.source, d.destination, d.sport, d.dport, d.payload) == (ROGUE, BROADCAST, 67, 68, reply())
    assert unframe(frame(b"abc")).payload == b"abc"


@pytest.mark.parametrize("data", [
    b"", b"\x60" + bytes(40),
    bytes(IP(dst="1.2.3.4") / Raw(b"x" * 20)),  # not UDP (protocol 0)
    bytes(IP(flags="MF") / UDP() / Raw(b"x")),
    bytes(IP() / UDP(len=4) / Raw(b"x")),
    bytes(IP() / UDP() / Raw(b"x"))[:24],
])
def test_unframe_refuses_what_is_not_one_udp_datagram(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        unframe(data)


def test_probe_message_type_constant() -> None:
    assert BOOTP(build_probe(bytes(6), 5))[DHCP].options[0] == ("message-type", MessageType.DISCOVER.value)
    assert struct.unpack("!H", build_probe(bytes(6), 5)[10:12]) == (0x8000,)
