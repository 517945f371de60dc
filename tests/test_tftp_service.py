"""The TFTP service on loopback (an unprivileged port): the listener's limits, refusals and names.

A fake policy implements the one method TFTP asks (TftpPolicy); clients are
small raw-socket readers. Waits are bounded; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port_udp

from bootd.config import load_config
from bootd.errors import ConfigError
from bootd.tftp import packet as p
from bootd.tftp.cache import netascii
from bootd.tftp.refusals import FAILED_LINES, Reason
from bootd.tftp.server import TftpService

WAIT = 10.0
HOST = "127.0.0.1"


class FakePolicy:
    """Generates pxelinux configs; records every path it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, IPv4Address]] = []
        self.fetches: list[tuple[IPv4Address | None, str, str]] = []

    def fetched(self, peer: IPv4Address | None, kind: str, detail: str) -> None:
        self.fetches.append((peer, kind, detail))

    async def tftp_file(self, path: str, peer: IPv4Address) -> bytes | None:
        self.asked.append((path, peer))
        if path.startswith("pxelinux.cfg/01-"):
            return f"# for {path}\nDEFAULT local\n".encode()
        return None


Start = Callable[..., Coroutine[Any, Any, TftpService]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    started: list[TftpService] = []

    async def start(extra: str = "", policy: FakePolicy | None = None) -> TftpService:
        root = tmp_path / "state" / "tftp"
        root.mkdir(parents=True, exist_ok=True)
        (root / "undionly.kpxe").write_bytes(bytes(i % 253 for i in range(70_001)))
        (root / "text.txt").write_bytes(b"one\ntwo\r\nbare cr\rend\n" * 100)
        config = tmp_path / "bootd.toml"
        config.write_text(textwrap.dedent(f"""\
            [server]
            admin_address = "{HOST}"
            interfaces = ["lo"]
            state_dir = "{tmp_path / 'state'}"
            [services]
            dhcp = false
            dns = false
            http = false
            [tftp]
            port = {free_port_udp()}
            """) + textwrap.dedent(extra))
        service = TftpService(load_config(config), policy or FakePolicy())
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


def client(source: str = HOST) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    return sock


async def receive(sock: socket.socket) -> tuple[p.Packet, tuple[str, int]]:
    data, peer = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sock, 70000), WAIT)
    return p.parse(data), peer


async def ask(port: int, raw: bytes, source: str = HOST) -> tuple[socket.socket, p.Packet, tuple[str, int]]:
    """Send one request; the socket (kept open: the transfer stays alive) and the first answer."""
    sock = client(source)
    sock.sendto(raw, (HOST, port))
    first, peer = await receive(sock)
    return sock, first, peer


async def settle(service: TftpService) -> None:
    """Wait (bounded) until no transfer runs or loads: a client's last ACK is processed after it returns."""
    for _ in range(200):
        if not service.transfers and not service.tables()["pending"]:
            return
        await asyncio.sleep(0.05)


async def caught_up(service: TftpService, requests: int) -> None:
    for _ in range(500):
        if service.counters["requests"] >= requests:
            return
        await asyncio.sleep(0.002)


async def fetch(port: int, name: str, mode: str = "octet", options: dict[str, str] | None = None,
                source: str = HOST) -> tuple[dict[str, str], bytes]:
    """A whole read: (the OACK's options, the content)."""
    sock, packet, peer = await ask(port, p.request(p.Opcode.RRQ, name, mode, options), source)
    with sock:
        oack: dict[str, str] = {}
        if isinstance(packet, p.OAck):
            oack = packet.options
            sock.sendto(p.ack(0), peer)
            packet, _ = await receive(sock)
        blksize, got, expected = int(oack.get("blksize", 512)), bytearray(), 1
        while True:
            assert isinstance(packet, p.Data), packet
            if packet.block == expected & 0xFFFF:
                got += packet.data
                expected += 1
            sock.sendto(p.ack(packet.block), peer)
            if len(packet.data) < blksize:
                return oack, bytes(got)
            packet, _ = await receive(sock)


async def test_policy_and_cache_get_the_name_cleaned_once(start: Start) -> None:
    policy = FakePolicy()
    service = await start(policy=policy)
    _, text = await fetch(service.port, "\\pxelinux.cfg\\01-52-54-00-12-34-56")
    _, loader = await fetch(service.port, "//undionly.kpxe")
    assert [path for path, _ in policy.asked] == ["pxelinux.cfg/01-52-54-00-12-34-56", "undionly.kpxe"]
    assert text == b"# for pxelinux.cfg/01-52-54-00-12-34-56\nDEFAULT local\n"
    assert loader == (service.files.root / "undionly.kpxe").read_bytes()
    # A hostile name never reaches the policy.
    sock, answer, _ = await ask(service.port, p.request(p.Opcode.RRQ, "pxelinux.cfg/../x"))
    sock.close()
    assert answer == p.Error(p.ErrorCode.ACCESS_VIOLATION, "'.' or '..' in the file name")
    assert len(policy.asked) == 2
    # Each finished transfer is told to the policy (the machine's recent activity).
    done = f"undionly.kpxe: complete, {len(loader)} bytes"
    assert (IPv4Address("127.0.0.1"), "tftp", done) in policy.fetches


