"""How hard bootd may hit BMCs and circuits: at most N sessions at once, M power-ons a
second, one operation at a time per BMC.

A rack powering on at once can trip its breakers; hundreds of IPMI sessions at
once flood the admin network and the BMCs' tiny CPUs. Every BMC operation takes
a session slot; a power-on (on, cycle) also waits its turn on a fixed-interval
schedule (1/M s apart). The clock and sleep are injectable, so the limits are
tested by counting, not by timing.

Everything here is owned by an instance (one per PowerService) and bounded: the
record of power-ons keeps only the last WINDOW seconds, and a BMC's lock lives
only while an operation holds or waits for it. A daemon that has touched
thousands of BMCs over months holds nothing for them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
WINDOW = 60.0        # seconds of power-on history kept (the rate an operator can see)
MAX_RECORDED = 4096  # and never more entries than this, whatever the rate


class Throttle:
    def __init__(self, max_sessions: int, power_on_rate: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._slots = asyncio.Semaphore(max_sessions)
        self.max_sessions, self.interval = max_sessions, 1.0 / power_on_rate
        self._clock, self._sleep = clock, sleep
        self._next_power_on = 0.0
        self.active = self.peak = 0
        self.admitted = 0  # power-ons let through since start
        # When each recent power-on was let through (or is scheduled to be).
        self._recent: deque[float] = deque(maxlen=MAX_RECORDED)

    @property
    def power_on_times(self) -> list[float]:
        """Power-ons of the last WINDOW seconds (and those scheduled), oldest first."""
        self._prune(self._clock())
        return list(self._recent)

    def _prune(self, now: float) -> None:
        while self._recent and self._recent[0] < now - WINDOW:
            self._recent.popleft()

    @asynccontextmanager
    async def session(self, powers_on: bool = False) -> AsyncIterator[None]:
        if powers_on:
            now = self._clock()
            start = max(now, self._next_power_on)
            self._next_power_on = start + self.interval  # reserve the slot before waiting
            self._prune(now)
            self._recent.append(start)
            self.admitted += 1
            if start > now:
                await self._sleep(start - now)
        async with self._slots:
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                yield
            finally:
                self.active -= 1


@dataclass
class _Held:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class KeyedLocks(Generic[K]):
    """One lock per key (a BMC's host and port), alive only while it is held or awaited."""

    def __init__(self) -> None:
        self._held: dict[K, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held()
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:  # also when cancelled while waiting
            held.users -= 1
            if held.users == 0:
                del self._held[key]
