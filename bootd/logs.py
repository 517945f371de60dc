"""One line per event, with node/MAC context, readable in journald and a terminal.

Call sites pass context as fields: `log.info("lease bound", extra=kv(mac=m, ip=ip))`
renders `lease bound mac=aa:.. ip=198.18.0.5`. Anything that came off the wire
may hold newlines or escape codes, so control characters are escaped: one
event is always one line. Under systemd (JOURNAL_STREAM set) each line starts
with its syslog priority, `<3>`..`<7>` (sd-daemon(3)), and carries no timestamp,
since journald adds its own.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def kv(**fields: object) -> dict[str, Any]:
    return {"ctx": fields}


def _clean(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _value(value: object) -> str:
    text = _clean(str(value))
    return f'"{text}"' if (" " in text or not text or '"' in text) else text


class LineFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        parts = [_clean(record.getMessage())]
        ctx = getattr(record, "ctx", None)
        if isinstance(ctx, dict):
            parts += [f"{k}={_value(v)}" for k, v in ctx.items() if v is not None]
        if record.exc_info and record.exc_info[1] is not None:
            # Unexpected exceptions only (a bug): keep the reason on the same line.
            exc = record.exc_info[1]
            parts.append(f"error={_value(f'{type(exc).__name__}: {exc}')}")
        body = " ".join(parts)
        name = record.name.removeprefix("bootd.")
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{name}: {body}"
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        return f"{stamp} {record.levelname.lower():7} {name}: {body}"


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # aiohttp's access log is one line per request on the hot path; keep it at debug.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger("bootd").setLevel(level.upper())
    logging.getLogger().setLevel(logging.WARNING if level != "debug" else logging.DEBUG)


class Throttle:
    """Whether to log an event again: once per key per interval (all are still counted).

    Hostile or broken peers can send a refusal-worthy packet thousands of times
    a second; the operator needs to know it happens and why, not each time.
    """

    def __init__(self, interval: float = 60.0, keys: int = 10_000) -> None:
        self.interval, self.keys = interval, keys
        self._last: dict[tuple[str, ...], float] = {}

    def __call__(self, now: float, *key: str) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= self.keys:
            self._last.clear()
        self._last[key] = now
        return True
