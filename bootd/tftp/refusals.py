"""Why a TFTP request was refused: a small fixed set of reasons, counted and logged sparingly.

Hostile or broken peers can send a refusal-worthy request thousands of times
a second, from spoofed addresses and with file names and modes of their own
choosing. So the log is rate-limited per reason (this enum), never per peer
or per message text: a flood writes at most one line per reason per
interval, whatever it varies, and each line says how many refusals of that
reason went unlogged since the one before. Every refusal is still counted.
Failed transfers get a small budget of lines per interval for the same reason.
The message sent to the client and logged may quote the client's own text
(the log escapes control characters); it never decides what is remembered.
"""

from __future__ import annotations

import enum

from bootd.tftp.packet import ErrorCode

LOG_INTERVAL = 60.0
# Failed transfers are worth a line each (a client that went away mid-file), but a
# flood of requests from closed or spoofed ports fails transfers as fast as it
# starts them: at most this many such lines per LOG_INTERVAL, then a count.
FAILED_LINES = 20


class Reason(enum.Enum):
    """A refusal's reason: the TFTP error code it answers with and whether it is routine."""

    MALFORMED = ("malformed", ErrorCode.ILLEGAL_OPERATION, False)
    READ_ONLY = ("read-only", ErrorCode.ACCESS_VIOLATION, False)
    BAD_MODE = ("bad-mode", ErrorCode.ILLEGAL_OPERATION, False)
    BAD_NAME = ("bad-name", ErrorCode.ACCESS_VIOLATION, False)
    OUTSIDE_ROOT = ("outside-root", ErrorCode.ACCESS_VIOLATION, False)
    NOT_REGULAR = ("not-regular", ErrorCode.ACCESS_VIOLATION, False)
    REFUSED = ("refused", ErrorCode.ACCESS_VIOLATION, False)
    # PXE clients probe names that are not there (pxelinux walks six config names): routine.
    NOT_FOUND = ("not-found", ErrorCode.FILE_NOT_FOUND, True)
    TOO_LARGE = ("too-large", ErrorCode.NOT_DEFINED, False)
    BUSY = ("busy", ErrorCode.NOT_DEFINED, False)
    CLIENT_LIMIT = ("client-limit", ErrorCode.NOT_DEFINED, False)
    NO_SOCKET = ("no-socket", ErrorCode.NOT_DEFINED, False)

    def __init__(self, label: str, error: ErrorCode, routine: bool) -> None:
        self.label, self.error, self.routine = label, error, routine


class RefusalLog:
    """Counts every refusal; says when one should be logged (once per reason per interval)."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.counts: dict[Reason, int] = dict.fromkeys(Reason, 0)
        self._last: dict[Reason, float] = {}
        self._unlogged: dict[Reason, int] = dict.fromkeys(Reason, 0)

    def __call__(self, now: float, reason: Reason) -> int | None:
        """Count one refusal; the number left unlogged before it if it is to be logged, else None."""
        self.counts[reason] += 1
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._unlogged[reason] += 1
            return None
        self._last[reason] = now
        unlogged, self._unlogged[reason] = self._unlogged[reason], 0
        return unlogged

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class LineBudget:
    """At most `lines` log lines per interval; says how many were held back before the next one."""

    def __init__(self, lines: int = FAILED_LINES, interval: float = LOG_INTERVAL) -> None:
        self.lines, self.interval = lines, interval
        self._start = float("-inf")
        self._used = 0
        self._unlogged = 0

    def __call__(self, now: float) -> int | None:
        if now - self._start >= self.interval:
            self._start, self._used = now, 0
        if self._used >= self.lines:
            self._unlogged += 1
            return None
        self._used += 1
        unlogged, self._unlogged = self._unlogged, 0
        return unlogged