async def test_netascii_with_tsize_sends_the_converted_size(start: Start) -> None:
    service = await start()
    text = (service.files.root / "text.txt").read_bytes()
    oack, got = await fetch(service.port, "text.txt", "netascii", {"tsize": "0", "blksize": "100"})
    assert got == netascii(text)
    assert oack["tsize"] == str(len(netascii(text)))
    # The second netascii transfer is served from the cached converted form.
    _, again = await fetch(service.port, "text.txt", "netascii")
    assert again == got
    assert service.tables()["cache_bytes"] == len(got)


async def test_client_timeout_option_is_clamped(start: Start) -> None:
    # timeout=255 held a transfer slot (retries + 1) x 255 s, 25 minutes (issue 11, 3.4).
    service = await start("max_timeout = 5\n")
    sock, long, _ = await ask(service.port, p.request(p.Opcode.RRQ, "undionly.kpxe", "octet",
                                                      {"timeout": "255", "blksize": "1024"}))
    sock.close()
    assert long == p.OAck({"blksize": "1024"})  # left out: RFC 2349 lets us echo or omit, not lower
    sock, short, _ = await ask(service.port, p.request(p.Opcode.RRQ, "undionly.kpxe", "octet",
                                                       {"timeout": "3"}))
    sock.close()
    assert short == p.OAck({"timeout": "3"})


async def test_transfers_per_client_are_limited(start: Start) -> None:
    service = await start("max_per_client = 2\n")
    rrq = p.request(p.Opcode.RRQ, "undionly.kpxe")
    held = []
    for _ in range(2):
        sock, first, _ = await ask(service.port, rrq)  # DATA 1, never acknowledged: the transfer stays
        held.append(sock)
        assert first == p.Data(1, (service.files.root / "undionly.kpxe").read_bytes()[:512])
    sock, third, peer = await ask(service.port, rrq)
    sock.close()
    assert isinstance(third, p.Error) and third.code == p.ErrorCode.NOT_DEFINED
    assert "too many transfers from 127.0.0.1" in third.message
    assert peer[1] != service.port
    # Another client is served meanwhile; the limited one again once its transfers end.
    _, other = await fetch(service.port, "undionly.kpxe", source="127.0.0.2")
    assert len(other) == 70_001
    for sock in held:
        sock.close()  # ICMP port unreachable ends both transfers
    await settle(service)
    _, again = await fetch(service.port, "undionly.kpxe")
    assert len(again) == 70_001
    await settle(service)
    assert service.refusals.counts[Reason.CLIENT_LIMIT] == 1
    assert service.tables()["per_client"] == 0


async def read_on(sock: socket.socket, port: int, rrq: bytes) -> bytes:
    """A whole lockstep read (no options) from one client socket; its content."""
    sock.sendto(rrq, (HOST, port))
    got = bytearray()
    while True:
        packet, peer = await receive(sock)
        assert isinstance(packet, p.Data), packet
        got += packet.data
        sock.sendto(p.ack(packet.block), peer)
        if len(packet.data) < 512:
            return bytes(got)


