"""`bootd serve` as a process: readiness, watchdog, reload, shutdown, failures.

The daemon runs as a real subprocess with $NOTIFY_SOCKET pointing at a datagram
socket this test owns, exactly as systemd would run it. Waits are bounded
(a hung daemon fails the test) but nothing asserts on how long anything took.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, free_port

from bootd.app import EXIT_FAILURE, Daemon
from bootd.config import Config
from bootd.db.repository import Repository
from bootd.errors import BootdError
from bootd.sdnotify import Notifier
from bootd.service import Service

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


class Served:
    def __init__(self, config: Path, env: dict[str, str], port: int) -> None:
        self.config, self.port = config, port
        self.proc = subprocess.Popen([sys.executable, "-m", "bootd", "serve", "--config", str(config)],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=WAIT)
        return self.proc.returncode, err


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notifications]:
    n = Notifications(tmp_path / "notify.sock")
    yield n
    n.sock.close()


def _env(notify: Notifications, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=str(notify.path), **extra)
    return env


def _listening_addresses(pid: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def test_serve_lifecycle(write_config: Any, notify: Notifications, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(port)
    served = Served(config, _env(notify, WATCHDOG_USEC="200000"), port)
    try:
        ready = notify.wait_for("READY", "1")
        assert ready["STATUS"] == "serving policy, lifecycle, rollouts, http"
        assert ready["MAINPID"] == str(served.proc.pid)
        notify.wait_for("WATCHDOG", "1")
        notify.wait_for("WATCHDOG", "1")

        # Only on loopback: no server of ours on a real interface.
        assert _listening_addresses(served.proc.pid) == [f"127.0.0.1:{port}"]

        assert served.get("/healthz") == (200, {"status": "ok", "version": "0.1.0"})
        status, body = served.get("/api/v1/nodes")
        assert status == 401
        assert "API token" in body["error"]
        token = (tmp_path / "state" / "api-token").read_text().strip()
        assert served.get("/api/v1/nodes", token) == (200, {"nodes": []})

        # SIGHUP with a valid change: reloaded.
        config.write_text(config.read_text().replace("[server]", '[server]\nlog_level = "debug"'))
        served.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
        # SIGHUP with a broken file: the running config stays, and so does the service.
        config.write_text("[server]\nadmin_address = 1\n")
        served.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
        assert served.get("/healthz")[0] == 200
    finally:
        rc, stderr = served.stop()
    assert rc == 0, stderr
    notify.wait_for("STOPPING", "1")
    assert "configuration reloaded" in stderr
    assert "reload failed, keeping the running configuration" in stderr
    assert "server.admin_address: must be a string" in stderr
    assert "Traceback" not in stderr
    # No leftover state: the port is free, SQLite's WAL is checkpointed away, the DB is sound.
    with socket.socket() as s:  # SO_REUSEADDR: TIME_WAIT is fine, a listener is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    state = tmp_path / "state"
    assert sorted(p.name for p in state.iterdir()) == ["api-token", "bootd.db", "secret.key"]
    with sqlite3.connect(state / "bootd.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert oct((state / "bootd.db").stat().st_mode & 0o777) == "0o600"


def test_sigint_also_stops_cleanly(write_config: Any, notify: Notifications) -> None:
    port = free_port()
    served = Served(write_config(port), _env(notify), port)
    notify.wait_for("READY", "1")
    served.proc.send_signal(signal.SIGINT)
    rc, stderr = served.stop()
    assert rc == 0
    assert "shutting down signal=SIGINT" in stderr


def test_port_in_use_is_one_clear_line(write_config: Any, notify: Notifications) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = Served(write_config(port), _env(notify), port)
        rc, stderr = served.wait()
    assert rc == EXIT_FAILURE
    assert f"HTTP cannot listen on 127.0.0.1:{port}: Address already in use" in stderr
    assert "Traceback" not in stderr
    assert not any(m.get("READY") for m in notify.seen)


def test_bad_config_and_missing_interface_stop_at_start(write_config: Any, notify: Notifications,
                                                         tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nadmin_address = "127.0.0.1"\ninterfaces = ["nosuchif0"]\n')
    served = Served(bad, _env(notify), 0)
    rc, stderr = served.wait()
    assert rc == 2
    assert f"{bad}: server.interfaces[0]: no interface named 'nosuchif0' on this host" in stderr
    assert "Traceback" not in stderr


class _Failing:
    name = "failing"

    def __init__(self) -> None:
        self.stopped = False

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        raise BootdError("socket went away")

    async def stop(self) -> None:
        self.stopped = True

    def reconfigure(self, config: Config) -> None:
        pass


class _Healthy(_Failing):
    name = "healthy"

    async def run(self) -> None:
        import asyncio

        await asyncio.Event().wait()


async def test_first_fatal_error_stops_every_service(write_config: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    made: list[_Failing] = []

    def services(config: Config, repo: Repository) -> list[Service]:
        made.extend([_Healthy(), _Failing()])
        return list(made)

    daemon = Daemon(write_config(), notifier=Notifier({}), services=services)
    assert await daemon.run() == EXIT_FAILURE
    assert all(s.stopped for s in made)
    assert "stopping: socket went away" in caplog.text
