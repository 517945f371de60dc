"""systemd readiness and watchdog notifications (sd_notify(3), without libsystemd).

The protocol is one datagram of newline-separated KEY=VALUE pairs to the
AF_UNIX socket named in $NOTIFY_SOCKET; a name starting with "@" is in the
abstract namespace. With WATCHDOG_USEC set (and WATCHDOG_PID absent or ours),
systemd expects WATCHDOG=1 at least that often; we send it at half the period,
as sd_watchdog_enabled(3) recommends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("bootd.sdnotify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | None = env.get("NOTIFY_SOCKET") or None
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> None:
        if self._address is None:
            return
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            log.warning("cannot notify systemd", extra={"ctx": {"reason": exc.strerror}})

    def ready(self, status: str) -> None:
        self.notify(ready=1, status=status, mainpid=os.getpid())

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (>= 253, Type=notify-reload) match the reload.
        self.notify(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.notify(stopping=1, status="stopping")

    async def watchdog(self) -> None:
        """Runs for the life of the daemon; pings only while the event loop turns."""
        if self.watchdog_interval is None or self._address is None:
            await asyncio.Event().wait()
            return
        while True:
            self.notify(watchdog=1)
            await asyncio.sleep(self.watchdog_interval)
