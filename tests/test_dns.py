"""DNS, pure tier: the codec, the zone and the decisions, plus the forwarder
against a fake upstream on loopback and the fuzz tier over parse -> decide -> pack.
"""

from __future__ import annotations

import asyncio
import re
import socket
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import cast

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, A, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from bootd.config import Config, parse_config
from bootd.dns.codec import MAX_UDP, PLAIN_UDP, MalformedQuery, Reply, pack, parse_query
from bootd.dns.decide import Forward, decide
from bootd.dns.server import DnsService
from bootd.dns.zone import Host, Zone, reverse_zones
from bootd.errors import ConfigError
from bootd.feed import ChangeFeed, NodeChanged
from bootd.installnet import name_servers
from bootd.model.records import BmcRecord, InterfaceRecord, NodeRecord
from bootd.model.states import NodeState

CONFIG = """\
[server]
admin_address = "198.18.0.1"
interfaces = ["eth0"]
[[subnets]]
cidr = "198.18.0.0/24"
domain = "rack1.example"
dns_servers = ["198.18.0.1"]
static_range = "198.18.0.10-198.18.0.49"
dynamic_pool = "198.18.0.100-198.18.0.199"
bmc_range = "198.18.0.200-198.18.0.250"
[[subnets]]
cidr = "198.19.0.0/22"
domain = "rack2.example"
static_range = "198.19.0.10-198.19.0.49"
"""
MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


class FakeLeases:
    def __init__(self) -> None:
        self.by_mac: dict[str, IPv4Address] = {}

    def lease_of(self, mac: str) -> IPv4Address | None:
        return self.by_mac.get(mac)

    def lease_holder(self, ip: IPv4Address) -> str | None:
        return next((m for m, a in self.by_mac.items() if a == ip), None)


def node(name: str, mac: str, admin_ip: str | None = None, bmc: str | None = None) -> NodeRecord:
    now = datetime.now(UTC)
    return NodeRecord(name, NodeState.READY, False, None, IPv4Address(admin_ip) if admin_ip else None,
                      None, None, (InterfaceRecord(mac, True),),
                      BmcRecord(bmc, "admin") if bmc else None, now, now, now)


def config(extra: str = "") -> Config:
    return parse_config(CONFIG + extra)


def zone_with(*nodes: NodeRecord, leases: FakeLeases | None = None) -> Zone:
    zone = Zone(config(), leases or FakeLeases())
    zone.load(Host.of(n) for n in nodes)
    return zone


def ask(zone: Zone, name: str, qtype: str = "A", *, forwarding: bool = False,
        edns: bool = False) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=4096))
    outcome = decide(parse_query(q.pack()), zone, forwarding=forwarding, ttl=30)
    assert isinstance(outcome, Reply)
    return DNSRecord.parse(pack(outcome, MAX_UDP))


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


RACK = zone_with(node("web1", MAC1, "198.18.0.10", bmc="198.18.0.200"), node("db1", MAC2, bmc="10.9.9.9"),
                 node("far1", MAC3, "198.19.1.10"))


def test_nodes_bmcs_and_the_admin_node_answer_authoritatively_with_short_ttls() -> None:
    reply = ask(RACK, "WEB1.Rack1.Example")
    assert reply.header.aa and reply.header.rcode == RCODE.NOERROR
    assert addresses(reply) == ["198.18.0.10"] and reply.rr[0].ttl == 30
    assert str(reply.rr[0].rname) == "WEB1.Rack1.Example."  # the asker's case (0x20 resolvers)
    assert addresses(ask(RACK, "web1-bmc.rack1.example")) == ["198.18.0.200"]
    assert addresses(ask(RACK, "bootd.rack1.example")) == ["198.18.0.1"]
    assert addresses(ask(RACK, "bootd.rack2.example")) == []  # the admin address is in rack1's subnet
    # A BMC outside every subnet answers in every domain.
    assert addresses(ask(RACK, "db1-bmc.rack2.example")) == ["10.9.9.9"]
    # A node answers in its own subnet's domain only.
    assert addresses(ask(RACK, "far1.rack2.example")) == ["198.19.1.10"]
    assert ask(RACK, "far1.rack1.example").header.rcode == RCODE.NXDOMAIN


