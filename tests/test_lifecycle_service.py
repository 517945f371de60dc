"""The lifecycle service: the one path for CLI, API, timer and node reports.

Tokens rotate on allocate/reinstall/reset; unknown profiles are refused at every
edge; profiles that leave the config move their nodes to problem; booted
machines that never report expire; and two concurrent changes of one node, on
SQLite and on PostgreSQL, end with exactly one winner and one event row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import loopback_config
from test_lifecycle import CONFIG_EXTRA, Clock

from bootd.app import http_app
from bootd.bmc.controller import Outcome, PowerOp
from bootd.bmc.service import PowerService
from bootd.cli import main
from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.errors import Conflict, InvalidInput
from bootd.feed import ChangeFeed, NodeChanged
from bootd.http.api import LIFECYCLE
from bootd.keys import SecretBox
from bootd.lifecycle import Lifecycle, LifecycleService, Operation, Selector
from bootd.model.events import NodeReport, Reset
from bootd.model.lifecycle import apply
from bootd.model.records import NewNode
from bootd.model.states import NodeState as S

TOKEN = "operator-token-" + "x" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CUSTOM = '[profiles.custom]\nfamily = "kickstart"\ntemplate = "kickstart/rocky-9.ks.j2"\n'


def make_config(tmp: Path, extra: str = "") -> Config:
    return parse_config(loopback_config(tmp / "state", 8080, CONFIG_EXTRA + extra))


class Recorder:
    def __init__(self) -> None:
        self.ops: list[str] = []

    async def run(self, op: PowerOp) -> Outcome:
        self.ops.append(op.value)
        return Outcome("on")


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"), clock=Clock())
    await engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bmc() -> Recorder:
    return Recorder()


@pytest.fixture
def changes() -> list[NodeChanged]:
    return []


@pytest.fixture
def lifecycle(repo: Repository, tmp_path: Path, clock: Clock, bmc: Recorder,
              changes: list[NodeChanged]) -> Lifecycle:
    config = make_config(tmp_path, CUSTOM)
    feed = ChangeFeed()
    feed.subscribe(changes.append)
    power = PowerService(config, repo, factory=lambda *a: bmc)
    return Lifecycle(config, repo, power=power, feed=feed, clock=clock)


async def discovered(lc: Lifecycle, name: str, mac: str, **kw: Any) -> None:
    await lc.add(NewNode(name, (mac,), **kw), actor="t")
    await lc.report(name, S.DISCOVERED, inventory='{"cpus": 2}')


# -- tokens ------------------------------------------------------------------------------

async def test_a_report_uses_the_authenticated_read_and_rereads_a_node_that_moved(
        lifecycle: Lifecycle, repo: Repository) -> None:
    """A callback reads its node once (token check and record together) and reports with
    that record; if the node moved in between (an operator's edit), the report is
    applied to a fresh read, not refused."""
    await lifecycle.add(NewNode("n1", ("52:54:00:00:11:01",)), actor="t")
    token = await repo.node_token("n1")
    assert await repo.node_with_token("n1", "x" * 43) is None
    assert await repo.node_with_token("nobody", token) is None
    read = await repo.node_with_token("n1", token)
    assert read is not None and read.name == "n1"
    await repo.update_node("n1", rack="r7", actor="operator")  # moves the version on
    assert (await repo.get_node("n1")).version == read.version + 1
    after = await lifecycle.report("n1", S.DISCOVERED, inventory="{}", read=read)
    assert after.state is S.DISCOVERED and after.rack == "r7"
    # Replayed with the same (now stale) read: refused by the state, not by the version.
    with pytest.raises(Conflict):
        await lifecycle.report("n1", S.DISCOVERED, expect=S.DISCOVERING, read=read)


async def test_tokens_rotate_on_allocate_reinstall_and_reset(lifecycle: Lifecycle, repo: Repository) -> None:
    await discovered(lifecycle, "n1", "52:54:00:00:10:01")
    steps = [lambda: lifecycle.allocate("n1", actor="t", profile="rocky-9"),
             lambda: lifecycle.report("n1", S.HARDWARE_INSTALLED),
             lambda: lifecycle.report("n1", S.INSTALLING),
             lambda: lifecycle.reinstall("n1", actor="t"),
             lambda: lifecycle.reset("n1", actor="t")]
    rotates = [True, False, False, True, True]
    for step, rotated in zip(steps, rotates, strict=True):
        old = await repo.node_token("n1")
        await step()
        new = await repo.node_token("n1")
        assert await repo.verify_token("n1", new)
        assert await repo.verify_token("n1", old) is not rotated
        assert (old != new) is rotated


# -- profiles ------------------------------------------------------------------------------

async def test_unknown_profiles_are_refused_naming_the_known_ones(lifecycle: Lifecycle) -> None:
    await discovered(lifecycle, "n1", "52:54:00:00:10:01")
    with pytest.raises(InvalidInput, match=r"no profile named 'nosuch' \(known: custom, rhel-5.6, rocky-9, "):
        await lifecycle.allocate("n1", actor="t", profile="nosuch")
    with pytest.raises(InvalidInput, match="no profile named 'nosuch'"):
        await lifecycle.add(NewNode("n2", profile="nosuch"), actor="t")
    with pytest.raises(InvalidInput, match="no profile named 'nosuch'"):
        await lifecycle.update("n1", actor="t", profile="nosuch")
    node = await lifecycle.node("n1")
    assert (node.state, node.profile, node.allocated) == (S.DISCOVERED, None, False)


def test_cli_refuses_an_unknown_profile(write_config: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config())
    assert main(["--config", cfg, "nodes", "add", "n1", "--mac", "52:54:00:00:10:01"]) == 0
    capsys.readouterr()
    assert main(["--config", cfg, "nodes", "allocate", "n1", "--profile", "nosuch"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("bootd: error: allocating node n1: no profile named 'nosuch' (known: rhel-5.6, ")
    assert main(["--config", cfg, "nodes", "add", "n2", "--profile", "nosuch"]) == 1
    assert "no profile named 'nosuch'" in capsys.readouterr().err


async def test_api_refuses_an_unknown_profile(lifecycle: Lifecycle, repo: Repository) -> None:
    await discovered(lifecycle, "n1", "52:54:00:00:10:01")
    app = http_app(repo, TOKEN, lifecycle.config)
    async with TestClient(TestServer(app)) as client:
        one = await client.post("/api/v1/nodes/n1/allocate", json={"profile": "nosuch"}, headers=AUTH)
        assert one.status == 400 and "known: custom, rhel-5.6" in (await one.json())["error"]
        many = await client.post("/api/v1/allocate", json={"nodes": ["n1"], "profile": "nosuch"},
                                 headers=AUTH)
        (result,) = (await many.json())["results"]
        assert not result["ok"] and "no profile named 'nosuch'" in result["error"]
        patch = await client.patch("/api/v1/nodes/n1", json={"profile": "nosuch"}, headers=AUTH)
        assert patch.status == 400
    assert (await lifecycle.node("n1")).state is S.DISCOVERED


async def test_a_profile_that_left_the_config_parks_its_nodes_in_problem(
        lifecycle: Lifecycle, repo: Repository, tmp_path: Path) -> None:
    for i, name in enumerate(("installing", "ready", "other")):
        await discovered(lifecycle, name, f"52:54:00:00:10:0{i}")
        await lifecycle.allocate(name, actor="t", profile="rocky-9" if name == "other" else "custom")
        await lifecycle.report(name, S.HARDWARE_INSTALLED)
        await lifecycle.report(name, S.INSTALLING)
    for step in (S.INSTALLED, S.READYING, S.READY):
        await lifecycle.report("ready", step)
    assert await lifecycle.reconcile_profiles() == []  # nothing gone yet
    timer = LifecycleService(lifecycle.config, repo, lifecycle=lifecycle)
    timer.reconfigure(make_config(tmp_path))  # [profiles.custom] removed
    await timer.start()  # start reconciles (so does the run loop after a reload)
    node = await lifecycle.node("installing")
    assert node.state is S.PROBLEM
    last = (await repo.events("installing"))[-1]
    assert (last.actor, last.message) == ("config", "profile custom no longer in the config")
    # A ready node boots its disk: it keeps running; another profile's node is untouched.
    assert (await lifecycle.node("ready")).state is S.READY
    assert (await lifecycle.node("other")).state is S.INSTALLING
    with pytest.raises(InvalidInput, match="reinstalling node ready: no profile named 'custom'"):
        await lifecycle.reinstall("ready", actor="t")


# -- the timer ------------------------------------------------------------------------------

async def test_booted_machines_that_never_report_expire(lifecycle: Lifecycle, repo: Repository,
                                                        clock: Clock, changes: list[NodeChanged]) -> None:
    ghost = await repo.register_booted("52:54:00:00:20:01", None, actor="dhcp")
    assert ghost is not None and ghost.origin == "booted"
    await lifecycle.add(NewNode("mine", ("52:54:00:00:20:02",)), actor="t")
    limit = lifecycle.config.lifecycle.timeouts[S.DISCOVERING]
    clock.now += timedelta(seconds=limit - 1)
    assert await lifecycle.tick() == []
    clock.now += timedelta(seconds=1)
    after = {n.name: n for n in await lifecycle.tick()}
    assert after[ghost.name].state is S.DELETE
    assert (after["mine"].state, after["mine"].retries) == (S.DISCOVERING, 1)  # the operator's: retried
    assert await repo.find_node_by_mac("52:54:00:00:20:01") is None
    last = (await repo.events(ghost.name))[-1]
    assert (last.kind, last.actor, last.message) == ("expired", "timer",
                                                     f"expired: never reported after {limit} s")
    assert NodeChanged(after[ghost.name], "expired", deleted=True) in changes


async def test_timer_retry_power_cycles_through_the_service(lifecycle: Lifecycle, repo: Repository,
                                                            clock: Clock, bmc: Recorder) -> None:
    await discovered(lifecycle, "n1", "52:54:00:00:10:01")
    await repo.set_bmc("n1", "10.0.0.1", "u", "p", actor="t")
    await lifecycle.allocate("n1", actor="t", profile="rocky-9")
    await lifecycle.report("n1", S.HARDWARE_INSTALLED)
    await lifecycle.report("n1", S.INSTALLING)
    clock.now += timedelta(seconds=600)
    (retried,) = await lifecycle.tick()
    assert retried.retries == 1 and bmc.ops == ["pxe", "cycle"]


# -- every edge goes through the service -----------------------------------------------------

async def test_cli_api_and_callbacks_write_the_same_rows(lifecycle: Lifecycle, repo: Repository,
                                                         write_config: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # The API, with the daemon's lifecycle service under LIFECYCLE, and the CLI.
    await discovered(lifecycle, "api", "52:54:00:00:30:01")
    app = http_app(repo, TOKEN, lifecycle.config)
    app[LIFECYCLE] = lifecycle
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/api/v1/nodes/api/allocate", json={"profile": "rocky-9"},
                                  headers=AUTH)).status == 200
        token = await repo.node_token("api")
        moved = await client.post("/api/v1/nodes/api/transition", json={"state": "hardware-installed"},
                                  headers={"Authorization": f"Bearer {token}"})
        assert moved.status == 200
        assert (await client.post("/api/v1/reset", json={"nodes": ["api"]}, headers=AUTH)).status == 200
    api_rows = [(e.kind, e.from_state, e.to_state, e.actor) for e in await repo.events("api")]

    cfg = str(write_config())
    cli = ["--config", cfg, "nodes"]
    assert await asyncio.to_thread(main, [*cli, "add", "cli", "--mac", "52:54:00:00:30:02"]) == 0
    # Still discovering: refused.
    assert await asyncio.to_thread(main, [*cli, "allocate", "cli", "--profile", "rocky-9"]) == 1
    config = parse_config(Path(cfg).read_text())
    engine = await open_database(config.database_url)
    try:
        other = Lifecycle(config, Repository(engine, SecretBox.from_file(config.secret_key_file)))
        await other.report("cli", S.DISCOVERED, inventory="{}")
        assert await asyncio.to_thread(main, [*cli, "allocate", "cli", "--profile", "rocky-9"]) == 0
        await other.report("cli", S.HARDWARE_INSTALLED)
        assert await asyncio.to_thread(main, [*cli, "reset", "--state", "hardware-installed"]) == 0
        assert "cli: reset" in capsys.readouterr().out
        cli_rows = [(e.kind, e.from_state, e.to_state, e.actor) for e in await other.events("cli")]
    finally:
        await engine.dispose()
    def shape(rows: list[Any]) -> list[Any]:
        role = {"api": "operator", "cli": "operator"}
        return [(k, f, to, role.get(a, a.split(":")[0])) for k, f, to, a in rows if k != "created"]
    assert shape(api_rows) == shape(cli_rows) == [
        ("transition", S.DISCOVERING, S.DISCOVERED, "node"),
        ("transition", S.DISCOVERED, S.HARDWARE_INSTALLING, "operator"),
        ("transition", S.HARDWARE_INSTALLING, S.HARDWARE_INSTALLED, "node"),
        ("transition", S.HARDWARE_INSTALLED, S.RESET, "operator")]
    assert ("transition", S.DISCOVERED, S.HARDWARE_INSTALLING, "api") in api_rows
    assert ("transition", S.DISCOVERED, S.HARDWARE_INSTALLING, "cli") in cli_rows
    assert ("transition", S.HARDWARE_INSTALLING, S.HARDWARE_INSTALLED, "node:api") in api_rows


async def test_operate_many_reports_each_node(lifecycle: Lifecycle) -> None:
    await discovered(lifecycle, "a", "52:54:00:00:40:01", rack="r1")
    await lifecycle.add(NewNode("b", ("52:54:00:00:40:02",), rack="r1"), actor="t")
    results = await lifecycle.operate_many(Operation.ALLOCATE, Selector(rack="r1"), actor="t",
                                           profile="rocky-9")
    assert [(r.name, r.ok) for r in results] == [("a", True), ("b", False)]
    assert "allowed from discovering" in (results[1].error or "")
    with pytest.raises(InvalidInput, match="exactly one of"):
        Selector.parse(["a"], rack="r1")
    with pytest.raises(InvalidInput, match="a new name needs exactly one node"):
        await lifecycle.operate_many(Operation.ALLOCATE, Selector(all=True), actor="t", rename="x")


# -- 3.10: concurrent changes of one node, on both backends -----------------------------------

@pytest.fixture
async def any_repo(db_url: str, tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(db_url)
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


async def _installing(lc: Lifecycle) -> None:
    await discovered(lc, "n1", "52:54:00:00:50:01")
    await lc.allocate("n1", actor="t", profile="rocky-9")
    await lc.report("n1", S.HARDWARE_INSTALLED)
    await lc.report("n1", S.INSTALLING)


async def test_two_decisions_from_one_reading_exactly_one_commits(any_repo: Repository,
                                                                 tmp_path: Path) -> None:
    """The installer's two `installed` callbacks and an operator reset, all decided from
    the same reading of the node: the version check lets exactly one commit."""
    lc = Lifecycle(make_config(tmp_path), any_repo)
    await _installing(lc)
    node = await lc.node("n1")
    done = apply(node, NodeReport(S.INSTALLED), node.updated_at, lc.rules)
    reset = apply(node, Reset(), node.updated_at, lc.rules)
    outcomes = await asyncio.gather(
        any_repo.commit("n1", node.version, *done, actor="node:n1"),
        any_repo.commit("n1", node.version, *done, actor="node:n1"),
        any_repo.commit("n1", node.version, *reset, actor="t"),
        return_exceptions=True)
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(won) == 1 and len(lost) == 2
    assert all(isinstance(e, Conflict) and "changed meanwhile, try again" in str(e) for e in lost)
    moves = [e for e in await any_repo.events("n1") if e.from_state is S.INSTALLING]
    assert len(moves) == 1 and moves[0].to_state is (await lc.node("n1")).state


async def test_concurrent_service_calls_exactly_one_wins(any_repo: Repository, tmp_path: Path) -> None:
    lc = Lifecycle(make_config(tmp_path), any_repo)
    await _installing(lc)
    for _ in range(3):  # whichever interleaving the scheduler picks
        outcomes = await asyncio.gather(lc.report("n1", S.INSTALLED), lc.report("n1", S.INSTALLED),
                                        lc.reset("n1", actor="t"), return_exceptions=True)
        won = [o for o in outcomes if not isinstance(o, BaseException)]
        assert all(isinstance(o, Conflict) for o in outcomes if isinstance(o, BaseException))
        # Exactly one move out of installing, however the calls interleave. A call that
        # read the node only after that move committed may legitimately follow it (a
        # reset of the now-installed node): that is a second, serial change, not a race.
        moves = [e for e in await any_repo.events("n1") if e.from_state is S.INSTALLING]
        assert len(moves) == 1, outcomes
        assert len(won) == 1 or (len(won) == 2 and won[-1].state is S.RESET), outcomes
        await lc.delete("n1", actor="t")
        await _installing(lc)
    assert json.loads((await lc.node("n1")).inventory or "null") == {"cpus": 2}
