"""How hard bootd may hit BMCs and circuits: at most N sessions at once, M power-ons a second.

A rack powering on at once can trip its breakers; hundreds of IPMI sessions at
once flood the admin network and the BMCs' tiny CPUs. Every BMC operation takes
a session slot; a power-on (on, cycle) also waits its turn on a fixed-interval
schedule (1/M s apart). The clock and sleep are injectable, so the limits are
tested by counting, not by timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


class Throttle:
    def __init__(self, max_sessions: int, power_on_rate: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._slots = asyncio.Semaphore(max_sessions)
        self.max_sessions, self.interval = max_sessions, 1.0 / power_on_rate
        self._clock, self._sleep = clock, sleep
        self._next_power_on = 0.0
        self.active = self.peak = 0
        self.power_on_times: list[float] = []  # when each power-on was let through

    @asynccontextmanager
    async def session(self, powers_on: bool = False) -> AsyncIterator[None]:
        if powers_on:
            now = self._clock()
            start = max(now, self._next_power_on)
            self._next_power_on = start + self.interval  # reserve the slot before waiting
            if start > now:
                await self._sleep(start - now)
            self.power_on_times.append(start)
        async with self._slots:
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                yield
            finally:
                self.active -= 1
