"""The receive backlog (pure, fake clock): urgent before DISCOVER, stale shed, bounded lanes."""

from __future__ import annotations

from bootd.dhcp.backlog import Backlog, Limits, Shed
from bootd.dhcp.options import MessageType, Opt
from bootd.dhcp.packet import BOOTREQUEST, Packet, build, is_discover


def drain(backlog: Backlog[str], now: float) -> list[str]:
    out = []
    while (item := backlog.pop(now)) is not None:
        out.append(item)
    return out


def test_requests_oldest_first_before_discovers_newest_first() -> None:
    b: Backlog[str] = Backlog()
    b.push("d1", True, 0.0)
    b.push("d2", True, 0.01)
    b.push("r1", False, 0.02)
    b.push("r2", False, 0.03)
    assert drain(b, 0.05) == ["r1", "r2", "d2", "d1"]
    assert len(b) == 0 and not b.shed


def test_stale_discovers_are_shed_and_counted_fresh_ones_kept() -> None:
    b: Backlog[str] = Backlog(Limits(discover_max_age=0.3, urgent_max_age=2.0))
    b.push("old", True, 0.0)
    b.push("fresh", True, 0.5)
    b.push("newest", True, 0.55)
    b.push("request", False, 0.0)  # same age as "old", but a REQUEST keeps longer
    assert drain(b, 0.6) == ["request", "newest", "fresh"]
    assert b.shed == {Shed.DISCOVER_STALE: 1}


def test_stale_requests_are_shed_too() -> None:
    b: Backlog[str] = Backlog(Limits(urgent_max_age=2.0))
    b.push("late", False, 0.0)
    b.push("ok", False, 1.5)
    assert drain(b, 2.5) == ["ok"]
    assert b.shed == {Shed.URGENT_STALE: 1}


def test_full_lanes_shed_their_oldest() -> None:
    b: Backlog[str] = Backlog(Limits(discover_limit=2, urgent_limit=2))
    for i in range(4):
        b.push(f"d{i}", True, 0.0)
        b.push(f"r{i}", False, 0.0)
    assert len(b) == 4
    assert drain(b, 0.0) == ["r2", "r3", "d3", "d2"]
    assert b.shed == {Shed.DISCOVER_OVERFLOW: 2, Shed.URGENT_OVERFLOW: 2}


def wire(kind: MessageType | None, *, first: bool = True) -> bytes:
    items = [(Opt.HOSTNAME, b"x")]
    if kind is not None:
        items.insert(0 if first else 1, (Opt.MESSAGE_TYPE, bytes((kind,))))
    return build(Packet(op=BOOTREQUEST, xid=1, chaddr=bytes(6)), items)


def test_is_discover_reads_the_message_type_wherever_it_is() -> None:
    assert is_discover(wire(MessageType.DISCOVER))
    assert is_discover(wire(MessageType.DISCOVER, first=False))
    assert not is_discover(wire(MessageType.REQUEST))
    assert not is_discover(wire(MessageType.REQUEST, first=False))
    assert not is_discover(wire(MessageType.RELEASE))
    # Unreadable or untyped: the lane shed first.
    assert is_discover(wire(None))
    assert is_discover(b"\x01" * 10)
    assert is_discover(wire(MessageType.REQUEST, first=False)[:240] + b"\x0c\xff")