async def test_a_request_repeated_from_the_same_port_is_served_at_once(
        start: Start, caplog: pytest.LogCaptureFixture) -> None:
    """A new client that drew the port of a transfer that just completed, with the same
    request (bench/tftp: a few in each run of 500 atftp at once), gets its file now, not
    after its retransmission timeout; a repeat that nobody takes ends as declined, quietly."""
    service = await start()
    rrq = p.request(p.Opcode.RRQ, "undionly.kpxe")
    content = (service.files.root / "undionly.kpxe").read_bytes()
    with client() as sock:
        assert await read_on(sock, service.port, rrq) == content
        await settle(service)
        assert service.counters["complete"] == 1
        assert await read_on(sock, service.port, rrq) == content  # within STALE_REQUEST_WINDOW
        await settle(service)
        assert service.counters["complete"] == 2
        # The old client's late retransmission: its port closes without taking the transfer.
        caplog.set_level(logging.DEBUG, logger="bootd.tftp")
        sock.sendto(rrq, (HOST, service.port))
        first, _ = await receive(sock)
        assert first == p.Data(1, content[:512])
    await settle(service)
    counters = service.counters
    assert (counters["complete"], counters["declined"], counters["failed"]) == (2, 1, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert service.tables()["per_client"] == 0


async def test_refusals_are_logged_once_per_reason_whatever_the_peer_chose(
        start: Start, caplog: pytest.LogCaptureFixture) -> None:
    service = await start()
    caplog.set_level(logging.INFO, logger="bootd.tftp")
    socks = [client(f"127.0.0.{1 + i % 5}") for i in range(20)]
    for i in range(200):
        # The old throttle keyed on (peer, message): a mode of the attacker's choosing each time.
        socks[i % 20].sendto(p.request(p.Opcode.RRQ, "f", f"evil-{i}\n"), (HOST, service.port))
        socks[i % 20].sendto(p.request(p.Opcode.WRQ, f"name-{i}"), (HOST, service.port))
        if i % 10 == 9:  # let the service read them all: the socket buffer would drop a burst
            await caught_up(service, 2 * (i + 1))
    for sock in socks:
        sock.close()
    lines = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert service.refusals.counts[Reason.BAD_MODE] == 200
    assert service.refusals.counts[Reason.READ_ONLY] == 200
    assert sorted(r.ctx["why"] for r in lines) == ["bad-mode", "read-only"]  # type: ignore[attr-defined]


def hostile_rrq(rng: random.Random) -> bytes:
    """A request of random shape: names, modes and options of an attacker's choosing."""
    name = rng.choice([
        "undionly.kpxe", "pxelinux.cfg/01-" + "-".join(f"{rng.randrange(256):02x}" for _ in range(6)),
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz/._-01\\") for _ in range(rng.randint(0, 300))),
    ])
    mode = rng.choice(["octet", "netascii", "NETASCII", "mail", "x" * rng.randint(0, 40)])
    options = {rng.choice(["blksize", "tsize", "timeout", "windowsize", "junk" * rng.randint(1, 30)]):
               str(rng.randint(-5, 70000)) for _ in range(rng.randint(0, 8))}
    raw = p.request(rng.choice([p.Opcode.RRQ, p.Opcode.RRQ, p.Opcode.WRQ]), name, mode, options)
    if rng.random() < 0.2:  # and some broken outright
        cut = rng.randrange(len(raw))
        raw = raw[:cut] + os.urandom(rng.randint(0, 8)) + raw[cut + 1:]
    return raw


async def test_a_flood_of_hostile_requests_leaves_bounded_tables_and_a_working_server(
        start: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bootd.tftp")
    service = await start("""\
        max_transfers = 64
        max_per_client = 8
        timeout = 0.2
        retries = 2
        """)
    rng = random.Random(11)
    packets = [hostile_rrq(rng) for _ in range(20_000)]
    socks = [client(f"127.0.{i // 250}.{1 + i % 250}") for i in range(500)]
    peak = dict.fromkeys([*service.tables(), "busy"], 0)

    def flood() -> None:
        # From a thread, at the pace the service reads (a burst would mostly be dropped
        # by the kernel, unseen): a batch, then wait until most of it has been read.
        for i, raw in enumerate(packets):
            with contextlib.suppress(BlockingIOError):
                socks[rng.randrange(len(socks))].sendto(raw, (HOST, service.port))
            if i % 100 == 99:
                for _ in range(1000):
                    if service.counters["requests"] >= i - 100:
                        break
                    time.sleep(0.0005)

    async def sample() -> None:
        nonlocal peak
        while True:
            now = service.tables()
            now["busy"] = now["transfers"] + now["pending"]
            peak = {k: max(v, now[k]) for k, v in peak.items()}
            await asyncio.sleep(0.005)

    sampler = asyncio.get_running_loop().create_task(sample())
    await asyncio.to_thread(flood)
    sampler.cancel()
    await asyncio.sleep(0.2)
    for sock in socks:
        sock.close()
    await settle(service)
    tables = service.tables()
    print(f"\nflood: {service.counters}; refusals {service.refusals.total}; peak tables {peak}; "
          f"after {tables}")
    assert service.counters["requests"] > 15_000
    assert peak["busy"] <= 64
    assert peak["tasks"] <= 64
    assert tables["transfers"] == tables["pending"] == tables["tasks"] == tables["per_client"] == 0
    assert tables["recent"] <= 64
    assert tables["cache_bytes"] <= 2 * 70_001 + 4096  # the one real file, both forms
    # Log lines: one per refusal reason, and a bounded number of failed transfers.
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("request refused") <= len(Reason)
    assert lines.count("transfer failed") <= FAILED_LINES
    _, got = await fetch(service.port, "undionly.kpxe", options={"blksize": "1400"})
    assert hashlib.sha256(got).digest() == hashlib.sha256(
        (service.files.root / "undionly.kpxe").read_bytes()).digest()


@pytest.mark.parametrize(("line", "key"), [("max_per_client = 0", "max_per_client"),
                                           ("max_timeout = 256", "max_timeout")])
async def test_limits_out_of_range_name_the_key(start: Start, line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        await start(line + "\n")
