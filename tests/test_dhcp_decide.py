"""Server and proxy decisions, pure: one message in, one outcome out, a fake clock."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from bootd.config import parse_config
from bootd.dhcp.classify import classify
from bootd.dhcp.decide import Decider, Ingress, location_of
from bootd.dhcp.leases import LeaseTable
from bootd.dhcp.options import MessageType, Opt, Options
from bootd.dhcp.outcome import Booted, Outcome, Verdict
from bootd.dhcp.packet import BOOTREQUEST, BROADCAST_FLAG, Packet, parse
from bootd.dhcp.reply import BROADCAST
from bootd.model.clients import Arch, Firmware
from bootd.model.records import DirectoryEntry, LeaseState
from bootd.policy import Policy

CONFIG = """
[server]
admin_address = "198.18.0.1"
interfaces = ["eth0"]
[boot]
uefi_ia32 = "ipxe-ia32.efi"
uefi_arm64 = "ipxe-arm64.efi"
[[subnets]]
cidr = "198.18.0.0/24"
router = "198.18.0.254"
dns_servers = ["198.18.0.53"]
domain = "rack1.lab"
lease_time = 600
static_range = "198.18.0.10-198.18.0.19"
dynamic_pool = "198.18.0.100-198.18.0.102"
[[subnets]]
cidr = "198.19.0.0/16"
dynamic_pool = "198.19.1.1-198.19.1.200"
rack = "r19"
"""
SERVER = IPv4Address("198.18.0.1")
NOW = 1_800_000_000.0
MAC1, MAC2 = bytes.fromhex("525400000001"), bytes.fromhex("525400000002")


def make(proxy: bool = False, authoritative: bool = True) -> tuple[Decider, Ingress]:
    extra = ("\n[dhcp]\n" + ('mode = "proxy"\n' if proxy else "")
             + f"authoritative = {'true' if authoritative else 'false'}\n")
    config = parse_config(CONFIG + extra)
    policy = Policy(config)
    policy.load([DirectoryEntry("52:54:00:00:00:09", "known-09", IPv4Address("198.18.0.15"), None)])
    return Decider(config, policy, LeaseTable()), Ingress("eth0", SERVER, config.subnets[:1])


def msg(kind: MessageType, mac: bytes = MAC1, *, xid: int = 1, flags: int = 0,
        ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0", **opts: bytes) -> Packet:
    items = [(Opt.MESSAGE_TYPE, bytes((kind,)))]
    names = {"requested": Opt.REQUESTED_IP, "server_id": Opt.SERVER_ID, "client_id": Opt.CLIENT_ID,
             "vendor": Opt.VENDOR_CLASS, "arch": Opt.CLIENT_ARCH, "user_class": Opt.USER_CLASS,
             "relay": Opt.RELAY_AGENT_INFO, "uuid": Opt.CLIENT_UUID}
    items += [(names[k], v) for k, v in opts.items()]
    return Packet(op=BOOTREQUEST, xid=xid, chaddr=mac + bytes(10), flags=flags,
                  ciaddr=IPv4Address(ciaddr), giaddr=IPv4Address(giaddr), options=Options(items))


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def wire(out: Outcome) -> Packet:
    assert out.reply is not None, out.reason
    return parse(out.reply.data)


def test_discover_request_ack_cycle() -> None:
    d, ing = make()
    offer = d.handle(msg(MessageType.DISCOVER, flags=BROADCAST_FLAG), ing, NOW)
    p = wire(offer)
    assert p.options.message_type is MessageType.OFFER
    assert p.yiaddr == IPv4Address("198.18.0.100")
    assert offer.persist is None  # offers are not written to disk
    assert (offer.reply.ip, offer.reply.port) == (BROADCAST, 68)
    o = p.options
    assert o.server_id == SERVER
    assert struct.unpack("!I", o[Opt.LEASE_TIME]) == (600,)
    assert o[Opt.SUBNET_MASK] == ip("255.255.255.0")
    assert o[Opt.ROUTER] == ip("198.18.0.254")
    assert o[Opt.DNS_SERVERS] == ip("198.18.0.53")
    assert o[Opt.DOMAIN_NAME] == b"rack1.lab"
    assert Opt.BOOTFILE_NAME not in o  # not a network-boot client
    ack = d.handle(msg(MessageType.REQUEST, requested=ip("198.18.0.100"), server_id=SERVER.packed), ing,
                   NOW + 1)
    assert wire(ack).options.message_type is MessageType.ACK
    assert ack.persist is not None
    assert ack.persist.state is LeaseState.BOUND
    assert ack.persist.expires == NOW + 1 + 600
    # The same client asks again later: same address.
    again = d.handle(msg(MessageType.DISCOVER, xid=9), ing, NOW + 100)
    assert wire(again).yiaddr == IPv4Address("198.18.0.100")


def test_two_clients_get_different_addresses_and_the_pool_runs_out() -> None:
    d, ing = make()
    got = {wire(d.handle(msg(MessageType.DISCOVER, bytes([0x52, 0, 0, 0, 1, i])), ing, NOW)).yiaddr
           for i in range(3)}
    assert got == {IPv4Address(f"198.18.0.{n}") for n in (100, 101, 102)}
    # All three taken (bound): nothing for a fourth client.
    for i, n in enumerate((100, 101, 102)):
        mac = bytes([0x52, 0, 0, 0, 1, i])
        req = msg(MessageType.REQUEST, mac, requested=ip(f"198.18.0.{n}"), server_id=ip("198.18.0.1"))
        ack = d.handle(req, ing, NOW)
        assert ack.verdict is Verdict.ACK, ack.reason
    out = d.handle(msg(MessageType.DISCOVER, bytes([0x52, 0, 0, 0, 1, 9])), ing, NOW)
    assert out.reply is None and out.verdict is Verdict.EXHAUSTED
    assert out.reason == "no free address in the pool"


def test_offers_hold_softly_so_a_discover_flood_cannot_starve_a_real_client() -> None:
    d, ing = make()
    for i in range(200):  # spoofed MACs, each DISCOVER never followed by a REQUEST
        d.handle(msg(MessageType.DISCOVER, bytes([0x02, 0, 0, 0, i >> 8, i & 255])), ing, NOW + i * 0.001)
    real = bytes([0x52, 0, 0, 0, 7, 7])
    offer = d.handle(msg(MessageType.DISCOVER, real), ing, NOW + 1)
    assert offer.verdict is Verdict.OFFER
    yiaddr = wire(offer).yiaddr
    ack = d.handle(msg(MessageType.REQUEST, real, requested=yiaddr.packed, server_id=ip("198.18.0.1")),
                   ing, NOW + 1)
    assert ack.verdict is Verdict.ACK
    # The table never holds more than the pool, however many spoofed MACs asked.
    assert len(d.table.by_ip) <= 3 and len(d.table.by_client) <= 3


def test_known_node_gets_its_reservation_and_name() -> None:
    d, ing = make()
    out = d.handle(msg(MessageType.DISCOVER, bytes.fromhex("525400000009")), ing, NOW)
    p = wire(out)
    assert p.yiaddr == IPv4Address("198.18.0.15")
    assert p.options[Opt.HOSTNAME] == b"known-09"
    # It may not take a pool address by INIT-REBOOT.
    nak = d.handle(msg(MessageType.REQUEST, bytes.fromhex("525400000009"), requested=ip("198.18.0.101")),
                   ing, NOW)
    assert wire(nak).options.message_type is MessageType.NAK
    assert "not this client's address" in nak.reason


def test_client_id_identifies_the_client_and_is_echoed() -> None:
    d, ing = make()
    cid = b"\xff\x00\x00\x00\x01\x00\x01"
    first = wire(d.handle(msg(MessageType.DISCOVER, MAC1, client_id=cid), ing, NOW))
    assert first.options.client_id == cid
    d.handle(msg(MessageType.REQUEST, MAC1, client_id=cid, requested=first.yiaddr.packed,
                 server_id=SERVER.packed), ing, NOW)
    # Same client id on another NIC: the same lease (RFC 2131 4.2).
    other_nic = wire(d.handle(msg(MessageType.DISCOVER, MAC2, client_id=cid), ing, NOW + 5))
    assert other_nic.yiaddr == first.yiaddr


@pytest.mark.parametrize(("case", "packet", "words"), [
    ("wrong subnet", msg(MessageType.REQUEST, requested=ip("10.9.9.9")), "not on subnet"),
    ("outside pool", msg(MessageType.REQUEST, requested=ip("198.18.0.50")), "not this client's address"),
    ("not offered", msg(MessageType.REQUEST, requested=ip("198.18.0.101"), server_id=SERVER.packed),
     "was not offered"),
])
def test_naks(case: str, packet: Packet, words: str) -> None:
    d, ing = make()
    out = d.handle(packet, ing, NOW)
    p = wire(out)
    assert p.options.message_type is MessageType.NAK
    assert words in out.reason
    assert words in p.options[Opt.MESSAGE].decode()
    assert (out.reply.ip, out.reply.port) == (BROADCAST, 68)


def test_not_authoritative_stays_silent() -> None:
    d, ing = make(authoritative=False)
    out = d.handle(msg(MessageType.REQUEST, requested=ip("10.9.9.9")), ing, NOW)
    assert out.reply is None
    assert "silent" in out.reason


def test_init_reboot_and_renew_and_rebind() -> None:
    d, ing = make()
    # After a server restart with a lost table, an authoritative server ACKs a free address.
    ack = d.handle(msg(MessageType.REQUEST, requested=ip("198.18.0.101")), ing, NOW)
    assert wire(ack).yiaddr == IPv4Address("198.18.0.101")
    renew = d.handle(msg(MessageType.REQUEST, ciaddr="198.18.0.101"), ing, NOW + 300)
    p = wire(renew)
    assert p.options.message_type is MessageType.ACK
    assert renew.persist is not None
    assert renew.persist.expires == NOW + 300 + 600
    assert (renew.reply.ip, renew.reply.port) == (IPv4Address("198.18.0.101"), 68)  # unicast to ciaddr
    # Another client trying to renew an address it does not hold is refused.
    nak = d.handle(msg(MessageType.REQUEST, MAC2, ciaddr="198.18.0.101", flags=BROADCAST_FLAG), ing, NOW)
    assert wire(nak).options.message_type is MessageType.NAK
    assert "held by another client" in nak.reason


def test_selecting_another_server_drops_our_offer() -> None:
    d, ing = make()
    offered = wire(d.handle(msg(MessageType.DISCOVER), ing, NOW)).yiaddr
    out = d.handle(msg(MessageType.REQUEST, requested=ip("10.0.0.5"), server_id=ip("10.0.0.1")), ing, NOW)
    assert out.reply is None
    assert out.reason == "client chose server 10.0.0.1"
    assert d.table.at(int(offered)) is None


def test_decline_quarantines_and_release_frees() -> None:
    d, ing = make()
    d.handle(msg(MessageType.REQUEST, requested=ip("198.18.0.100")), ing, NOW)
    out = d.handle(msg(MessageType.DECLINE, requested=ip("198.18.0.100"), server_id=SERVER.packed), ing,
                   NOW)
    assert out.reply is None
    assert out.persist is not None
    assert out.persist.state is LeaseState.DECLINED
    # The next offer to the same client is another address; the declined one waits out its quarantine.
    nxt = wire(d.handle(msg(MessageType.DISCOVER), ing, NOW + 1)).yiaddr
    assert nxt != IPv4Address("198.18.0.100")
    d.handle(msg(MessageType.REQUEST, requested=nxt.packed, server_id=SERVER.packed), ing, NOW + 1)
    rel = d.handle(msg(MessageType.RELEASE, ciaddr=str(nxt), server_id=SERVER.packed), ing, NOW + 2)
    assert rel.persist is not None
    assert rel.persist.state is LeaseState.RELEASED
    # A released address goes back to the same client first.
    assert wire(d.handle(msg(MessageType.DISCOVER), ing, NOW + 3)).yiaddr == nxt


def test_inform_gets_options_without_an_address() -> None:
    d, ing = make()
    out = d.handle(msg(MessageType.INFORM, ciaddr="198.18.0.77"), ing, NOW)
    p = wire(out)
    assert p.options.message_type is MessageType.ACK
    assert p.yiaddr == IPv4Address("0.0.0.0")
    assert Opt.LEASE_TIME not in p.options
    assert (out.reply.ip, out.reply.port) == (IPv4Address("198.18.0.77"), 68)


def test_relayed_discover_served_from_giaddr_subnet_back_to_relay_with_option_82() -> None:
    d, ing = make()
    relay = b"\x01\x06ge-0/7\x02\x04sw12"
    out = d.handle(msg(MessageType.DISCOVER, giaddr="198.19.0.1", relay=relay), ing, NOW)
    p = wire(out)
    assert p.yiaddr == IPv4Address("198.19.1.1")
    assert p.giaddr == IPv4Address("198.19.0.1")
    assert p.options[Opt.RELAY_AGENT_INFO] == relay
    assert p.options[Opt.SUBNET_MASK] == ip("255.255.0.0")
    assert (out.reply.ip, out.reply.port) == (IPv4Address("198.19.0.1"), 67)
    assert location_of(msg(MessageType.DISCOVER, giaddr="198.19.0.1", relay=relay)) == "sw12/ge-0/7"
    pxe = d.handle(msg(MessageType.DISCOVER, MAC2, giaddr="198.19.0.1", relay=relay,
                       vendor=b"PXEClient:Arch:00000:UNDI:002001"), ing, NOW)
    assert any(isinstance(e, Booted) and e.location == "sw12/ge-0/7" for e in pxe.effects)
    # The relayed subnet's rack goes with the effect: a new machine is recorded in it.
    assert [e.rack for e in pxe.effects if isinstance(e, Booted)] == ["r19"]


def test_option_82_from_a_client_that_is_not_relayed_is_neither_trusted_nor_echoed() -> None:
    d, ing = make()
    relay = b"\x01\x06ge-0/7\x02\x04sw12"
    out = d.handle(msg(MessageType.DISCOVER, relay=relay, vendor=b"PXEClient:Arch:00000:UNDI:002001"),
                   ing, NOW)
    assert Opt.RELAY_AGENT_INFO not in wire(out).options
    booted = [e for e in out.effects if isinstance(e, Booted)]
    assert booted and booted[0].location is None
    nak = d.handle(msg(MessageType.REQUEST, giaddr="198.19.0.1", requested=ip("198.18.0.100")), ing, NOW)
    assert wire(nak).flags & BROADCAST_FLAG
    unknown = d.handle(msg(MessageType.DISCOVER, giaddr="203.0.113.1"), ing, NOW)
    assert unknown.dropped
    assert unknown.reason == "no configured subnet for relay 203.0.113.1"


PXE = b"PXEClient:Arch:00000:UNDI:002001"


@pytest.mark.parametrize(("opts", "firmware", "arch", "file", "vendor"), [
    ({"vendor": PXE}, Firmware.PXE, Arch.BIOS, b"undionly.kpxe", None),
    ({"vendor": PXE, "arch": b"\x00\x00"}, Firmware.PXE, Arch.BIOS, b"undionly.kpxe", None),
    ({"vendor": b"PXEClient:Arch:00007:UNDI:003000", "arch": b"\x00\x07"}, Firmware.PXE, Arch.EFI_BC,
     b"snponly.efi", None),
    ({"vendor": b"PXEClient:Arch:00009:UNDI:003000", "arch": b"\x00\x09"}, Firmware.PXE, Arch.EFI_X64,
     b"snponly.efi", None),
    ({"vendor": b"PXEClient:Arch:00006:UNDI:003000", "arch": b"\x00\x06"}, Firmware.PXE, Arch.EFI_IA32,
     b"ipxe-ia32.efi", None),
    ({"vendor": b"PXEClient:Arch:00011:UNDI:003000", "arch": b"\x00\x0b"}, Firmware.PXE, Arch.EFI_ARM64,
     b"ipxe-arm64.efi", None),
    ({"vendor": b"HTTPClient:Arch:00016:UNDI:003000", "arch": b"\x00\x10"}, Firmware.HTTP,
     Arch.EFI_X64_HTTP, b"http://198.18.0.1:8080/tftp/snponly.efi", b"HTTPClient"),
    ({"vendor": b"HTTPClient:Arch:00019:UNDI:003000", "arch": b"\x00\x13"}, Firmware.HTTP,
     Arch.EFI_ARM64_HTTP, b"http://198.18.0.1:8080/tftp/ipxe-arm64.efi", b"HTTPClient"),
    ({"vendor": PXE, "user_class": b"iPXE"}, Firmware.IPXE, Arch.BIOS,
     b"http://198.18.0.1:8080/boot/ipxe?mac=52:54:00:00:00:01", None),
    ({"user_class": b"\x04iPXE", "arch": b"\x00\x07"}, Firmware.IPXE, Arch.EFI_BC,
     b"http://198.18.0.1:8080/boot/ipxe?mac=52:54:00:00:00:01", None),
])
def test_boot_options_per_client_kind(opts: dict[str, bytes], firmware: Firmware, arch: Arch,
                                      file: bytes, vendor: bytes | None) -> None:
    d, ing = make()
    request = msg(MessageType.DISCOVER, **opts)
    client = classify(request)
    assert (client.firmware, client.arch) == (firmware, arch)
    out = d.handle(request, ing, NOW)
    p = wire(out)
    assert p.options[Opt.BOOTFILE_NAME] == file
    assert p.file == file
    assert p.siaddr == SERVER
    assert p.options.get(Opt.VENDOR_CLASS) == vendor
    if firmware is Firmware.IPXE:
        assert p.options.ipxe == {176: b"\x01"}  # no-pxedhcp: no 2 s ProxyDHCP wait
    if not file.startswith(b"http"):
        assert p.options[Opt.TFTP_SERVER_NAME] == b"198.18.0.1"


def test_proxy_offers_boot_options_without_an_address() -> None:
    d, ing = make(proxy=True)
    uuid = bytes(range(16))
    out = d.handle(msg(MessageType.DISCOVER, vendor=PXE, uuid=b"\x00" + uuid, flags=BROADCAST_FLAG), ing,
                   NOW)
    p = wire(out)
    assert p.options.message_type is MessageType.OFFER
    assert p.yiaddr == IPv4Address("0.0.0.0")
    assert p.options.vendor_class == b"PXEClient"
    assert p.options[Opt.VENDOR_SPECIFIC] == b"\x06\x01\x08\xff"
    assert p.options.client_uuid == uuid
    assert p.file == b"undionly.kpxe"
    assert Opt.LEASE_TIME not in p.options
    assert out.persist is None
    # Ordinary clients are left to the real DHCP server.
    assert d.handle(msg(MessageType.DISCOVER), ing, NOW).reply is None


def test_proxy_answers_pxe_requests_on_4011_to_the_client_port() -> None:
    d, ing = make(proxy=True)
    pxe = Ingress("eth0", SERVER, ing.subnets, port=4011, source=("198.18.0.77", 68))
    out = d.handle(msg(MessageType.REQUEST, vendor=PXE, ciaddr="198.18.0.77"), pxe, NOW)
    p = wire(out)
    assert p.options.message_type is MessageType.ACK
    assert p.file == b"undionly.kpxe"
    assert (out.reply.ip, out.reply.port) == (IPv4Address("198.18.0.77"), 68)


@pytest.mark.parametrize(("packet", "words"), [
    (Packet(op=2, xid=1, chaddr=MAC1 + bytes(10), options=Options([(53, b"\x02")])), "not a BOOTREQUEST"),
    (Packet(op=1, xid=1, chaddr=MAC1 + bytes(10)), "no message type"),
    (msg(MessageType.OFFER), "unexpected OFFER"),
    (msg(MessageType.REQUEST), "neither requested address nor ciaddr"),
    (Packet(op=1, xid=1, chaddr=MAC1 + bytes(10), options=Options([(53, b"\x01"), (61, b"\x01")])),
     "shorter than 2"),
])
def test_unexpected_messages_are_dropped_with_a_reason(packet: Packet, words: str) -> None:
    d, ing = make()
    out = d.handle(packet, ing, NOW)
    assert out.dropped
    assert words in out.reason
    assert out.reply is None


@pytest.mark.parametrize(("servers", "dns", "expect"), [
    ('["198.18.0.1"]', "false", None),                          # bootd itself, serving no DNS
    ('["198.18.0.1", "198.18.0.53"]', "false", ip("198.18.0.53")),  # only the one that answers
    ('["198.18.0.1"]', "true", ip("198.18.0.1")),               # bootd, serving DNS (bootd.dns)
])
def test_dns_servers_handed_out_are_only_ones_that_answer(servers: str, dns: str,
                                                          expect: bytes | None) -> None:
    config = parse_config(CONFIG.replace('dns_servers = ["198.18.0.53"]', f"dns_servers = {servers}")
                          .replace("[[subnets]]", f"[services]\ndns = {dns}\n[[subnets]]", 1))
    d = Decider(config, Policy(config), LeaseTable())
    offer = wire(d.handle(msg(MessageType.DISCOVER), Ingress("eth0", SERVER, config.subnets[:1]), NOW))
    assert offer.options.get(Opt.DNS_SERVERS) == expect
