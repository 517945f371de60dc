"""Running `bootd serve` in tests: readiness through a real $NOTIFY_SOCKET, bounded waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import REPO

WAIT = 30.0  # upper bound for any single wait; never an assertion on speed


class Notifications:
    """The systemd side of sd_notify: collects every datagram the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(WAIT)
        self.seen: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None) -> dict[str, str]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            data = self.sock.recv(4096).decode()
            msg = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.seen.append(msg)
            if key in msg and (value is None or msg[key] == value):
                return msg
        raise AssertionError(f"no {key}={value} notification; saw {self.seen}")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def env_for(notify: Notifications, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=str(notify.path), **extra)
    return env


class Bootd:
    """bootd serve, optionally inside a lab namespace (prefix = ["ip", "netns", "exec", ns])."""

    def __init__(self, config: Path, prefix: list[str] | None = None) -> None:
        self.config = config
        self.prefix = prefix or []
        self.notify = Notifications(config.with_name(f"notify-{time.monotonic_ns()}.sock"))
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    def start(self) -> Bootd:
        self.proc = subprocess.Popen([*self.prefix, sys.executable, "-m", "bootd", "serve", "--config",
                                      str(self.config)], cwd=REPO, env=env_for(self.notify),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            self.notify.wait_for("READY", "1")
        except (AssertionError, TimeoutError):
            self.stop()
            raise AssertionError(f"bootd did not become ready:\n{self.stderr}") from None
        return self

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=WAIT)
        self.stderr += err
        return self.proc.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        self.notify.close()

    def cli(self, *argv: str) -> Any:
        res = subprocess.run([sys.executable, "-m", "bootd", *argv, "--config", str(self.config)],
                             cwd=REPO, capture_output=True, text=True, timeout=WAIT, check=True)
        return res.stdout