def test_missing_names_are_nxdomain_and_missing_types_nodata_both_with_the_soa() -> None:
    for name, rcode in (("nobody.rack1.example", RCODE.NXDOMAIN), ("a.b.rack1.example", RCODE.NXDOMAIN),
                        ("web1.rack1.example", RCODE.NOERROR)):
        reply = ask(RACK, name, "AAAA" if rcode == RCODE.NOERROR else "A")
        assert reply.header.rcode == rcode and reply.header.aa and not reply.rr
        (soa,) = reply.auth
        assert soa.rtype == QTYPE.SOA and str(soa.rname) == "rack1.example."
        assert soa.rdata.times[-1] == 30  # negative answers are cached 30 s (RFC 2308 5)
    # A known node without any address yet: the name exists, with no A (NODATA).
    reply = ask(RACK, "db1.rack1.example")
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr and reply.auth[0].rtype == QTYPE.SOA


def test_apex_soa_and_ns_with_glue() -> None:
    reply = ask(RACK, "rack1.example", "NS")
    assert [str(rr.rdata) for rr in reply.rr] == ["bootd.rack1.example."]
    assert [(str(rr.rname), str(rr.rdata)) for rr in reply.ar] == [("bootd.rack1.example.", "198.18.0.1")]
    soa = ask(RACK, "rack1.example", "SOA").rr[0]
    assert str(soa.rdata.mname) == "bootd.rack1.example." and soa.rdata.times[0] == RACK.serial


def test_ptr_for_nodes_bmcs_admin_and_leases() -> None:
    leases = FakeLeases()
    zone = zone_with(node("web1", MAC1, "198.18.0.10", bmc="198.18.0.200"), node("new1", MAC2),
                     leases=leases)
    leases.by_mac.update({MAC2: IPv4Address("198.18.0.120"),
                          "aa:bb:cc:00:11:22": IPv4Address("198.18.0.121")})
    ptr = {ip: addresses(ask(zone, ip, "PTR")) for ip in ("10.0.18.198.in-addr.arpa",
                                                          "200.0.18.198.in-addr.arpa",
                                                          "1.0.18.198.in-addr.arpa",
                                                          "120.0.18.198.in-addr.arpa",
                                                          "121.0.18.198.in-addr.arpa")}
    assert ptr == {"10.0.18.198.in-addr.arpa": ["web1.rack1.example."],
                   "200.0.18.198.in-addr.arpa": ["web1-bmc.rack1.example."],
                   "1.0.18.198.in-addr.arpa": ["bootd.rack1.example."],
                   "120.0.18.198.in-addr.arpa": ["new1.rack1.example."],
                   "121.0.18.198.in-addr.arpa": ["daabbcc001122.rack1.example."]}
    # Leased names answer forward too: the node by its lease, the unnamed MAC as d<mac>.
    assert addresses(ask(zone, "new1.rack1.example")) == ["198.18.0.120"]
    assert addresses(ask(zone, "daabbcc001122.rack1.example")) == ["198.18.0.121"]
    # A new lease answers at once (asked of the leases at query time).
    leases.by_mac[MAC2] = IPv4Address("198.18.0.130")
    assert addresses(ask(zone, "new1.rack1.example")) == ["198.18.0.130"]
    gone = ask(zone, "99.0.18.198.in-addr.arpa", "PTR")
    assert gone.header.rcode == RCODE.NXDOMAIN and str(gone.auth[0].rname) == "0.18.198.in-addr.arpa."
    assert ask(zone, "0.18.198.in-addr.arpa", "PTR").header.rcode == RCODE.NOERROR


def test_reverse_zones_are_cut_at_octets() -> None:
    from ipaddress import IPv4Network
    assert reverse_zones(IPv4Network("198.19.0.0/22")) == [f"{n}.19.198.in-addr.arpa" for n in range(4)]
    assert reverse_zones(IPv4Network("10.1.2.64/26")) == ["2.1.10.in-addr.arpa"]
    assert reverse_zones(IPv4Network("10.0.0.0/8")) == ["10.in-addr.arpa"]


