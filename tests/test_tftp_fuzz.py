"""The TFTP fuzz tier: hypothesis and a mutation corpus over the codec, the listener's
decision and the sans-IO session behind it, and mutated requests at a real listener.

Bounded for CI (a few seconds); bench/fuzz_tftp.py runs the same harness for a
million packets. Invariants: parse raises only MalformedPacket; what it accepts
builds back to itself; intake.examine never raises; a session never raises,
every Send parses, DATA fits blksize, and every session ends within retries + 1
timeouts once its peer goes quiet (tests/tftp_mutate.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import test_tftp_service
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tftp_service import HOST, Start, client, fetch, settle
from tftp_mutate import CORPUS, Counts, SessionHarness, fuzz, fuzz_one, mutate

from bootd.tftp import packet as p
from bootd.tftp.intake import Accept, Refuse, examine
from bootd.tftp.session import Limits

start = test_tftp_service.start  # the loopback service fixture
seeds = st.integers(min_value=0, max_value=2**32)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=1600))
def test_random_bytes_are_parsed_refused_or_ignored(data: bytes) -> None:
    with contextlib.suppress(p.MalformedPacket):
        p.parse(data)
    assert isinstance(examine(data), Accept | Refuse | type(None))


@settings(max_examples=1500, deadline=None)
@given(seeds, st.sampled_from(CORPUS))
def test_mutated_corpus_through_codec_intake_and_a_session(seed: int, entry: bytes) -> None:
    rng, harness, counts = random.Random(seed), SessionHarness(), Counts()
    fuzz_one(mutate(rng, entry), rng, harness, counts)
    for _ in range(20):
        fuzz_one(mutate(rng, rng.choice((p.ack(rng.randrange(65536)), *CORPUS))), rng, harness, counts)
    harness.end()
    assert counts.crashes == 0, counts.examples


acks = st.builds(p.ack, st.integers(0, 65535))
peer_packets = st.lists(st.one_of(acks, st.binary(max_size=24), st.sampled_from(CORPUS)), max_size=60)
options = st.dictionaries(st.sampled_from(["blksize", "tsize", "timeout", "windowsize", "x"]),
                          st.one_of(st.integers(-2, 70000).map(str), st.text("0123456789ab", max_size=6)))


@settings(max_examples=800, deadline=None)
@given(options, st.binary(max_size=3000), peer_packets, st.lists(st.booleans(), max_size=60))
def test_a_session_never_raises_and_always_ends(asked: dict[str, str], content: bytes,
                                                 packets: list[bytes], ticks: list[bool]) -> None:
    harness = SessionHarness(contents=(content,), limits=Limits(timeout=1.0, retries=2, max_timeout=5))
    rng = random.Random(0)
    harness.start(p.Request(p.Opcode.RRQ, "f", "octet", asked), rng)
    session = harness.sessions[0]
    for raw, tick in zip(packets, ticks + [False] * len(packets), strict=False):
        if session.finished:
            break
        harness.now += 1.5 if tick else 0.01
        if tick:
            harness.check(session, session.timeout(harness.now))
        else:
            with contextlib.suppress(p.MalformedPacket):
                harness.check(session, session.receive(p.parse(raw), harness.now))
    harness.end()
    assert session.finished


def test_a_bounded_mutation_run() -> None:
    counts, harness = fuzz(20_000, seed=7)
    assert counts.crashes == 0, counts.examples
    # The corpus reaches every layer: the codec refuses some, the listener accepts and
    # refuses some, and sessions run to completion.
    assert counts.malformed > 1000 and counts.accepted > 1000 and counts.refused > 1000
    assert harness.completed > 50
    assert harness.started == harness.ended


async def test_mutated_requests_at_a_real_listener(start: Start) -> None:
    service = await start("""\
        max_transfers = 32
        timeout = 0.2
        retries = 1
        """)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    rng = random.Random(3)
    socks = [client(f"127.0.0.{1 + i}") for i in range(50)]
    for i in range(3000):
        with contextlib.suppress(BlockingIOError):
            rng.choice(socks).sendto(mutate(rng), (HOST, service.port))
        if i % 20 == 19:
            for _ in range(50):
                if service.counters["requests"] >= i - 20:
                    break
                await asyncio.sleep(0.002)
    for sock in socks:
        sock.close()
    await settle(service)
    assert errors == []
    assert service.counters["requests"] > 2000
    _, got = await fetch(service.port, "undionly.kpxe", options={"windowsize": "4"})
    assert got == (service.files.root / "undionly.kpxe").read_bytes()
