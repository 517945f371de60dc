"""Replaying nodes' event logs to count install slots held at each instant.

A slot starts at the node's `admitted` event (message `slot=STATE`) and ends at
the node's next move out of that state. The demo, the multi-daemon lab and the
fleet bench use it to show that a wave limit held at every instant, from the
database's own record rather than from the test's view."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def slot_intervals(events: Iterable[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    """(start, end) ISO times of one node's slots, from its events (API/CLI JSON, any order);
    end None: still held."""
    out: list[tuple[str, str | None]] = []
    held: tuple[str, str] | None = None  # (start, state)
    for e in sorted(events, key=lambda e: e["id"]):
        if e["kind"] == "admitted" and held is None:
            held = (e["at"], str(e["message"]).removeprefix("slot="))
        elif held is not None and e.get("from") == held[1] and (
                e.get("to") not in (None, held[1]) or e["kind"] == "timeout"):  # a retry queues again
            out.append((held[0], e["at"]))
            held = None
    if held is not None:
        out.append((held[0], None))
    return out


def most_at_once(intervals: Iterable[tuple[str, str | None]]) -> int:
    """The largest number of intervals open at one instant (an end before a start at the same time)."""
    points = []
    for start, end in intervals:
        points.append((start, 1))
        if end is not None:
            points.append((end, -1))
    now = peak = 0
    for _, step in sorted(points, key=lambda p: (p[0], p[1])):
        now += step
        peak = max(peak, now)
    return peak
