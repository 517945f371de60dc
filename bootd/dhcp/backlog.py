"""The receive backlog: bounded, REQUESTs before DISCOVERs, stale work shed (pure; the clock is passed in).

Under more load than one event loop can answer, a FIFO socket buffer answers
every message late and, in the end, none in time: throughput collapses while
the CPU stays busy. So the socket is drained on every wakeup into two bounded
lanes, and work is taken from them in value order:

- the urgent lane (REQUEST, DECLINE, RELEASE, INFORM): a REQUEST finishes an
  exchange whose OFFER was already paid for; answering it turns spent work
  into a lease;
- the DISCOVER lane: starts new exchanges only with what capacity is left,
  newest first (last in, first out): an answer to a fresh DISCOVER still
  arrives in time, while answering the oldest first would make every answer
  late by as much as the backlog is long.

A DISCOVER that waited longer than `discover_max_age` is shed unanswered: the
client has retransmitted (RFC 2131 section 4.1: 4 s, clients and perfdhcp
give up on an offer far sooner under load) and the answer would only be
late work. A REQUEST keeps longer (`urgent_max_age`). A full lane sheds its
oldest message, the one closest to being worthless. Everything shed is
counted by reason; the service logs it at most once a minute.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
DISCOVER_MAX_AGE = 0.3
URGENT_MAX_AGE = 2.0
DISCOVER_LIMIT = 2048
URGENT_LIMIT = 4096


class Shed(enum.StrEnum):
    """Why a message was dropped unanswered before it was looked at."""

    DISCOVER_STALE = "discover-stale"
    DISCOVER_OVERFLOW = "discover-overflow"
    URGENT_STALE = "request-stale"
    URGENT_OVERFLOW = "request-overflow"


@dataclass(frozen=True, slots=True)
class Limits:
    discover_max_age: float = DISCOVER_MAX_AGE
    urgent_max_age: float = URGENT_MAX_AGE
    discover_limit: int = DISCOVER_LIMIT
    urgent_limit: int = URGENT_LIMIT


class Backlog(Generic[T]):
    """Two bounded lanes of (arrival time, item); pop() serves urgent (oldest first), then DISCOVER
    (newest first)."""

    __slots__ = ("_discover", "_urgent", "limits", "shed")

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.shed: Counter[Shed] = Counter()
        self._urgent: deque[tuple[float, T]] = deque()
        self._discover: deque[tuple[float, T]] = deque()

    def __len__(self) -> int:
        return len(self._urgent) + len(self._discover)

    def push(self, item: T, discover: bool, now: float) -> None:
        if discover:
            lane, limit, why = self._discover, self.limits.discover_limit, Shed.DISCOVER_OVERFLOW
        else:
            lane, limit, why = self._urgent, self.limits.urgent_limit, Shed.URGENT_OVERFLOW
        if len(lane) >= limit:
            lane.popleft()
            self.shed[why] += 1
        lane.append((now, item))

    def pop(self, now: float) -> T | None:
        """The next item worth answering, or None; stale items met on the way are shed."""
        urgent = self._urgent
        if urgent:
            oldest = now - self.limits.urgent_max_age
            while urgent:
                at, item = urgent.popleft()
                if at >= oldest:
                    return item
                self.shed[Shed.URGENT_STALE] += 1
        discover = self._discover
        oldest = now - self.limits.discover_max_age
        while discover and discover[0][0] < oldest:
            discover.popleft()
            self.shed[Shed.DISCOVER_STALE] += 1
        return discover.pop()[1] if discover else None
