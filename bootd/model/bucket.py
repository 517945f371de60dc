"""A token bucket (pure, caller's clock): `rate` per second, at most `burst` saved up.

Used wherever unauthenticated input may cost work: registrations of unknown
machines per interface (policy), boot-failure reports per MAC and overall.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, now: float) -> None:
        self.level, self.stamp = level, now

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.level = min(burst, self.level + max(0.0, now - self.stamp) * rate)
        self.stamp = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True
