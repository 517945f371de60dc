"""BMC power and boot control against OpenIPMI's ipmi_sim (checked with ipmitool), the
throttle by counting, and the lifecycle hooks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import loopback_config, move
from ipmi_sim import IpmiSim

from bootd.app import http_app
from bootd.bmc.controller import BmcError, ErrorKind, IpmiController, Outcome, PowerOp
from bootd.bmc.service import PowerService
from bootd.bmc.throttle import KeyedLocks, Throttle
from bootd.cli import main
from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.keys import SecretBox
from bootd.model.lifecycle import Actor
from bootd.model.records import NewNode
from bootd.model.states import NodeState as S

TOKEN = "operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[IpmiSim]]:
    started = [IpmiSim(tmp_path / f"bmc{i}").start() for i in range(3)]
    yield started
    for sim in started:
        sim.stop()


def config_for(tmp: Path) -> Config:
    return parse_config(loopback_config(tmp / "state", 8080, "[bmc]\ncycle_pause = 1\n"))


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


async def add(repo: Repository, name: str, sim: IpmiSim, password: str | None = None) -> None:
    mac = "52:54:00:aa:" + name.encode().hex()[-4:-2].rjust(2, "0") + ":" + name.encode().hex()[-2:]
    await repo.add_node(NewNode(name, (mac,)), actor="t")
    await repo.set_bmc(name, sim.address, sim.user, password or sim.password, actor="t")


async def test_power_operations_seen_by_ipmitool(repo: Repository, sims: list[IpmiSim],
                                                 tmp_path: Path) -> None:
    power = PowerService(config_for(tmp_path), repo)
    for i, sim in enumerate(sims[:2]):
        await add(repo, f"n{i}", sim)
    (status0, status1) = await power.run(PowerOp.STATUS, ["n0", "n1"], actor="test")
    assert (status0.ok, status0.power, status1.power) == (True, "off", "off")
    assert (await power.one(PowerOp.ON, "n0", actor="test")).power == "on"
    assert sims[0].power() == "on" and sims[1].power() == "off"  # only n0's BMC
    assert (await power.one(PowerOp.PXE, "n0", actor="test")).ok
    assert "set boot pxe" in sims[0].calls()
    cycled = await power.one(PowerOp.CYCLE, "n0", actor="test")
    assert cycled.ok and cycled.power == "on"
    calls = sims[0].calls()
    assert calls.index("set power 0") < len(calls) - 1 - calls[::-1].index("set power 1")
    assert (await power.one(PowerOp.OFF, "n0", actor="test")).power == "off"
    assert sims[0].power() == "off"
    node = await repo.get_node("n0")
    assert node.bmc is not None and (node.bmc.reachable, node.bmc.power, node.bmc.last_error) == (
        True, "off", None)
    kinds = [e.message.split(":")[0] for e in await repo.events("n0") if e.kind == "power"]
    assert kinds == ["on", "pxe", "cycle", "off"]  # status reads are not events


async def test_wrong_password_unreachable_and_no_bmc(repo: Repository, sims: list[IpmiSim],
                                                     tmp_path: Path) -> None:
    power = PowerService(config_for(tmp_path), repo)
    await add(repo, "bad", sims[0], password="not-the-password")
    await repo.add_node(NewNode("gone", ("52:54:00:00:00:99",)), actor="t")
    await repo.set_bmc("gone", "127.0.0.1:9", "admin", "secret", actor="t")  # nothing listens
    await repo.add_node(NewNode("none", ("52:54:00:00:00:98",)), actor="t")
    bad, gone, none = await power.run(PowerOp.STATUS, ["bad", "gone", "none"], actor="test")
    assert (bad.ok, bad.kind) == (False, "auth") and "password" in (bad.error or "")
    assert (gone.ok, gone.kind) == (False, "unreachable")
    assert (none.ok, none.kind) == (False, "no-bmc")
    node = await repo.get_node("gone")
    assert node.bmc is not None and node.bmc.reachable is False
    assert "unreachable" in (node.bmc.last_error or "")


async def test_bmc_that_stops_answering_mid_operation(repo: Repository, sims: list[IpmiSim],
                                                      tmp_path: Path) -> None:
    sim = sims[0]
    await add(repo, "n0", sim)
    power = PowerService(parse_config(loopback_config(tmp_path / "state", 8080, "[bmc]\ncycle_pause = 3\n")),
                         repo)
    assert (await power.one(PowerOp.ON, "n0", actor="test")).ok
    # Stop the BMC once the cycle has switched the machine off, before it switches it on.
    def freeze_after_off() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "set power 0" not in sim.calls():
            time.sleep(0.05)
        sim.pause()
    watcher = threading.Thread(target=freeze_after_off)
    watcher.start()
    result = await power.one(PowerOp.CYCLE, "n0", actor="test")
    watcher.join()
    assert not result.ok and result.kind in ("timeout", "unreachable"), result
    sim.resume()
    again = await power.one(PowerOp.STATUS, "n0", actor="test")
    assert again.ok and again.power == "off"  # it really stopped half-way; bootd says so
    events = [e.message for e in await repo.events("n0") if e.kind == "power"]
    assert events[-1].startswith("cycle: failed")


class FakeBmc:
    """Holds every session open until released, so concurrency can be counted."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def run(self, op: PowerOp) -> Outcome:
        await self.gate.wait()
        return Outcome("on")