def test_other_names_are_forwarded_or_refused_but_never_own_or_private_zones() -> None:
    q = parse_query(DNSRecord.question("debian.org", "A").pack())
    assert isinstance(decide(q, RACK, forwarding=True, ttl=30), Forward)
    refused = decide(q, RACK, forwarding=False, ttl=30)
    assert isinstance(refused, Reply) and refused.rcode == RCODE.REFUSED and not refused.recursion
    for name, apex in (("1.0.0.10.in-addr.arpa", "10.in-addr.arpa"),
                       ("5.1.168.192.in-addr.arpa", "168.192.in-addr.arpa"),
                       ("1.1.20.172.in-addr.arpa", "20.172.in-addr.arpa")):
        reply = ask(RACK, name, "PTR", forwarding=True)  # RFC 6303: answered here, not forwarded
        assert reply.header.rcode == RCODE.NXDOMAIN and reply.header.aa
        assert str(reply.auth[0].rname) == apex + "." and str(reply.auth[0].rdata.rname) == "nobody.invalid."
    assert ask(RACK, "nobody.rack1.example", forwarding=True).header.rcode == RCODE.NXDOMAIN


def test_edns_opt_is_kept_and_odd_queries_get_the_right_rcode() -> None:
    reply = ask(RACK, "web1.rack1.example", edns=True)
    (opt,) = reply.ar
    assert opt.rtype == QTYPE.OPT and opt.rclass == MAX_UDP
    assert not ask(RACK, "web1.rack1.example").ar  # no OPT asked, none given (RFC 6891 7)
    notify = DNSRecord.question("rack1.example", "SOA")
    notify.header.opcode = 4
    badvers = DNSRecord.question("web1.rack1.example")
    badvers.add_ar(EDNS0(udp_len=1232, version=1))
    empty = DNSRecord()
    transfer = DNSRecord.question("rack1.example", "AXFR")
    for query, rcode in ((notify, RCODE.NOTIMP), (empty, RCODE.FORMERR), (transfer, RCODE.REFUSED)):
        outcome = decide(parse_query(query.pack()), RACK, forwarding=False, ttl=30)
        assert isinstance(outcome, Reply) and outcome.rcode == rcode
    outcome = decide(parse_query(badvers.pack()), RACK, forwarding=False, ttl=30)
    assert isinstance(outcome, Reply)
    wire = DNSRecord.parse(pack(outcome, MAX_UDP))
    assert wire.header.rcode == 0 and wire.ar[0].ttl >> 24 == 1  # BADVERS = 16: extended rcode 1


def test_an_answer_that_does_not_fit_is_truncated_keeping_question_and_opt() -> None:
    big = DNSRecord.question("big.example", "TXT")
    big.add_ar(EDNS0(udp_len=4096))
    query = parse_query(big.pack())
    answers = tuple(RR("big.example", QTYPE.TXT, rdata=TXT("x" * 200), ttl=30) for _ in range(20))
    reply = Reply(query, RCODE.NOERROR, answers=answers)
    assert query.udp_limit == MAX_UDP
    wire = pack(reply, query.udp_limit)
    assert len(wire) <= MAX_UDP
    parsed = DNSRecord.parse(wire)
    assert parsed.header.tc and str(parsed.q.qname) == "big.example." and not parsed.rr
    assert [rr.rtype for rr in parsed.ar] == [QTYPE.OPT]
    full = DNSRecord.parse(pack(reply, 65535))  # what TCP sends
    assert not full.header.tc and len(full.rr) == 20
    plain = parse_query(DNSRecord.question("big.example", "TXT").pack())
    assert plain.udp_limit == PLAIN_UDP


def test_malformed_queries_are_dropped_and_counted_never_answered() -> None:
    service = DnsService(config(), None, FakeLeases())
    response = DNSRecord.question("web1.rack1.example")
    response.header.qr = 1
    for raw, reason in ((b"\x00", "short"), (b"\x12\x34" + b"\xff" * 30, "unparseable"),
                        (response.pack(), "response")):
        with pytest.raises(MalformedQuery):
            parse_query(raw)
        assert service.answer(raw) is None
        assert service.drops[reason] == 1


