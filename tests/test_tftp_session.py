"""TFTP codec and sans-IO read sessions with a fake clock."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootd.tftp import packet as p
from bootd.tftp.session import ArmTimer, Done, Limits, ReadSession, Send


def rrq(options: dict[str, str] | None = None, mode: str = "octet") -> p.Request:
    return p.Request(p.Opcode.RRQ, "f", mode, options or {})


def sends(actions: list[object]) -> list[p.Packet]:
    return [p.parse(a.data) for a in actions if isinstance(a, Send)]


def done(actions: list[object]) -> Done | None:
    return next((a for a in actions if isinstance(a, Done)), None)


def drive(session: ReadSession, now: float = 0.0) -> bytes:
    """A perfect client: ACKs the last block of every window. Returns what it received."""
    got: dict[int, bytes] = {}
    actions = session.start(now)
    if session.oack:
        actions = session.receive(p.Ack(0), now)
    while True:
        packets = [x for x in sends(actions) if isinstance(x, p.Data)]
        for d in packets:
            got[len(got) + 1] = d.data
        finished = done(actions)
        if finished is not None:
            assert finished.ok
            return b"".join(got[i] for i in sorted(got))
        actions = session.receive(p.Ack(packets[-1].block), now)


def test_codec_round_trip() -> None:
    raw = p.request(p.Opcode.RRQ, "pxelinux.cfg/01-aa", "OCTET", {"BLKSIZE": "1468", "tsize": "0"})
    req = p.parse(raw)
    assert req == p.Request(p.Opcode.RRQ, "pxelinux.cfg/01-aa", "octet", {"blksize": "1468", "tsize": "0"})
    assert p.parse(p.data(70000, b"xyz")) == p.Data(70000 & 0xFFFF, b"xyz")
    assert p.parse(p.ack(3)) == p.Ack(3)
    assert p.parse(p.error(1, "nope")) == p.Error(1, "nope")
    assert p.parse(p.oack({"tsize": "5"})) == p.OAck({"tsize": "5"})


@pytest.mark.parametrize(("raw", "words"), [
    (b"\x00\x01", "too short"),
    (b"\x00\x01file", "NUL-terminated"),
    (b"\x00\x01file\x00", "needs filename, mode"),
    (b"\x00\x01file\x00octet\x00blksize\x00", "needs filename, mode"),
    (b"\x00\x01f\xffile\x00octet\x00", "non-ASCII"),
    (b"\x00\x09abcd", "unknown opcode 9"),
    (b"\x00\x01" + b"a" * 600 + b"\x00octet\x00", "longer than 512"),
])
def test_malformed(raw: bytes, words: str) -> None:
    with pytest.raises(p.MalformedPacket, match=words):
        p.parse(raw)


@given(st.binary(max_size=600))
def test_random_bytes_parse_or_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(p.MalformedPacket):
        p.parse(data)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 5000])
def test_plain_transfer_lockstep(size: int) -> None:
    content = bytes(i % 251 for i in range(size))
    s = ReadSession(rrq(), content)
    assert drive(s) == content
    assert s.blksize == 512


def test_negotiation_and_oack() -> None:
    s = ReadSession(rrq({"blksize": "9000", "tsize": "0", "timeout": "3", "windowsize": "16",
                         "multicast": "1", "bogus": "x"}), b"a" * 10, Limits(max_blksize=1468))
    (oack, timer) = s.start(10.0)
    assert p.parse(oack.data) == p.OAck({"blksize": "1468", "tsize": "10", "timeout": "3",
                                         "windowsize": "16"})
    assert timer == ArmTimer(13.0)
    assert (s.blksize, s.windowsize) == (1468, 16)


@pytest.mark.parametrize("opts", [{"blksize": "7"}, {"blksize": "65465"}, {"timeout": "0"},
                                  {"windowsize": "0"}, {"blksize": "x"}])
def test_invalid_option_values_are_left_out(opts: dict[str, str]) -> None:
    s = ReadSession(rrq(opts), b"abc")
    assert s.oack == {}
    assert isinstance(sends(s.start(0))[0], p.Data)


def test_tsize_probe_aborted_with_error_8_is_normal() -> None:
    s = ReadSession(rrq({"tsize": "0"}), b"x" * 100)
    s.start(0)
    result = done(s.receive(p.Error(8, "tsize only"), 0))
    assert result is not None
    assert result.ok


def test_windowsize_sends_a_window_and_resumes_after_a_partial_ack() -> None:
    content = bytes(512 * 20)
    s = ReadSession(rrq({"windowsize": "8"}), content)
    s.start(0)
    first = [x.block for x in sends(s.receive(p.Ack(0), 0))]
    assert first == list(range(1, 9))
    # The client lost block 4: it ACKs 3; the window restarts at 4 (RFC 7440 section 4).
    again = [x.block for x in sends(s.receive(p.Ack(3), 0))]
    assert again == list(range(4, 12))
    assert (s.acked, s.sent) == (3, 11)
    assert [x.block for x in sends(s.receive(p.Ack(11), 0))] == list(range(12, 20))


def test_duplicate_and_stale_acks_do_not_retransmit() -> None:
    s = ReadSession(rrq(), bytes(512 * 5))
    s.start(0)
    s.receive(p.Ack(1), 0)
    assert s.receive(p.Ack(1), 0) == []  # Sorcerer's Apprentice: no resend on duplicate
    assert s.receive(p.Ack(0), 0) == []
    assert s.receive(p.Ack(9), 0) == []  # not sent yet: ignored


def test_timeout_retransmits_then_gives_up() -> None:
    s = ReadSession(rrq(), bytes(2000), Limits(timeout=1.0, retries=2))
    s.start(0)
    first = sends(s.timeout(1.0))
    assert first == [p.Data(1, bytes(512))]
    assert sends(s.timeout(2.0)) == [p.Data(1, bytes(512))]
    result = done(s.timeout(3.0))
    assert result is not None
    assert not result.ok
    assert "no answer" in result.reason
    assert s.timeout(4.0) == []


def test_oack_is_retransmitted_until_ack_0() -> None:
    s = ReadSession(rrq({"tsize": "0"}), b"abc")
    s.start(0)
    assert isinstance(sends(s.timeout(1.0))[0], p.OAck)
    data = sends(s.receive(p.Ack(0), 1.5))
    assert data == [p.Data(1, b"abc")]


def test_block_numbers_roll_over_past_65535() -> None:
    content = bytes(i % 256 for i in range(512 * 70000 + 100))  # ~34 MiB at 512-byte blocks
    s = ReadSession(rrq({"windowsize": "64"}), content)
    assert drive(s) == content
    assert s.last_block == 70001


def test_rollover_in_lockstep_around_the_wrap() -> None:
    content = bytes(512 * 65540)
    s = ReadSession(rrq(), content)
    s.start(0)
    for block in range(1, 65535):
        s.receive(p.Ack(block & 0xFFFF), 0)
    out = sends(s.receive(p.Ack(65535), 0))
    assert out == [p.Data(0, bytes(512))]  # block 65536 goes on the wire as 0
    assert sends(s.receive(p.Ack(0), 0)) == [p.Data(1, bytes(512))]


def test_client_error_and_unexpected_packets_end_the_session() -> None:
    s = ReadSession(rrq(), bytes(2000))
    s.start(0)
    r = done(s.receive(p.Error(0, "user abort"), 0))
    assert r is not None
    assert not r.ok
    s2 = ReadSession(rrq(), bytes(2000))
    s2.start(0)
    actions = s2.receive(p.Data(1, b"x"), 0)
    assert sends(actions) == [p.Error(4, "expected an ACK")]


@pytest.mark.parametrize(("asked", "accepted"), [("1", True), ("5", True), ("6", False), ("255", False)])
def test_client_timeout_above_the_maximum_is_left_out(asked: str, accepted: bool) -> None:
    s = ReadSession(rrq({"timeout": asked, "tsize": "0"}), b"abc", Limits(timeout=1.0, max_timeout=5))
    (oack, timer) = s.start(0.0)
    assert ("timeout" in p.parse(oack.data).options) is accepted  # type: ignore[union-attr]
    assert timer == ArmTimer(float(asked) if accepted else 1.0)


def test_an_idle_transfer_ends_within_retries_times_the_longest_timeout() -> None:
    # A client that asks timeout=255 and then never answers (issue 11, 3.4).
    limits = Limits(timeout=1.0, retries=5, max_timeout=5)
    s = ReadSession(rrq({"timeout": "255"}), bytes(5000), limits)
    actions = s.start(0.0)
    now = 0.0
    while done(actions) is None:
        deadline = next(a.deadline for a in actions if isinstance(a, ArmTimer))
        now = deadline
        actions = s.timeout(now)
    assert now <= (limits.retries + 1) * max(limits.timeout, limits.max_timeout)
    assert now == 6.0


def _state(s: ReadSession) -> tuple[int, int, int, int, bool, bool, int]:
    return s.acked, s.sent, s.retries, s.last_block, s.finished, s.complete, s.bytes_sent


@given(size=st.integers(0, 5000), blksize=st.sampled_from(["8", "512", "1468"]),
       windowsize=st.sampled_from([None, "1", "4"]), oack=st.booleans(),
       acks=st.lists(st.integers(0, 0xFFFF), max_size=40), timeouts=st.sets(st.integers(0, 40)))
def test_next_data_fast_path_matches_ack(size: int, blksize: str, windowsize: str | None, oack: bool,
                                         acks: list[int], timeouts: set[int]) -> None:
    """The lockstep hot path moves the session exactly as ack() does, or declines and changes nothing."""
    options = {"blksize": blksize} if oack else {}
    if windowsize:
        options["windowsize"] = windowsize
    content = bytes(i % 251 for i in range(size))
    fast, slow = ReadSession(rrq(options), content), ReadSession(rrq(options), content)
    fast.start(0.0)
    slow.start(0.0)
    # Mostly in-order ACKs (the case the fast path takes), with arbitrary ones and timeouts mixed in.
    for i, arbitrary in enumerate(acks):
        block = (slow.sent & 0xFFFF) if i % 3 else arbitrary
        if i in timeouts:
            assert fast.timeout(1.0) == slow.timeout(1.0)
        expected = slow.ack(block, 2.0)
        before = _state(fast)
        got = fast.next_data(block)
        if got is None:
            assert _state(fast) == before
            assert fast.ack(block, 2.0) == expected
        else:
            assert expected == [Send(got), ArmTimer(2.0 + fast.timeout_s)]
        assert _state(fast) == _state(slow)