async def test_throttle_limits_sessions_and_power_on_rate(repo: Repository, tmp_path: Path) -> None:
    now = [0.0]
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += 0  # the fake clock does not move: every wait is counted, not slept

    throttle = Throttle(max_sessions=2, power_on_rate=4.0, clock=lambda: now[0], sleep=fake_sleep)
    gate = asyncio.Event()
    config = config_for(tmp_path)
    power = PowerService(config, repo, factory=lambda *a: FakeBmc(gate), throttle=throttle)
    names = [f"n{i}" for i in range(6)]
    for i, name in enumerate(names):
        await repo.add_node(NewNode(name, (f"52:54:00:00:01:{i:02x}",)), actor="t")
        await repo.set_bmc(name, f"10.0.0.{i}", "u", "p", actor="t")
    task = asyncio.ensure_future(power.run(PowerOp.ON, names, actor="test"))
    for _ in range(1000):  # bounded wait until every request reached the throttle
        if len(throttle.power_on_times) == len(names):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert throttle.active == 2  # six asked, two sessions open
    gate.set()
    results = await task
    assert all(r.ok for r in results) and throttle.peak == 2
    # Power-ons were admitted on a 0.25 s schedule: 0, .25, .5, ... (4 per second).
    assert throttle.power_on_times == [i * 0.25 for i in range(6)]
    assert waited == [i * 0.25 for i in range(1, 6)]


async def test_reinstall_sets_pxe_and_cycles(repo: Repository, sims: list[IpmiSim], tmp_path: Path) -> None:
    config = config_for(tmp_path)
    await add(repo, "n0", sims[0])
    for target in (S.DISCOVERED,):
        await move(repo, "n0", target, Actor.NODE, actor="node")
    await move(repo, "n0", S.HARDWARE_INSTALLING, Actor.OPERATOR, actor="t", profile="rocky-9")
    for target in (S.HARDWARE_INSTALLED, S.INSTALLING, S.INSTALLED, S.READYING, S.READY):
        await move(repo, "n0", target, Actor.NODE, actor="node")
    app = http_app(repo, TOKEN, config, PowerService(config, repo))
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/api/v1/nodes/n0/reinstall", headers=AUTH)
        assert resp.status == 200
        node = await resp.json()
        assert node["state"] == "reinstall"
        assert "password" not in json.dumps(node) and sims[0].password not in json.dumps(node)
        calls = sims[0].calls()
        assert "set boot pxe" in calls
        assert calls.index("set boot pxe") < len(calls) - 1 - calls[::-1].index("set power 1")
        assert sims[0].power() == "on"
        bulk = await client.post("/api/v1/power/status", json={"nodes": ["n0"]}, headers=AUTH)
        assert (await bulk.json())["results"] == [{"node": "n0", "ok": True, "power": "on"}]
        missing = await client.post("/api/v1/nodes/zz/power/on", headers=AUTH)
        assert missing.status == 404
        bad_op = await client.post("/api/v1/nodes/n0/power/explode", headers=AUTH)
        assert bad_op.status == 404