def test_the_zone_follows_the_change_feed_renames_and_deletions() -> None:
    feed = ChangeFeed()
    service = DnsService(config(), None, FakeLeases(), feed)
    before = node("node-525400000001", MAC1, "198.18.0.11")
    feed.publish(NodeChanged(before, "created"))
    assert addresses(ask(service.zone, "node-525400000001.rack1.example")) == ["198.18.0.11"]
    renamed = node("web7", MAC1, "198.18.0.11")
    feed.publish(NodeChanged(renamed, "renamed", old_name=before.name))
    assert addresses(ask(service.zone, "web7.rack1.example")) == ["198.18.0.11"]
    assert ask(service.zone, "node-525400000001.rack1.example").header.rcode == RCODE.NXDOMAIN
    assert addresses(ask(service.zone, "11.0.18.198.in-addr.arpa", "PTR")) == ["web7.rack1.example."]
    feed.publish(NodeChanged(renamed, "deleted", deleted=True))
    assert ask(service.zone, "web7.rack1.example").header.rcode == RCODE.NXDOMAIN


def test_dhcp_hands_out_bootd_as_name_server_only_when_dns_is_on() -> None:
    on, off = config(), parse_config(CONFIG.replace("[[subnets]]", "[services]\ndns = false\n[[subnets]]", 1))
    assert name_servers(on, on.subnets[0]) == (IPv4Address("198.18.0.1"),)
    assert name_servers(off, off.subnets[0]) == ()


def test_dns_config_keys() -> None:
    c = config('[dns]\nupstreams = ["198.18.0.53", "198.18.0.54:5353"]\nttl = 5\n')
    assert c.dns.upstreams == ((IPv4Address("198.18.0.53"), 53), (IPv4Address("198.18.0.54"), 5353))
    assert (c.dns.ttl, c.dns.port) == (5, 53)
    for bad, key in (('upstreams = ["198.18.0.1"]', "upstreams[0]"), ('upstreams = ["x"]', "upstreams[0]"),
                     ("ttl = -1", "ttl"), ("port = 0", "port"), ("other = 1", "other")):
        with pytest.raises(ConfigError, match=re.escape(f"dns.{key}")):
            config(f"[dns]\n{bad}\n")


# -- the forwarder, against a fake upstream on loopback ------------------------------------


