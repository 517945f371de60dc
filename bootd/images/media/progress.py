"""Progress of a long copy or download, for a person or for a log.

On a terminal: one line redrawn in place (carriage return), at most ten times a
second: a bar, the percentage, bytes done of the total and the rate over the
whole run so far. Anywhere else (a pipe, a journal, a CI log) redrawing makes
a mess, so there are plain lines instead: one at the start, one each time
another tenth is done or 10 s passed, one at the end. The clock is passed in,
so both forms are tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR = 30
REDRAW = 0.1      # seconds between terminal redraws
LINE_EVERY = 10.0  # seconds between plain lines, at the latest


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def bar_line(what: str, done: int, total: int, rate: float) -> str:
    """`what [#####.....]  45% 1.2 GiB / 2.6 GiB  98.3 MiB/s` (total 0: no bar)."""
    share = done / total if total else 1.0
    filled = min(BAR, int(share * BAR))
    return (f"{what} [{'#' * filled}{'.' * (BAR - filled)}] {share * 100:3.0f}% "
            f"{human(done)} / {human(total)}  {human(rate)}/s")


def plain_line(what: str, done: int, total: int, rate: float) -> str:
    share = done / total if total else 1.0
    return f"{what}: {human(done)} of {human(total)} ({share * 100:.0f}%), {human(rate)}/s"


class Progress:
    """Counts bytes of one step (`begin`, `advance`..., `end`) and shows them."""

    def __init__(self, out: TextIO, terminal: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.terminal, self.clock = out, terminal, clock
        self.what, self.total, self.done = "", 0, 0
        self.started = self.shown_at = 0.0
        self.shown_tenth, self.shown_done = -1, -1
        self.skipped = 0  # bytes already there from an earlier run: not in the rate

    def begin(self, what: str, total: int) -> None:
        self.what, self.total, self.done, self.skipped = what, total, 0, 0
        self.started = self.clock()
        self.shown_tenth = -1
        self._show(force=True)

    def skip(self, n: int) -> None:
        """Bytes found done by an earlier run: they count toward the total, not the rate."""
        self.done += n
        self.skipped += n
        self._show()

    def advance(self, n: int) -> None:
        self.done += n
        self._show()

    def end(self) -> None:
        if self.terminal or self.shown_done != self.done:
            self._show(force=True)
        if self.terminal:
            self.out.write("\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A line of its own (a resumed file, a checksum verified)."""
        if self.terminal:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return (self.done - self.skipped) / elapsed if elapsed > 0 else 0.0

    def _show(self, force: bool = False) -> None:
        now = self.clock()
        if self.terminal:
            if force or now - self.shown_at >= REDRAW:
                self.out.write("\r" + bar_line(self.what, self.done, self.total, self.rate()) + "\033[K")
                self.out.flush()
                self.shown_at = now
            return
        tenth = self.done * 10 // self.total if self.total else 10
        if force or tenth > self.shown_tenth or now - self.shown_at >= LINE_EVERY:
            self.out.write(plain_line(self.what, self.done, self.total, self.rate()) + "\n")
            self.out.flush()
            self.shown_at, self.shown_tenth, self.shown_done = now, tenth, self.done