def test_cli_power(sims: list[IpmiSim], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bootd.toml"
    cfg.write_text(loopback_config(tmp_path / "state", 8080, "[bmc]\ncycle_pause = 1\n"))
    pw = tmp_path / "pw"
    pw.write_text(sims[1].password)
    assert main(["--config", str(cfg), "nodes", "add", "c1", "--mac", "52:54:00:00:02:01", "--rack", "r1",
                 "--bmc-address", sims[1].address, "--bmc-user", sims[1].user,
                 "--bmc-password-file", str(pw)]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "power", "on", "--rack", "r1"]) == 0
    assert capsys.readouterr().out == "c1: ok, power on\n"
    assert sims[1].power() == "on"
    assert main(["--config", str(cfg), "power", "status", "c1", "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert out == {"results": [{"node": "c1", "ok": True, "power": "on"}]}
    assert main(["--config", str(cfg), "power", "status", "nobody"]) == 1
    assert "no node named" in capsys.readouterr().err


async def test_controller_never_shows_its_password() -> None:
    c = IpmiController("10.0.0.1:6230", "admin", "pw-secret")
    assert "pw-secret" not in repr(c) and (c.host, c.port) == ("10.0.0.1", 6230)
    err = BmcError(ErrorKind.AUTH, "Incorrect password provided")
    assert str(err) == "auth: Incorrect password provided"


class Recorder:
    def __init__(self, ops: list[str]) -> None:
        self.ops = ops

    async def run(self, op: PowerOp) -> Outcome:
        self.ops.append(op.value)
        return Outcome("on")


async def test_timeout_retry_boots_from_network(repo: Repository, tmp_path: Path) -> None:
    from datetime import timedelta

    from bootd.lifecycle import LifecycleService

    ops: list[str] = []
    extra = "[lifecycle]\nretries = 1\n[lifecycle.timeouts]\ndiscovering = 60\n"
    config = parse_config(loopback_config(tmp_path / "state", 8080, extra))
    power = PowerService(config, repo, factory=lambda *a: Recorder(ops))
    await repo.add_node(NewNode("n0", ("52:54:00:00:03:01",)), actor="t")
    await repo.set_bmc("n0", "10.0.0.1", "u", "p", actor="t")
    node = await repo.get_node("n0")
    timer = LifecycleService(config, repo, clock=lambda: node.state_changed_at + timedelta(seconds=61),
                             power=power)
    (after,) = await timer.tick()
    assert after.retries == 1 and ops == ["pxe", "cycle"]


def test_cli_identify_and_delete_with_power_off(sims: list[IpmiSim], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bootd.toml"
    cfg.write_text(loopback_config(tmp_path / "state", 8080, "[bmc]\ncycle_pause = 1\n"))
    pw = tmp_path / "pw"
    pw.write_text(sims[2].password)
    assert main(["--config", str(cfg), "nodes", "add", "d1", "--mac", "52:54:00:00:04:01",
                 "--bmc-address", sims[2].address, "--bmc-user", sims[2].user,
                 "--bmc-password-file", str(pw)]) == 0
    assert main(["--config", str(cfg), "power", "on", "d1"]) == 0
    assert main(["--config", str(cfg), "power", "identify", "d1"]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "nodes", "delete", "d1", "--power-off"]) == 0
    assert capsys.readouterr().out == "deleted node d1\n"
    assert sims[2].power() == "off"


class Exploding:
    async def run(self, op: PowerOp) -> Outcome:
        raise OSError(24, "Too many open files")


async def test_one_broken_node_never_hides_the_others(repo: Repository, tmp_path: Path) -> None:
    calls: list[str] = []
    config = config_for(tmp_path)

    def factory(address: str, *rest: Any) -> Any:
        return Exploding() if address == "10.0.0.1" else Recorder(calls)
    power = PowerService(config, repo, factory=factory)
    for i in (1, 2):
        await repo.add_node(NewNode(f"p{i}", (f"52:54:00:00:06:0{i}",)), actor="t")
        await repo.set_bmc(f"p{i}", f"10.0.0.{i}", "u", "p", actor="t")
    first, second = await power.run(PowerOp.STATUS, ["p1", "p2"], actor="test")
    assert (first.ok, first.kind) == (False, "error") and "Too many open files" in (first.error or "")
    assert second.ok and calls == ["status"]


# -- bounded state (issue 11, 3.12) ----------------------------------------------------

async def test_power_on_record_stays_bounded() -> None:
    """A daemon running for months: power_on_times keeps the last minute, not every power-on."""
    now = [0.0]

    async def no_sleep(seconds: float) -> None:
        now[0] += seconds  # the fake clock moves by exactly the wait asked for

    throttle = Throttle(max_sessions=4, power_on_rate=10.0, clock=lambda: now[0], sleep=no_sleep)
    for _ in range(5000):  # 500 s of power-ons at 10 per second
        async with throttle.session(powers_on=True):
            pass
    assert throttle.admitted == 5000
    recent = throttle.power_on_times
    assert 590 <= len(recent) <= 601  # 60 s at 10 per second
    assert recent[-1] == pytest.approx(499.9) and recent[0] >= now[0] - 60


async def test_power_on_record_bounded_when_requests_queue() -> None:
    """Thousands of power-ons queued at once (a whole site): the record is capped too."""
    throttle = Throttle(max_sessions=4, power_on_rate=1.0, clock=lambda: 0.0,
                        sleep=lambda s: asyncio.sleep(0))

    async def one() -> None:
        async with throttle.session(powers_on=True):
            pass
    await asyncio.gather(*(one() for _ in range(10_000)))
    assert throttle.admitted == 10_000 and len(throttle.power_on_times) <= 4096


class Overlap:
    """Counts operations in flight per BMC address; each waits for the gate."""

    def __init__(self, address: str, seen: dict[str, int], peak: dict[str, int], gate: asyncio.Event) -> None:
        self.address, self.seen, self.peak, self.gate = address, seen, peak, gate

    async def run(self, op: PowerOp) -> Outcome:
        self.seen[self.address] = self.seen.get(self.address, 0) + 1
        self.peak[self.address] = max(self.peak.get(self.address, 0), self.seen[self.address])
        await self.gate.wait()
        self.seen[self.address] -= 1
        return Outcome("on")


async def test_one_operation_at_a_time_per_bmc_and_no_locks_left(repo: Repository, tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    peak: dict[str, int] = {}
    gate = asyncio.Event()
    power = PowerService(config_for(tmp_path), repo,
                         factory=lambda address, *rest: Overlap(address, seen, peak, gate))
    # Two nodes behind one BMC (a chassis manager) and 40 with their own.
    for i in range(42):
        await repo.add_node(NewNode(f"k{i}", (f"52:54:00:00:07:{i:02x}",)), actor="t")
        address = "10.0.1.1:623" if i < 2 else f"10.0.1.{i}"
        await repo.set_bmc(f"k{i}", address, "u", "p", actor="t")
    task = asyncio.ensure_future(power.run(PowerOp.STATUS, [f"k{i}" for i in range(42)], actor="test"))
    for _ in range(1000):  # bounded wait until every BMC with its own address is busy
        if sum(seen.values()) >= 16:  # max_sessions: the throttle's limit
            break
        await asyncio.sleep(0.01)
    assert len(power.locks) >= 16
    gate.set()
    results = await task
    assert all(r.ok for r in results)
    assert peak["10.0.1.1:623"] == 1  # the shared BMC never ran two at once
    assert len(power.locks) == 0  # nothing kept for BMCs nobody is using
    import bootd.bmc.controller as controller
    assert not [n for n, v in vars(controller).items() if isinstance(v, dict) and not n.startswith("__")]


async def test_cancelled_waiter_leaves_no_lock() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    release = asyncio.Event()

    async def hold() -> None:
        async with locks.hold("bmc"):
            await release.wait()
    holder = asyncio.ensure_future(hold())
    waiter = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(locks) == 1
    release.set()
    await holder
    assert len(locks) == 0
