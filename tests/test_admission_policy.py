"""Admission at boot time, through the policy: the iPXE wait script and the real one
after a slot frees, a restart keeping the queue, a silent node losing its place, the
operator bypassing the queue, and the pxelinux/GRUB wait configs over real TFTP
(loopback, an unprivileged port)."""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from conftest import REPO, free_port_udp, loopback_config

from bootd.config import Config, parse_config
from bootd.config.sections import WavesConfig
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.feed import ChangeFeed
from bootd.fleet.admission import Admissions
from bootd.keys import SecretBox
from bootd.lifecycle import Lifecycle
from bootd.model.records import NewNode
from bootd.model.states import NodeState as S
from bootd.policy import NotLeaseHolder, Policy
from bootd.tftp import packet as p
from bootd.tftp.server import TftpService

sys.path.insert(0, str(REPO))
from bench.fleet.machine import ScriptKind, parse_script  # the simulator's own parser

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOST = "127.0.0.1"


def wait_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("# bootd-wait")]


def mac(i: int) -> str:
    return f"52:54:00:00:10:{i:02x}"


def ip(i: int) -> IPv4Address:
    return IPv4Address(f"127.0.1.{i + 1}")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.now.timestamp()


@dataclass
class Site:
    config: Config
    repo: Repository
    clock: Clock
    feed: ChangeFeed
    lifecycle: Lifecycle
    policy: Policy

    def new_policy(self) -> Policy:
        """Another daemon process over the same database: nothing in memory."""
        policy = Policy(self.config, self.repo, self.feed, link_address=lambda _ip: None,
                        admissions=Admissions(self.config, self.repo, feed=self.feed, clock=self.clock,
                                                   monotonic=self.clock.monotonic))
        for i in range(8):
            policy.leased(mac(i), ip(i))
        return policy

    async def script(self, i: int, policy: Policy | None = None, **kw: bool) -> str:
        return await (policy or self.policy).boot_script("ipxe", mac(i), ip(i), **kw)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    config = parse_config(loopback_config(tmp_path / "state", 8080))
    config = replace(config, waves=WavesConfig(max_global=1, max_per_rack=0, max_per_daemon=0, wait=15,
                                               forget_after=120))
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'bootd.db'}")
    clock, feed = Clock(), ChangeFeed()
    repo = Repository(engine, SecretBox.from_file(tmp_path / "key"), clock=clock)
    lifecycle = Lifecycle(config, repo, clock=clock, feed=feed)
    for i in range(4):
        await repo.add_node(NewNode(f"n{i}", (mac(i),), rack="r1", state=S.HARDWARE_INSTALLING), actor="t")
        clock.now += timedelta(seconds=1)
    site = Site(config, repo, clock, feed, lifecycle, Policy(config))
    site.policy = site.new_policy()
    await site.policy.refresh(force=True)
    try:
        yield site
    finally:
        await site.policy.close()
        await engine.dispose()


async def test_full_limit_serves_the_wait_script_then_the_real_one(site: Site) -> None:
    real = await site.script(0)
    assert parse_script(real).kind is ScriptKind.DISCOVERY
    waiting = await site.script(1)
    token = await site.repo.node_token("n1")
    assert token not in waiting  # a wait script carries no token
    parsed = parse_script(waiting)
    assert (parsed.kind, parsed.wait, parsed.place, parsed.of) == (ScriptKind.WAIT, 15, 1, 1)
    lines = waiting.splitlines()
    assert lines[0] == "#!ipxe"
    assert wait_lines(waiting) == ["# bootd-wait seconds=15 place=1 of=1"]
    assert "echo bootd: n1 is waiting for an install slot: place 1 of 1" in lines
    assert "echo bootd: all 1 install slots are taken" in lines
    assert "sleep 15" in lines
    assert f"chain --replace --autofree http://127.0.0.1:8080/boot/ipxe?mac={mac(1)} || reboot" in lines
    second = parse_script(await site.script(2))
    assert (second.place, second.of) == (2, 2)
    # n0 finishes its hardware install: the head of the queue gets its real script.
    await site.lifecycle.report("n0", S.HARDWARE_INSTALLED)
    await site.policy.refresh(force=True)
    assert parse_script(await site.script(2)).kind is ScriptKind.WAIT  # no overtaking
    after = await site.script(1)
    assert parse_script(after).kind is ScriptKind.DISCOVERY and token in after


async def test_an_admitted_node_asks_the_database_once(site: Site) -> None:
    admissions = site.policy.admissions
    assert admissions is not None
    await site.script(0)
    asks = admissions.asks
    for _ in range(3):
        assert parse_script(await site.script(0)).kind is ScriptKind.DISCOVERY
    assert admissions.asks == asks
    # A waiting node: its first ask writes its place (without the lock: the board says
    # it waits); the next ones are answered from the board, its stored ask refreshed
    # every 60 s (forget_after/2). None takes the lock: none may take a slot.
    await site.script(1)
    assert (admissions.asks, admissions.enqueued) == (asks, 1)
    for _ in range(8):  # 120 s, asking every 15 s
        site.clock.now += timedelta(seconds=15)
        assert parse_script(await site.script(1)).kind is ScriptKind.WAIT
    assert (admissions.asks, admissions.touches) == (asks, 2)


