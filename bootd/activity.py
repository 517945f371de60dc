"""Recent fetches per machine (TFTP transfers, HTTP boot scripts, images, answer
files), in memory and bounded: the node page's timeline shows them between its
lifecycle events.

Not in the database: a boot fetches a handful of files, a rack of machines
thousands, and none of it must cost a write on the boot path. Who fetched is
known by address; the policy's lease map turns an address into a MAC (a fetch
from an address bootd never leased is not recorded). Bounded both ways: the
last PER_MAC fetches of each machine, the MAC_LIMIT machines seen most recently.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PER_MAC = 64
MAC_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class Fetch:
    at: float      # seconds since the epoch
    kind: str      # "tftp" or "http"
    detail: str    # what was fetched and how it went (bounded, printable)


class Activity:
    def __init__(self, clock: Callable[[], float] = time.time, per_mac: int = PER_MAC,
                 macs: int = MAC_LIMIT) -> None:
        self._clock, self._per_mac, self._macs = clock, per_mac, macs
        self._log: OrderedDict[str, deque[Fetch]] = OrderedDict()

    def record(self, mac: str, kind: str, detail: str) -> None:
        text = "".join(c if c.isprintable() else "?" for c in detail[:300])
        entries = self._log.get(mac)
        if entries is None:
            if len(self._log) >= self._macs:
                self._log.popitem(last=False)  # the machine seen least recently
            entries = self._log[mac] = deque(maxlen=self._per_mac)
        else:
            self._log.move_to_end(mac)
        entries.append(Fetch(self._clock(), kind, text))

    def of(self, macs: Iterable[str]) -> list[Fetch]:
        out = [f for mac in macs for f in self._log.get(mac, ())]
        return sorted(out, key=lambda f: f.at)
