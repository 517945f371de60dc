"""The PXE state machine: the table walked, illegal and replayed moves refused, timeouts
with a fake clock, node tokens over HTTP, operator API, and golden boot scripts."""

from __future__ import annotations

import asyncio
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import loopback_config, move

from bootd import boot
from bootd.app import http_app
from bootd.boot import NodeView
from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.errors import Conflict, InvalidInput
from bootd.http.boot import POLICY
from bootd.keys import SecretBox
from bootd.lifecycle import LifecycleService, overdue
from bootd.model.events import Timeout
from bootd.model.lifecycle import BOOT, DEFAULT_TIMEOUTS, TRANSITIONS, Actor, Boot, allowed, apply
from bootd.model.records import NewNode
from bootd.model.states import NodeState as S
from bootd.tasks import APPLIED

GOLDEN = Path(__file__).parent / "golden"
TOKEN = "operator-token"
MAC = "52:54:00:00:00:07"
CONFIG_EXTRA = """
[install]
root_password_hash = "$6$bootdsalt$hash"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBootdTestKey op@admin"]
[lifecycle]
retries = 1
[lifecycle.timeouts]
installing = 600
"""


def make_config(tmp: Path) -> Config:
    return parse_config(loopback_config(tmp / "state", 8080, CONFIG_EXTRA))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def repo(tmp_path: Path, clock: Clock) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"), clock=clock)
    await engine.dispose()


# -- the table ---------------------------------------------------------------------

def test_every_state_is_reachable_from_discovering_and_has_a_boot() -> None:
    seen, todo = {S.DISCOVERING}, deque([S.DISCOVERING])
    while todo:
        here = todo.popleft()
        for step in TRANSITIONS:
            if step.source is here and step.target not in seen:
                seen.add(step.target)
                todo.append(step.target)
    assert seen == set(S)
    assert set(BOOT) == set(S)