async def test_a_restart_keeps_the_queue_order(site: Site) -> None:
    await site.script(0)
    for i in (2, 1, 3):
        assert parse_script(await site.script(i)).kind is ScriptKind.WAIT
    restarted = site.new_policy()
    await restarted.refresh(force=True)
    try:
        places = [parse_script(await site.script(i, restarted)) for i in (3, 2, 1)]
        assert [(s.place, s.of) for s in places] == [(3, 3), (2, 3), (1, 3)]
    finally:
        await restarted.close()


async def test_a_node_that_stops_asking_loses_its_place(site: Site) -> None:
    await site.script(0)
    assert parse_script(await site.script(1)).place == 1
    for _ in range(10):  # n2 asks every 15 s, n1 went silent
        site.clock.now += timedelta(seconds=15)
        last = parse_script(await site.script(2))
    assert (last.place, last.of) == (1, 1)
    back = parse_script(await site.script(1))
    assert (back.place, back.of) == (2, 2)


async def test_operator_and_strangers_do_not_queue(site: Site) -> None:
    admissions = site.policy.admissions
    assert admissions is not None
    await site.script(0)
    asks = admissions.asks
    assert parse_script(await site.script(1, operator=True)).kind is ScriptKind.DISCOVERY
    with pytest.raises(NotLeaseHolder):  # refused as before, without a transaction
        await site.policy.boot_script("ipxe", mac(1), IPv4Address("127.0.9.9"))
    assert admissions.asks == asks


async def test_local_boot_states_never_queue(site: Site) -> None:
    await site.repo.add_node(NewNode("n7", (mac(7),), rack="r1", state=S.READY), actor="t")
    await site.policy.refresh(force=True)
    await site.script(0)
    assert parse_script(await site.script(7)).kind is ScriptKind.LOCAL


# -- TFTP: pxelinux and GRUB wait configs, over a real TFTP service --------------------------


async def tftp_read(port: int, name: str, source: str) -> bytes:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    loop = asyncio.get_running_loop()
    try:
        sock.sendto(p.request(p.Opcode.RRQ, name), (HOST, port))
        out = b""
        while True:
            raw, peer = await asyncio.wait_for(loop.sock_recvfrom(sock, 70000), 10.0)
            packet = p.parse(raw)
            assert isinstance(packet, p.Data), packet
            out += packet.data
            sock.sendto(p.ack(packet.block), peer)
            if len(packet.data) < 512:
                return out
    finally:
        sock.close()


async def test_pxelinux_and_grub_wait_configs_over_tftp(site: Site, tmp_path: Path) -> None:
    config = parse_config(loopback_config(tmp_path / "state", 8080) + textwrap.dedent(f"""\
        [tftp]
        port = {free_port_udp()}
        """))
    config = replace(config, services=replace(config.services, tftp=True), waves=site.config.waves)
    (config.tftp_root).mkdir(parents=True, exist_ok=True)
    service = TftpService(config, site.policy, config.tftp_root)
    await service.start()
    try:
        port = config.tftp.port
        await site.script(0)  # n0 holds the one slot
        # The TFTP client's address must be the lease holder's: n1 and n2 ask from theirs.
        leaf = "01-" + mac(1).replace(":", "-")
        pxe = (await tftp_read(port, f"pxelinux.cfg/{leaf}", str(ip(1)))).decode()
        lines = pxe.splitlines()
        assert wait_lines(pxe) == ["# bootd-wait seconds=15 place=1 of=1"]
        assert "SAY bootd: n1 is waiting for an install slot: place 1 of 1" in lines
        assert {"DEFAULT wait", "PROMPT 1", "TIMEOUT 150", "ONTIMEOUT wait", "  COM32 reboot.c32"} <= {
            *lines}
        assert "KERNEL" not in pxe and await site.repo.node_token("n1") not in pxe
        gleaf = "grub/grub.cfg-01-" + mac(2).replace(":", "-")
        grub = (await tftp_read(port, gleaf, str(ip(2)))).decode()
        lines = [ln.strip() for ln in grub.splitlines()]
        assert wait_lines(grub) == ["# bootd-wait seconds=15 place=2 of=2"]
        assert 'echo "bootd: n2 is waiting for an install slot: place 2 of 2"' in lines
        assert {"sleep 15", f"configfile /{gleaf}", "reboot"} <= set(lines)
        assert "linux " not in grub
        # The slot frees: n1's next pxelinux fetch is its real config.
        await site.lifecycle.report("n0", S.HARDWARE_INSTALLED)
        await site.policy.refresh(force=True)
        real = (await tftp_read(port, f"pxelinux.cfg/{leaf}", str(ip(1)))).decode()
        assert "KERNEL /images/discovery/vmlinuz" in real and "bootd-wait" not in real
    finally:
        await service.stop()
