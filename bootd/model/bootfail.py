"""Boot-failure reports: what a booting machine's script says when it gives up on a fetch.

The iPXE script (bootd/templates/ipxe.j2) tries each kernel and initrd a few
times; when they all fail it asks, before it reboots,

    GET /boot/failed?mac=MAC&step=kernel&tries=3&errno=0x2d0c613b&url=http://...

and bootd writes one event ("boot-failed") in the log of the node with that
MAC. iPXE can only fetch a URL (its POST needs a build option Debian's does not
have), hence a GET that writes.

The endpoint is unauthenticated and the query is whatever the sender chose, so
everything here is bounded: the MAC must be one; the step is one of a few; the
number of tries has at most three digits; the error is a 32-bit number; the URL
is cut to MAX_URL printable ASCII characters (anything else shown as "?"). A
report never creates a node. Reports are rate-limited per MAC (a token bucket:
a machine in a reboot loop reports once per boot, a few a minute at most) and
overall, before any database read, with the table of MACs bounded. Parsing and limiting are pure (the caller
passes the clock); the lifecycle service writes the event.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from bootd.errors import InvalidInput
from bootd.model.bucket import TokenBucket
from bootd.model.names import mac_address

KIND = "boot-failed"
MAX_URL = 256
_ERRNO = re.compile(r"(0x[0-9a-fA-F]{1,8}|[0-9]{1,10})")
_TRIES = re.compile(r"[0-9]{1,3}")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


class Step(enum.StrEnum):
    """What the script was doing when it gave up."""

    KERNEL = "kernel"
    INITRD = "initrd"
    BOOT = "boot"  # both loaded; the kernel did not start (a corrupt or wrong image)


class Outcome(enum.Enum):
    RECORDED = "recorded"
    UNKNOWN = "unknown"  # no node has that MAC: nothing written, nothing created
    LIMITED = "limited"  # over the per-MAC or overall rate: dropped


@dataclass(frozen=True, slots=True)
class BootFailure:
    mac: str
    step: Step
    url: str = ""  # cleaned and capped
    errno: int | None = None  # iPXE's error number (https://ipxe.org/err/XXXXXXXX)
    tries: int | None = None

    @property
    def message(self) -> str:
        what = f"{self.step.value} {self.url}" if self.url else self.step.value
        tries = "" if self.tries is None else f" ({self.tries} {'try' if self.tries == 1 else 'tries'})"
        if self.errno is None:
            return f"{what} failed{tries}"
        return f"{what} failed{tries}: error {self.errno:#010x} (https://ipxe.org/err/{self.errno:08x})"


def clean_text(text: str, limit: int) -> str:
    """Printable ASCII only (one event is one line, whoever sent it), at most `limit` characters."""
    cleaned = _UNPRINTABLE.sub("?", text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def parse_report(query: Mapping[str, str]) -> BootFailure:
    """A report from its query parameters; InvalidInput names what is wrong."""
    mac = mac_address(query.get("mac", ""))
    step_text = query.get("step", "")
    try:
        step = Step(step_text)
    except ValueError:
        raise InvalidInput(f"step must be one of {', '.join(s.value for s in Step)}, "
                           f"not {clean_text(step_text, 20)!r}") from None
    errno_text = query.get("errno", "")
    errno = None
    if errno_text:
        if not _ERRNO.fullmatch(errno_text):
            raise InvalidInput(f"errno must be a 32-bit number, not {clean_text(errno_text, 20)!r}")
        errno = int(errno_text, 0) if errno_text.startswith("0x") else int(errno_text)
        if errno > 0xFFFFFFFF:
            raise InvalidInput("errno must be a 32-bit number")
    tries_text = query.get("tries", "")
    if tries_text and not _TRIES.fullmatch(tries_text):
        raise InvalidInput(f"tries must be a number below 1000, not {clean_text(tries_text, 20)!r}")
    tries = int(tries_text) if tries_text else None
    return BootFailure(mac, step, clean_text(query.get("url", ""), MAX_URL), errno, tries)


class ReportLimiter:
    """Per MAC: `burst` reports, then one per `per_mac_seconds`; overall: `total_rate`
    a second with a burst of `total_burst`. At most `keys` MACs are remembered; when
    full the table starts over (the overall bucket still holds)."""

    def __init__(self, *, burst: int = 3, per_mac_seconds: float = 60.0, total_rate: float = 10.0,
                 total_burst: int = 100, keys: int = 4096) -> None:
        self.burst, self.rate = float(burst), 1.0 / per_mac_seconds
        self.total_rate, self.total_burst, self.keys = total_rate, float(total_burst), keys
        self._macs: dict[str, TokenBucket] = {}
        self._total: TokenBucket | None = None

    def allow(self, mac: str, now: float) -> bool:
        bucket = self._macs.get(mac)
        if bucket is None:
            if len(self._macs) >= self.keys:
                self._macs.clear()
            bucket = self._macs[mac] = TokenBucket(self.burst, now)
        if not bucket.take(now, self.rate, self.burst):
            return False
        if self._total is None:
            self._total = TokenBucket(self.total_burst, now)
        return self._total.take(now, self.total_rate, self.total_burst)

    def __len__(self) -> int:
        return len(self._macs)
