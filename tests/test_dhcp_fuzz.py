"""The DHCP fuzz tier: hypothesis and a mutation corpus over the codec and the server path
behind it (decide -> reply -> lease writer -> SQLite), with scapy as an independent
encoder and decoder.

Bounded for CI (a few seconds); bench/fuzz_dhcp.py runs the same harness for a
million packets. Invariants (tests/dhcp_harness.py): parse and the typed option
getters raise only MalformedPacket; what parse accepts builds back to the same
fields; Decider.handle raises nothing; every reply parses, answers its request
and fits the client's maximum message size; the lease table stays consistent;
every lease row has a 17-character MAC and is the last lease written for its
address, as the table says.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import replace
from pathlib import Path

from dhcp_harness import fuzz, memory_harness, sqlite_harness
from dhcp_mutate import CORPUS, KNOWN_IP, KNOWN_MAC, SERVER, SPECS, Spec, mutate
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from bootd.dhcp.classify import classify
from bootd.dhcp.options import MalformedPacket, Opt, Options, encode_tlvs
from bootd.dhcp.outcome import Verdict
from bootd.dhcp.packet import MAGIC, Packet, build, parse

seeds = st.integers(min_value=0, max_value=2**32)
EXAMPLES = 300


def _getters(p: Packet) -> None:
    """Every typed accessor a handler may call, and the classifier."""
    o = p.options
    for name in ("message_type", "requested_ip", "server_id", "overload", "client_id", "max_message_size",
                 "parameter_request_list", "vendor_class", "user_classes", "client_arches", "client_uuid",
                 "relay_agent_info", "ipxe", "hostname"):
        getattr(o, name)
    classify(p)


def _total(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        _getters(parse(data))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_parse_or_are_malformed(data: bytes) -> None:
    _total(data)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(min_size=236, max_size=236), st.binary(max_size=600))
def test_random_options_parse_or_are_malformed(header: bytes, tail: bytes) -> None:
    """Past the magic cookie, so the options (and an overloaded file and sname) are reached."""
    _total(bytes((1, 1, 6)) + header[3:] + MAGIC + tail)


option_items = st.lists(st.tuples(st.integers(1, 254).filter(lambda c: c != Opt.OVERLOAD),
                                  st.binary(max_size=300)), max_size=12)


@settings(max_examples=EXAMPLES, deadline=None)
@given(option_items, st.binary(min_size=6, max_size=6), st.integers(0, 2**32 - 1),
       st.binary(max_size=64), st.binary(max_size=128), st.sampled_from([576, 1024, 1500, 65535]))
def test_build_then_parse_gives_the_same_packet(items: list[tuple[int, bytes]], hw: bytes, xid: int,
                                                sname: bytes, file: bytes, size: int) -> None:
    """RFC 3396: long values split and concatenated back; overloading when the options
    do not fit (then option 52 appears; nothing else changes)."""
    sname, file = sname.replace(b"\0", b"."), file.replace(b"\0", b".")
    packet = Packet(op=2, xid=xid, chaddr=hw + bytes(10), options=Options(items), sname=sname, file=file)
    try:
        data = build(packet, items, size)
    except MalformedPacket as exc:
        refused = str(exc)
        assert "do not fit" in refused
        return
    again = parse(data)
    if Opt.OVERLOAD in again.options:
        assert not sname or not file
        # The fields that carry options read empty; what was in the other one is kept.
        again = replace(again, options=Options((c, v) for c, v in again.options.items() if c != Opt.OVERLOAD),
                        sname=again.sname or sname, file=again.file or file)
    assert again == packet
    assert len(data) + 28 <= max(size, 576)


def _scapy(spec: Spec) -> bytes:
    """The same message, laid out by scapy (an encoder that is not ours)."""
    file = b"" if spec.file_items is None else encode_tlvs(spec.file_items) + b"\xff"
    sname = b"" if spec.sname_items is None else encode_tlvs(spec.sname_items) + b"\xff"
    frame = BOOTP(op=spec.op, htype=spec.htype, hlen=spec.hlen, hops=spec.hops, xid=spec.xid,
                  flags=spec.flags, ciaddr=str(spec.ciaddr), giaddr=str(spec.giaddr), chaddr=spec.chaddr,
                  sname=sname, file=file) / DHCP(options=[*spec.items, *(["end"] if spec.end else [])])
    return bytes(frame)


def test_the_corpus_as_scapy_builds_it_parses_to_its_fields() -> None:
    for spec in SPECS:
        ours = parse(_scapy(spec))
        assert ours == parse(spec.encode()), spec.name
        options = list(spec.items) + (spec.file_items or []) + (spec.sname_items or [])
        assert ours.options == Options(options), spec.name
        assert (ours.xid, ours.hlen, ours.hops, ours.ciaddr, ours.giaddr) == \
            (spec.xid, spec.hlen, spec.hops, spec.ciaddr, spec.giaddr), spec.name
        assert ours.hardware_address == spec.chaddr[:spec.hlen], spec.name


def test_every_reply_to_the_corpus_is_read_by_scapy_as_sent() -> None:
    harness = memory_harness()
    replied = 0
    for spec in SPECS:
        packet = parse(spec.encode())
        out = harness.decider.handle(packet, harness.ingress, harness.now)
        if out.reply is None:
            continue
        replied += 1
        ours, theirs = parse(out.reply.data), BOOTP(out.reply.data)
        assert (theirs.op, theirs.xid, theirs.yiaddr, theirs.siaddr, theirs.giaddr) == \
            (2, packet.xid, str(ours.yiaddr), str(ours.siaddr), str(ours.giaddr)), spec.name
        assert bytes(theirs.chaddr)[:6] == packet.hardware_address
        seen = dict(o for o in theirs[DHCP].options if isinstance(o, tuple) and len(o) == 2)
        assert seen["server_id"] == str(SERVER)
        assert seen["message-type"] == ours.message_type, spec.name
    assert replied >= 15


@settings(max_examples=200, deadline=None)
@given(seeds, st.sampled_from(CORPUS))
def test_mutated_corpus_through_decide_and_the_writer(seed: int, entry: bytes) -> None:
    harness, rng = memory_harness(), random.Random(seed)
    harness.feed(mutate(rng, entry), rng)
    for _ in range(40):
        harness.feed(harness.next_packet(rng), rng)
    asyncio.run(harness.check())
    assert harness.counts.crashes == 0, harness.counts.examples


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SPECS), st.integers(0, 255), st.integers(0, 2**32)), max_size=30))
def test_clients_sharing_a_small_pool(steps: list[tuple[Spec, int, int]]) -> None:
    """Few MACs, many exchanges: the same addresses change hands (offers taken back,
    leases released, declined, expired) and the table and rows still agree."""
    harness = memory_harness()
    for spec, host, seed in steps:
        rng = random.Random(seed)
        client = spec.chaddr[:5] + bytes((host % 8,))
        harness.feed(replace(spec, chaddr=client).encode(), rng)
        while harness.follow:
            harness.feed(harness.follow.popleft(), rng)
        harness.now += rng.choice((0, 5, 31, 700))
    asyncio.run(harness.check())
    assert harness.counts.crashes == 0, harness.counts.examples


async def test_a_bounded_mutation_run_into_sqlite(tmp_path: Path) -> None:
    """20,000 packets through codec, decide, the lease writer and a real repository with
    a real policy (registering the booting machines it sees, within its caps)."""
    async with sqlite_harness(tmp_path) as harness:
        counts = await fuzz(harness, 20_000, seed=7, batch=1000)
        rows = await harness.store.list_leases()
    assert counts.crashes == 0, counts.examples
    # The corpus reaches every layer: the codec refuses some, decide answers every way,
    # leases are written, and promised replies go out once durable.
    assert counts.malformed > 1000 and counts.round_trips > 1000
    for verdict in (Verdict.OFFER, Verdict.ACK, Verdict.NAK, Verdict.RELEASED, Verdict.DECLINED,
                    Verdict.INFORM, Verdict.EXHAUSTED, Verdict.IGNORED, Verdict.DROPPED):
        assert counts.verdicts[verdict.value] > 10, verdict
    assert counts.persisted > 1000 and counts.sent > 1000
    assert len(rows) > 100
    assert any(r.ip in harness.config.subnets[1].cidr for r in rows)  # relayed clients too
    assert any(r.ip == KNOWN_IP and r.mac == KNOWN_MAC for r in rows)  # the reservation
