"""Small pieces: names and MACs, secret files, log lines, sd_notify."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootd.errors import InvalidInput
from bootd.keys import SecretBox, SecretError, api_token, read_or_create
from bootd.logs import LineFormatter
from bootd.model.names import dns_domain, mac_address, node_name
from bootd.sdnotify import Notifier


@pytest.mark.parametrize("text", ["52:54:00:AB:cd:01", "52-54-00-ab-cd-01", "5254.00ab.cd01",
                                  "525400abcd01", " 52:54:00:ab:cd:01 "])
def test_mac_forms(text: str) -> None:
    assert mac_address(text) == "52:54:00:ab:cd:01"


@pytest.mark.parametrize("text", ["", "52:54:00:ab:cd", "52:54:00:ab:cd:01:02", "52:54-00:ab:cd:01",
                                  "5254:00ab:cd01", "52:54:00:ab:cd:0g", "52:54:00:ab:cd:1"])
def test_bad_macs(text: str) -> None:
    with pytest.raises(InvalidInput):
        mac_address(text)


@given(st.binary(min_size=6, max_size=6))
def test_any_six_bytes_round_trip_through_every_mac_form(raw: bytes) -> None:
    canon = ":".join(f"{b:02x}" for b in raw)
    for text in (canon, canon.replace(":", "-").upper(), raw.hex(),
                 ".".join(raw.hex()[i:i + 4] for i in (0, 4, 8))):
        assert mac_address(text) == canon


@given(st.text(max_size=40))
def test_names_are_valid_or_refused(text: str) -> None:
    try:
        name = node_name(text)
    except InvalidInput:
        return
    assert 1 <= len(name) <= 63
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert not name.startswith("-")
    assert not name.endswith("-")


def test_domain() -> None:
    assert dns_domain("Rack1.Example.") == "rack1.example"
    for bad in ("", ".", "a..b", "-a.b", "a_b.c", "x" * 64 + ".com"):
        with pytest.raises(InvalidInput):
            dns_domain(bad)


def test_secret_files_are_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "api-token"
    token = api_token(path)
    assert len(token) >= 40
    assert api_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_racing_creators_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "key"
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda i=i: results.append(read_or_create(path, b"v%d" % i)))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary files left


def test_secret_box(tmp_path: Path) -> None:
    box = SecretBox.from_file(tmp_path / "key")
    sealed = box.seal("pässword")
    assert b"p\xc3\xa4ssword" not in sealed
    assert box.open(sealed) == "pässword"
    other = SecretBox.from_file(tmp_path / "other")
    with pytest.raises(SecretError, match="does not decrypt"):
        other.open(sealed)
    (tmp_path / "bad").write_text("not a key")
    with pytest.raises(SecretError, match="corrupt"):
        SecretBox.from_file(tmp_path / "bad")


def _record(msg: str, **ctx: object) -> logging.LogRecord:
    rec = logging.LogRecord("bootd.dhcp", logging.WARNING, __file__, 1, msg, (), None)
    rec.ctx = ctx
    return rec


def test_log_lines_are_single_lines_with_context() -> None:
    fmt = LineFormatter(journald=True)
    line = fmt.format(_record("dropped packet", mac="52:54:00:00:00:01",
                              hostname="evil\nFAKE LOG LINE", reason="bad option 53", node=None))
    assert line == ('<4>dhcp: dropped packet mac=52:54:00:00:00:01 hostname="evil\\x0aFAKE LOG LINE" '
                    'reason="bad option 53"')
    plain = LineFormatter(journald=False).format(_record("x\x1b[31m"))
    assert plain.endswith("warning dhcp: x\\x1b[31m")
    assert "\n" not in plain


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert n.enabled
        assert n.watchdog_interval == 2.0
        n.ready("serving http")
        msg = sock.recv(1024).decode().splitlines()
        assert msg == ["READY=1", "STATUS=serving http", f"MAINPID={os.getpid()}"]


def test_notifier_abstract_socket_and_watchdog_pid() -> None:
    name = f"bootd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert sock.recv(1024) == b"STOPPING=1\nSTATUS=stopping"
    assert Notifier({"WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}).watchdog_interval is None
    off = Notifier({})
    assert not off.enabled
    off.ready("x")  # no socket: a no-op, not an error


def test_notifier_survives_a_vanished_socket(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready("x")
    assert "cannot notify systemd" in caplog.text