def test_every_state_has_every_script(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    for state in S:
        view = NodeView("n1", MAC, state, "rocky-9", "tok", None)
        for kind in boot.SCRIPT_TEMPLATES:
            text = boot.script(kind, view, config)
            assert f"n1 ({MAC}) in {state.value}" in text
            if BOOT[state] is Boot.LOCAL:
                assert "LOCALBOOT" in text or "sanboot" in text or "chainloader" in text
            elif BOOT[state] is Boot.INSTALL:
                assert "inst.ks=" in text and "token=tok" in text
            else:
                assert "images/discovery/vmlinuz" in text and f"bootd.state={state.value}" in text


def test_nodes_cannot_allocate_themselves_or_skip_steps() -> None:
    assert allowed(S.DISCOVERED, S.HARDWARE_INSTALLING, Actor.OPERATOR)
    assert not allowed(S.DISCOVERED, S.HARDWARE_INSTALLING, Actor.NODE)
    assert not allowed(S.DISCOVERED, S.READY, Actor.NODE)
    assert not allowed(S.READY, S.INSTALLING, Actor.NODE)  # reinstall is the operator's
    assert not allowed(S.READY, S.PROBLEM, Actor.TIMER)  # ready has no timeout


# -- the one writer ------------------------------------------------------------------

async def walk_to_ready(repo: Repository, name: str) -> None:
    node_moves = [S.DISCOVERED]
    for target in node_moves:
        await move(repo, name, target, Actor.NODE, actor=f"node:{name}")
    await move(repo, name, S.HARDWARE_INSTALLING, Actor.OPERATOR, actor="test", profile="rocky-9")
    for target in (S.HARDWARE_INSTALLED, S.INSTALLING, S.INSTALLED, S.READYING, S.READY):
        await move(repo, name, target, Actor.NODE, actor=f"node:{name}")


async def test_walk_to_ready_logs_every_step(repo: Repository) -> None:
    await repo.add_node(NewNode("n1", (MAC,)), actor="test")
    await walk_to_ready(repo, "n1")
    node = await repo.get_node("n1")
    assert (node.state, node.allocated, node.profile) == (S.READY, True, "rocky-9")
    steps = [(e.from_state, e.to_state) for e in await repo.events("n1") if e.kind == "transition"]
    assert steps == [(S.DISCOVERING, S.DISCOVERED), (S.DISCOVERED, S.HARDWARE_INSTALLING),
                     (S.HARDWARE_INSTALLING, S.HARDWARE_INSTALLED), (S.HARDWARE_INSTALLED, S.INSTALLING),
                     (S.INSTALLING, S.INSTALLED), (S.INSTALLED, S.READYING), (S.READYING, S.READY)]
    # reinstall, then reset, then delete
    await move(repo, "n1", S.REINSTALL, Actor.OPERATOR, actor="test")
    await move(repo, "n1", S.INSTALLING, Actor.NODE, actor="node:n1")
    await move(repo, "n1", S.RESET, Actor.OPERATOR, actor="test")
    assert not (await repo.get_node("n1")).allocated
    gone = await move(repo, "n1", S.DELETE, Actor.OPERATOR, actor="test")
    assert gone.state is S.DELETE
    assert [e.kind for e in await repo.events("n1")][-1] == "deleted"


async def test_illegal_replayed_and_stale_moves_are_refused(repo: Repository) -> None:
    await repo.add_node(NewNode("n1", (MAC,)), actor="test")
    with pytest.raises(Conflict, match="node cannot move node n1 from discovering to ready"):
        await move(repo, "n1", S.READY, Actor.NODE, actor="node:n1")
    await move(repo, "n1", S.DISCOVERED, Actor.NODE, actor="node:n1")
    with pytest.raises(Conflict, match="already discovered"):
        await move(repo, "n1", S.DISCOVERED, Actor.NODE, actor="node:n1")
    with pytest.raises(Conflict, match="stale or replayed"):
        await move(repo, "n1", S.PROBLEM, Actor.NODE, actor="node:n1", expect=S.DISCOVERING)
    with pytest.raises(InvalidInput, match="needs a profile"):
        await move(repo, "n1", S.HARDWARE_INSTALLING, Actor.OPERATOR, actor="test")
    assert (await repo.get_node("n1")).state is S.DISCOVERED  # nothing half-written


async def test_allocate_can_rename(repo: Repository) -> None:
    await repo.add_node(NewNode("node-525400000007", (MAC,)), actor="test")
    await move(repo, "node-525400000007", S.DISCOVERED, Actor.NODE, actor="node")
    node = await move(repo, "node-525400000007", S.HARDWARE_INSTALLING, Actor.OPERATOR,
                                 actor="test", profile="ubuntu-24.04", rename="r1-n07")
    assert node.name == "r1-n07" and node.profile == "ubuntu-24.04"
    assert (await repo.find_node_by_mac(MAC)).name == "r1-n07"  # type: ignore[union-attr]


# -- timeouts with a fake clock --------------------------------------------------------

async def test_timeout_retries_then_problem(repo: Repository, clock: Clock, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.lifecycle.timeouts[S.INSTALLING] == 600
    timer = LifecycleService(config, repo, clock=clock)
    await repo.add_node(NewNode("n1", (MAC,)), actor="test")
    await move(repo, "n1", S.DISCOVERED, Actor.NODE, actor="node")
    await move(repo, "n1", S.HARDWARE_INSTALLING, Actor.OPERATOR, actor="t", profile="rocky-9")
    await move(repo, "n1", S.HARDWARE_INSTALLED, Actor.NODE, actor="node")
    await move(repo, "n1", S.INSTALLING, Actor.NODE, actor="node")
    clock.now += timedelta(seconds=599)
    assert await timer.tick() == []
    clock.now += timedelta(seconds=1)
    (first,) = await timer.tick()
    assert (first.state, first.retries) == (S.INSTALLING, 1)
    clock.now += timedelta(seconds=300)
    assert await timer.tick() == []  # the retry restarted the state's clock
    clock.now += timedelta(seconds=300)
    (second,) = await timer.tick()
    assert second.state is S.PROBLEM
    events = await repo.events("n1")
    assert [e.kind for e in events][-2:] == ["timeout", "transition"]
    assert "no retries left" in events[-1].message and events[-1].actor == "timer"
    # a node that moves on resets its budget
    await move(repo, "n1", S.REINSTALL, Actor.OPERATOR, actor="t")
    assert (await repo.get_node("n1")).retries == 0


async def test_overdue_picks_only_nodes_past_their_states_timeout(repo: Repository, clock: Clock) -> None:
    await repo.add_node(NewNode("slow", ("52:54:00:00:05:01",)), actor="t")   # discovering
    await repo.add_node(NewNode("idle", ("52:54:00:00:05:02",)), actor="t")
    await move(repo, "idle", S.DISCOVERED, Actor.NODE, actor="node")   # no timeout there
    nodes = await repo.list_nodes()
    timeouts = {S.DISCOVERING: 100, S.DISCOVERED: 0}
    assert overdue(nodes, clock.now + timedelta(seconds=99), timeouts) == []
    due = overdue(nodes, clock.now + timedelta(seconds=100), timeouts)
    assert [(n.name, limit) for n, limit in due] == [("slow", 100)]
    assert set(DEFAULT_TIMEOUTS) <= set(S)


async def test_a_decision_from_an_old_reading_is_refused(repo: Repository, clock: Clock) -> None:
    node = await repo.add_node(NewNode("n1", (MAC,)), actor="test")
    await move(repo, "n1", S.DISCOVERED, Actor.NODE, actor="node")
    changes, effects = apply(node, Timeout(600, 1), clock.now)  # the timer's stale snapshot
    with pytest.raises(Conflict, match="changed meanwhile, try again"):
        await repo.commit("n1", node.version, changes, effects, actor="timer")
    assert [e.kind for e in await repo.events("n1")] == ["created", "transition"]


# -- HTTP: tokens, callbacks, operator API ---------------------------------------------

@pytest.fixture
async def client(repo: Repository, tmp_path: Path) -> AsyncIterator[TestClient]:
    config = make_config(tmp_path)
    images = config.tftp_root / "images" / "discovery"
    images.mkdir(parents=True)
    (images / "vmlinuz").write_bytes(bytes(range(256)) * 4096)
    async with TestClient(TestServer(http_app(repo, TOKEN, config))) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_node_callbacks_need_the_nodes_own_token(client: TestClient, repo: Repository) -> None:
    await repo.add_node(NewNode("a", ("52:54:00:00:00:0a",)), actor="t")
    await repo.add_node(NewNode("b", ("52:54:00:00:00:0b",)), actor="t")
    token_a = await repo.node_token("a")
    moved = await client.post("/api/v1/nodes/b/transition", json={"state": "discovered"},
                              headers={"Authorization": f"Bearer {token_a}"})
    assert moved.status == 403
    assert "wrong token for node b" in (await moved.json())["error"]
    operator = await client.post("/api/v1/nodes/a/transition", json={"state": "discovered"},
                                 headers=AUTH)
    assert operator.status == 403  # the operator token is not a node's token
    ok = await client.post("/api/v1/nodes/a/transition", json={"state": "discovered",
                           "inventory": {"memory_mb": 2048}}, headers={"Authorization": f"Bearer {token_a}"})
    assert ok.status == 200
    assert await ok.json() == {"name": "a", "state": "discovered", "allocated": False, "profile": None,
                               "bmc": None}
    replay = await client.post(f"/api/v1/nodes/a/transition?token={token_a}&state=discovered")
    assert replay.status == 409 and "already discovered" in (await replay.json())["error"]
    illegal = await client.post(f"/api/v1/nodes/a/transition?token={token_a}&state=ready")
    assert illegal.status == 409
    bad = await client.post(f"/api/v1/nodes/a/transition?token={token_a}&state=flying")
    assert bad.status == 400
    shown = await (await client.get("/api/v1/nodes/a", headers=AUTH)).json()
    assert shown["inventory"] == {"memory_mb": 2048}
    assert token_a not in str(shown)


async def test_operator_api_allocate_reinstall_reset_delete(client: TestClient, repo: Repository) -> None:
    for i in range(3):
        await repo.add_node(NewNode(f"n{i}", (f"52:54:00:00:01:0{i}",), rack="r1"), actor="t")
        await move(repo, f"n{i}", S.DISCOVERED, Actor.NODE, actor="node")
    needs_auth = await client.post("/api/v1/allocate", json={"rack": "r1", "profile": "rocky-9"})
    assert needs_auth.status == 401
    bulk = await client.post("/api/v1/allocate", json={"rack": "r1", "profile": "rocky-9"}, headers=AUTH)
    results = (await bulk.json())["results"]
    assert [r["ok"] for r in results] == [True, True, True]
    again = await client.post("/api/v1/nodes/n0/allocate", json={"profile": "rocky-9"}, headers=AUTH)
    assert again.status == 409
    bad_profile = await client.patch("/api/v1/nodes/n1", json={"colour": "red"}, headers=AUTH)
    assert bad_profile.status == 400
    reset = await client.post("/api/v1/nodes/n1/reset", headers=AUTH)
    assert (await reset.json())["state"] == "reset"
    deleted = await client.delete("/api/v1/nodes/n2", headers=AUTH)
    assert deleted.status == 200
    events = await (await client.get("/api/v1/nodes/n2/events", headers=AUTH)).json()
    assert events["events"][-1]["kind"] == "deleted"
    missing = await client.get("/api/v1/nodes/zz/events", headers=AUTH)
    assert missing.status == 404


async def test_boot_script_and_install_files_over_http(client: TestClient, repo: Repository) -> None:
    unknown = await client.get("/boot/ipxe", params={"mac": "52:54:00:00:00:99"})
    text = await unknown.text()
    assert unknown.status == 200 and text.startswith("#!ipxe")
    assert await repo.find_node_by_mac("52:54:00:00:00:99") is None  # HTTP records no machine
    assert (await client.get("/boot/ipxe", params={"mac": "nonsense"})).status == 400
    node = await repo.add_node(NewNode("node-525400000099", ("52:54:00:00:00:99",)), actor="t")
    await move(repo, node.name, S.DISCOVERED, Actor.NODE, actor="node")
    await move(repo, node.name, S.HARDWARE_INSTALLING, Actor.OPERATOR, actor="t",
                          profile="ubuntu-24.04")
    await move(repo, node.name, S.HARDWARE_INSTALLED, Actor.NODE, actor="node")
    token = await repo.node_token(node.name)
    await client.app[POLICY].refresh()  # the directory the policy answers from
    assert (await client.get("/boot/grub", params={"node": node.name})).status == 401  # token inside
    script = await (await client.get("/boot/grub", params={"node": node.name}, headers=AUTH)).text()
    assert f"'ds=nocloud-net;s=http://127.0.0.1:8080/install/{node.name}/{token}/'" in script
    no_token = await client.get(f"/install/{node.name}/user-data")
    assert no_token.status == 403
    seed = await client.get(f"/install/{node.name}/{token}/user-data")
    assert seed.status == 200 and (await seed.text()).startswith("#cloud-config")
    meta = await (await client.get(f"/install/{node.name}/{token}/meta-data")).text()
    assert f"local-hostname: {node.name}" in meta
    wrong_kind = await client.get(f"/install/{node.name}/kickstart?token={token}")
    assert wrong_kind.status == 400  # an autoinstall profile has no kickstart


async def test_images_served_with_range_and_refusals(client: TestClient) -> None:
    whole = await client.get("/images/discovery/vmlinuz")
    body = await whole.read()
    assert whole.status == 200 and len(body) == 256 * 4096
    part = await client.get("/images/discovery/vmlinuz", headers={"Range": "bytes=1000-1099"})
    assert part.status == 206 and await part.read() == body[1000:1100]
    for bad in ("discovery/../../secret.key", "discovery/%2e%2e/%2e%2e/secret.key"):
        resp = await client.get(f"/images/{bad}")
        assert resp.status in (403, 404), bad
    assert (await client.get("/images/nope")).status == 404


# -- golden files -----------------------------------------------------------------------

def golden_cases() -> list[tuple[str, Callable[[Config], str]]]:
    cases: list[tuple[str, Callable[[Config], str]]] = []
    states = {"discovery": S.DISCOVERING, "install": S.HARDWARE_INSTALLED, "local": S.READY}
    for profile in ("ubuntu-20.04", "ubuntu-24.04", "rhel-5.6", "rocky-9"):
        view = NodeView("r1-n07", MAC, S.INSTALLING, profile, "T0KEN", None)
        kind = {"ubuntu-20.04": "preseed", "ubuntu-24.04": "user-data"}.get(profile, "kickstart")
        cases.append((f"{profile}.{kind}", lambda c, v=view, k=kind: boot.answer(k, v, c)))
        for label, state in states.items():
            if label != "install" and profile != "rocky-9":
                continue
            for script in boot.SCRIPT_TEMPLATES:
                v2 = NodeView("r1-n07", MAC, state, profile, "T0KEN", None)
                cases.append((f"{profile}.{label}.{script}",
                              lambda c, v=v2, s=script: boot.script(s, v, c)))
    return cases


@pytest.mark.parametrize(("name", "produce"), golden_cases(), ids=[n for n, _ in golden_cases()])
def test_golden(name: str, produce: Callable[[Config], str]) -> None:
    config = parse_config(loopback_config(Path("/var/lib/bootd"), 8080, CONFIG_EXTRA))
    text = produce(config)
    path = GOLDEN / name
    if os.environ.get("BOOTD_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with BOOTD_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text()


# -- the agent's calls -------------------------------------------------------------------

async def test_agent_self_tasks_and_bmc(client: TestClient, repo: Repository, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    tasks = config.state_dir / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "20-bios.sh").write_text("echo bios for $BOOTD_NODE\n")
    (tasks / "10-raid.sh").write_text("echo raid\n")
    (tasks / "Bad Name.sh").write_text("echo never\n")
    await repo.add_node(NewNode("a", ("52:54:00:00:00:0a",)), actor="t")
    await repo.add_node(NewNode("b", ("52:54:00:00:00:0b",)), actor="t")
    me = {"Authorization": f"Bearer {await repo.node_token('a')}"}
    assert (await client.get("/api/v1/nodes/a/self")).status == 403
    assert (await client.get("/api/v1/nodes/b/self", headers=me)).status == 403
    view = await (await client.get("/api/v1/nodes/a/self", headers=me)).json()
    assert view == {"name": "a", "state": "discovering", "allocated": False, "profile": None}
    # Hostile header bytes (not UTF-8) are a wrong token, not a server error.
    assert not await repo.verify_token("a", "\udcff\udcfe")
    for path in ("/api/v1/nodes/a/self", "/api/v1/nodes"):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                     + b"Authorization: Bearer \xff\xfe\r\n\r\n")
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] in (b"401", b"403"), (path, status_line)
    names = (await (await client.get("/api/v1/nodes/a/tasks", headers=me)).text()).split()
    assert names == ["bmc", "10-raid", "20-bios"]
    bios = await (await client.get("/api/v1/nodes/a/tasks/20-bios", headers=me)).text()
    assert "export BOOTD_NODE=a" in bios and "echo bios" in bios
    assert (await client.get("/api/v1/nodes/a/tasks/nope", headers=me)).status == 404
    early = await client.get("/api/v1/nodes/a/tasks/bmc", headers=me)
    assert early.status == 409  # a new BMC password only during hardware-install
    await move(repo, "a", S.DISCOVERED, Actor.NODE, actor="node")
    await move(repo, "a", S.HARDWARE_INSTALLING, Actor.OPERATOR, actor="t", profile="rocky-9")
    assert (await client.get("/api/v1/nodes/a/tasks/bmc", headers=me)).status == 403  # rotated
    me = {"Authorization": f"Bearer {await repo.node_token('a')}"}
    bmc = await (await client.get("/api/v1/nodes/a/tasks/bmc", headers=me)).text()
    password = re.search(r"user set password 3 (\S+)", bmc).group(1)  # type: ignore[union-attr]
    applied = await client.post("/api/v1/nodes/a/tasks/bmc", data=f"{APPLIED}\n",
                                headers={**me, "X-Task-Status": "0"})
    assert applied.status == 200
    assert (await repo.bmc_credentials("a")).password == password
    listed = await (await client.get("/api/v1/nodes/a", headers=AUTH)).text()
    assert password not in listed and '"username": "bootd"' in listed
    done = await client.post("/api/v1/nodes/a/tasks/10-raid", data="raid ok\n",
                             headers={**me, "X-Task-Status": "0"})
    assert done.status == 200
    for status in (None, "--1", "-²", "1e3", "99999999"):
        headers = dict(me) if status is None else {**me, "X-Task-Status": status}
        bad = await client.post("/api/v1/nodes/a/tasks/10-raid", data="x", headers=headers)
        assert bad.status == 400, status
    events = await repo.events("a")
    assert events[-1].kind == "task" and events[-1].message.startswith("10-raid exit=0\nraid ok")


async def test_agent_finds_its_node_after_a_rename(client: TestClient, repo: Repository) -> None:
    await repo.add_node(NewNode("node-525400000a0a", ("52:54:00:00:0a:0a",)), actor="t")
    token = await repo.node_token("node-525400000a0a")
    await move(repo, "node-525400000a0a", S.DISCOVERED, Actor.NODE, actor="node")
    await move(repo, "node-525400000a0a", S.HARDWARE_INSTALLING, Actor.OPERATOR, actor="t",
                          profile="rocky-9", rename="r2-n01")
    # Allocation rotated the token: the old one is refused, the new one (which the agent
    # fetches from /boot/identity) finds the node under its old name too.
    old = await client.get("/api/v1/nodes/node-525400000a0a/self",
                           headers={"Authorization": f"Bearer {token}"})
    assert old.status == 403
    me = {"Authorization": f"Bearer {await repo.node_token('r2-n01')}"}
    view = await (await client.get("/api/v1/nodes/node-525400000a0a/self", headers=me)).json()
    assert (view["name"], view["state"]) == ("r2-n01", "hardware-installing")
    wrong = await client.get("/api/v1/nodes/node-525400000a0a/self",
                             headers={"Authorization": "Bearer " + "x" * 43})
    assert wrong.status == 403