class Upstream(asyncio.DatagramProtocol):
    """Answers every query for "ok.test" with 192.0.2.1; first sends a stray with the wrong id."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass, by duck type

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = DNSRecord.parse(data)
        answer = query.reply()
        answer.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        stray = answer.pack()
        self.transport.sendto(bytes([stray[0] ^ 0xFF]) + stray[1:], addr)
        self.transport.sendto(answer.pack(), addr)


def silent_port() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


async def test_forwarded_answers_keep_the_client_id_and_silence_is_servfail() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    silent, dead_port = silent_port()
    try:
        for upstreams, expect in ((f'["127.0.0.1:{port}"]', RCODE.NOERROR),
                                  (f'["127.0.0.1:{dead_port}"]', RCODE.SERVFAIL),
                                  (f'["127.0.0.1:{dead_port}", "127.0.0.1:{port}"]', RCODE.NOERROR)):
            service = DnsService(config(f"[dns]\nupstreams = {upstreams}\n"), None, FakeLeases())
            assert service.forwarder is not None
            service.forwarder.timeout = 0.3
            await service.forwarder.start()
            query = DNSRecord.question("ok.test")
            query.header.id = 4242
            decided = service.answer(query.pack())
            assert decided is not None and isinstance(decided[1], Forward)
            reply = DNSRecord.parse(await service._forwarded(decided[0], MAX_UDP, tcp=False))
            assert reply.header.id == 4242 and reply.header.rcode == expect
            assert addresses(reply) == (["192.0.2.1"] if expect == RCODE.NOERROR else [])
            if expect == RCODE.NOERROR:
                assert service.forwarder.counters["stray"] >= 1  # the wrong-id packet was not taken
            service.forwarder.close()
    finally:
        transport.close()
        silent.close()


# -- the fuzz tier: bytes -> parse -> decide -> pack raises nothing but MalformedQuery -----

SEEDS = [DNSRecord.question(n, t).pack() for n, t in (("web1.rack1.example", "A"), ("rack1.example", "ANY"),
                                                       ("10.0.18.198.in-addr.arpa", "PTR"),
                                                       ("debian.org", "MX"))]
FUZZ_SERVICE = DnsService(config(), None, FakeLeases())
FUZZ_SERVICE.zone.load([Host.of(node("web1", MAC1, "198.18.0.10", bmc="198.18.0.200"))])


def _through(raw: bytes) -> None:
    decided = FUZZ_SERVICE.answer(raw)  # MalformedQuery is caught, counted and dropped inside
    if decided is not None and isinstance(decided[1], Reply):
        for limit in (PLAIN_UDP, MAX_UDP, 65535):
            assert len(pack(decided[1], limit)) <= limit


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(raw: bytes) -> None:
    _through(raw)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8))
def test_fuzz_mutated_queries(seed: bytes, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(seed)
    for at, value in flips:
        if at < len(raw):
            raw[at] = value
    _through(bytes(raw))


class SentTo:
    """A datagram transport that keeps what was sent (a fake of asyncio's protocol)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.sent.append(data)


def test_udp_replies_are_cached_until_the_zone_changes_but_lease_answers_never() -> None:
    feed, leases = ChangeFeed(), FakeLeases()
    service = DnsService(config(), None, leases, feed)
    wire = SentTo()
    transport = cast(asyncio.DatagramTransport, wire)

    def udp(name: str, qid: int) -> DNSRecord:
        query = DNSRecord.question(name)
        query.header.id = qid
        service.datagram(bytes(query.pack()), ("198.18.0.2", 5353), transport)
        return DNSRecord.parse(wire.sent[-1])

    feed.publish(NodeChanged(node("web1", MAC1, "198.18.0.10"), "created"))
    assert addresses(udp("web1.rack1.example", 1)) == ["198.18.0.10"]
    again = udp("web1.rack1.example", 2)
    assert again.header.id == 2 and addresses(again) == ["198.18.0.10"]
    assert len(service._cache) == 1 and service.queries[("A", "NOERROR")] == 2
    feed.publish(NodeChanged(node("web1", MAC1, "198.18.0.11"), "changed"))  # a new serial
    assert addresses(udp("web1.rack1.example", 3)) == ["198.18.0.11"]
    # A leased address is read at every query: never cached.
    feed.publish(NodeChanged(node("new1", MAC2), "created"))
    leases.by_mac[MAC2] = IPv4Address("198.18.0.120")
    assert addresses(udp("new1.rack1.example", 4)) == ["198.18.0.120"]
    leases.by_mac[MAC2] = IPv4Address("198.18.0.121")
    assert addresses(udp("new1.rack1.example", 5)) == ["198.18.0.121"]


class FakeInventory:
    """Another writer's inventory: the DNS service learns of changes from the event log."""

    def __init__(self, *nodes: NodeRecord) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.stamp, self.changed, self.full_reads = 1, set[str](), 0

    async def list_nodes(self) -> list[NodeRecord]:
        self.full_reads += 1
        return list(self.nodes.values())

    async def inventory_stamp(self) -> int:
        return self.stamp

    async def changed_since(self, stamp: int) -> tuple[int, set[str] | None]:
        names, self.changed = self.changed, set()
        return self.stamp, names

    async def nodes_named(self, names: object) -> list[NodeRecord]:
        return [self.nodes[n] for n in self.nodes if n in names]  # type: ignore[operator]

    def write(self, name: str, record: NodeRecord | None) -> None:
        if record is None:
            del self.nodes[name]
        else:
            self.nodes[name] = record
        self.changed.add(name)
        self.stamp += 1


async def test_another_writers_changes_reach_the_zone_without_reading_every_node() -> None:
    inventory = FakeInventory(node("a", MAC1, "198.18.0.11"), node("b", MAC2, "198.18.0.12"))
    service = DnsService(config(), inventory, FakeLeases())
    await service.refresh()
    assert inventory.full_reads == 1
    inventory.write("c", node("c", MAC3, "198.18.0.13"))
    inventory.write("a", None)
    await service.refresh()
    assert addresses(ask(service.zone, "c.rack1.example")) == ["198.18.0.13"]
    assert ask(service.zone, "a.rack1.example").header.rcode == RCODE.NXDOMAIN
    assert addresses(ask(service.zone, "13.0.18.198.in-addr.arpa", "PTR")) == ["c.rack1.example."]
    assert inventory.full_reads == 1  # patched, not re-read
