"""What a hostile host on the admin network can do, and must not (issue 11, section 3).

Each test here failed on the code before the fix: tokens handed out by MAC,
nodes created by anonymous GETs, BMC credentials stored before they were
applied and one address handed to two nodes, secrets in database errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import loopback_config
from sqlalchemy.exc import IntegrityError

from bootd.app import http_app
from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository, _reason
from bootd.feed import ChangeFeed
from bootd.keys import SecretBox
from bootd.model.clients import Arch, BootClient, Firmware
from bootd.model.records import NewNode
from bootd.model.states import NodeState
from bootd.policy import Policy
from bootd.tasks import APPLIED, Tasks, tasks_dir

TOKEN = "operator-token-" + "x" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAC = "52:54:00:00:00:01"
LOCAL = IPv4Address("127.0.0.1")


def _config(tmp_path: Path) -> Config:
    extra = """
[[subnets]]
cidr = "127.0.0.0/8"
dynamic_pool = "127.0.0.100-127.0.0.150"
bmc_range = "127.0.1.10-127.0.1.11"
"""
    return parse_config(loopback_config(tmp_path / "state", 8080, extra))


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return _config(tmp_path)


@pytest.fixture
def policy(config: Config, repo: Repository) -> Policy:
    return Policy(config, repo, ChangeFeed())


@pytest.fixture
async def client(repo: Repository, config: Config, policy: Policy) -> AsyncIterator[TestClient]:
    app = http_app(repo, TOKEN, config, policy=policy, tasks=Tasks(config, repo))
    async with TestClient(TestServer(app)) as c:
        yield c


async def _node(repo: Repository, policy: Policy, state: NodeState = NodeState.DISCOVERING) -> str:
    await repo.add_node(NewNode("n1", (MAC,), state=state), actor="t")
    await policy.refresh(force=True)
    return await repo.node_token("n1")


# -- 1. tokens go only to the lease holder -------------------------------------------

async def test_script_with_token_refused_to_a_peer_without_the_lease(
        client: TestClient, repo: Repository, policy: Policy) -> None:
    token = await _node(repo, policy)
    resp = await client.get(f"/boot/ipxe?mac={MAC}")
    assert resp.status == 403
    body = await resp.text()
    assert token not in body and "lease" in body


async def test_script_with_token_for_the_lease_holder(client: TestClient, repo: Repository,
                                                      policy: Policy) -> None:
    token = await _node(repo, policy)
    policy.leased(MAC, LOCAL)
    resp = await client.get(f"/boot/ipxe?mac={MAC}")
    assert resp.status == 200
    assert f"bootd.token={token}" in await resp.text()
    policy.unleased(LOCAL)
    assert (await client.get(f"/boot/ipxe?mac={MAC}")).status == 403


async def test_operator_may_read_any_script(client: TestClient, repo: Repository, policy: Policy) -> None:
    token = await _node(repo, policy)
    resp = await client.get(f"/boot/ipxe?mac={MAC}", headers=AUTH)
    assert resp.status == 200 and token in await resp.text()


async def test_local_boot_scripts_carry_no_token_and_go_to_anyone(
        client: TestClient, repo: Repository, policy: Policy) -> None:
    token = await _node(repo, policy, NodeState.READY)
    resp = await client.get(f"/boot/ipxe?mac={MAC}")
    assert resp.status == 200 and token not in await resp.text()


async def test_tftp_configs_with_token_only_for_the_lease_holder(repo: Repository, policy: Policy) -> None:
    token = await _node(repo, policy)
    name = "pxelinux.cfg/01-" + MAC.replace(":", "-")
    assert await policy.tftp_file(name, LOCAL) is None
    assert await policy.tftp_file("grub/grub.cfg-01-" + MAC.replace(":", "-"), LOCAL) is None
    policy.leased(MAC, LOCAL)
    generated = await policy.tftp_file(name, LOCAL)
    assert generated is not None and token.encode() in generated


async def test_identity_only_for_the_lease_holder(client: TestClient, repo: Repository,
                                                  policy: Policy) -> None:
    token = await _node(repo, policy)
    assert (await client.get(f"/boot/identity?mac={MAC}")).status == 403
    policy.leased(MAC, LOCAL)
    resp = await client.get(f"/boot/identity?mac={MAC}")
    assert resp.status == 200
    assert await resp.text() == f"node=n1\ntoken={token}\n"


async def test_a_copy_of_the_database_holds_no_token(tmp_path: Path, repo: Repository) -> None:
    await repo.add_node(NewNode("n1", (MAC,)), actor="t")
    token = await repo.node_token("n1")
    assert await repo.verify_token("n1", token)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("db"))
    assert token.encode() not in raw


async def test_tokens_written_before_0004_are_sealed_at_start(repo: Repository) -> None:
    await repo.add_node(NewNode("n1", (MAC,)), actor="t")
    # What a pre-0004 row looks like: the plain token, no sealed copy.
    async with repo._tx(write=True) as s:  # the test plays the old schema's writer
        from sqlalchemy import update

        from bootd.db import schema as t
        await s.execute(update(t.Node).values(token="plain-old-token-" + "y" * 30, token_sealed=None))
    assert await repo.seal_tokens() == 1
    assert await repo.verify_token("n1", "plain-old-token-" + "y" * 30)
    assert await repo.node_token("n1") == "plain-old-token-" + "y" * 30
    assert await repo.seal_tokens() == 0


# -- 3. no node creation from HTTP, registrations capped --------------------------------

async def test_anonymous_gets_create_no_nodes(client: TestClient, repo: Repository) -> None:
    for i in range(50):
        resp = await client.get(f"/boot/ipxe?mac=52:54:00:aa:00:{i:02x}")
        assert resp.status == 200  # the discovery script without a token: nothing to steal
        assert "bootd.token" not in await resp.text()
    assert await repo.list_nodes() == []


async def test_registrations_are_rate_limited_per_interface(repo: Repository, policy: Policy) -> None:
    """A spoofed-MAC flood from one interface: its token bucket's burst is queued, the
    rest refused (the real clients among them ask again with their DHCP retransmissions)."""
    burst = policy.config.dhcp.register_burst
    for i in range(2000):
        client = BootClient(f"52:54:01:{i >> 8:02x}:{i & 255:02x}:01", Firmware.PXE, Arch.BIOS)
        policy.booted(client, None, via="eth0")
    queued = len(policy._pending)
    assert burst <= queued <= burst + 5  # the bucket refills a little while the loop runs
    assert policy.refused["registrations-rate"] == 2000 - queued
    assert policy.refused["registrations-busy"] == 0
    await asyncio.gather(*list(policy._tasks))
    assert len(await repo.list_nodes()) == queued
    assert policy._pending == {}


async def test_registrations_queue_is_bounded_and_written_in_batches(
        repo: Repository, policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_REGISTERING queued, refused as busy; the queue is written by one task in
    transactions of at most REGISTER_BATCH machines, with the same events as one by one."""
    import bootd.policy as policy_module

    monkeypatch.setattr(policy_module, "MAX_REGISTERING", 600)
    monkeypatch.setattr(policy_module, "REGISTER_BATCH", 256)
    policy.config = replace(policy.config, dhcp=replace(policy.config.dhcp, register_rate=1e5,
                                                        register_burst=10**6))
    batches: list[int] = []
    real = repo.register_booted_many

    async def counted(booted, *, actor):  # type: ignore[no-untyped-def]
        batches.append(len(booted))
        return await real(booted, actor=actor)

    monkeypatch.setattr(repo, "register_booted_many", counted)
    for i in range(1000):
        client = BootClient(f"52:54:02:{i >> 8:02x}:{i & 255:02x}:01", Firmware.PXE, Arch.BIOS)
        policy.booted(client, f"relay-{i % 3}", via=f"relay-{i % 3}", rack=f"r{i % 3}")
    assert policy.refused["registrations-busy"] == 400
    assert len(policy._tasks) == 1  # one writer
    await asyncio.gather(*list(policy._tasks))
    assert sorted(batches) == [88, 256, 256]
    nodes = await repo.list_nodes()
    assert len(nodes) == 600
    assert all(n.state is NodeState.DISCOVERING and n.location for n in nodes)
    assert {n.rack for n in nodes} == {"r0", "r1", "r2"}  # the subnet's rack, from the DHCP effect
    events = await repo.events("node-525402000001")
    assert [e.kind for e in events] == ["created", "located"]
    # The directory knows them without a reload: their scripts are answered from memory.
    assert policy.node("52:54:02:00:01:01") is not None


async def test_a_batch_skips_macs_registered_meanwhile(repo: Repository, policy: Policy) -> None:
    await repo.add_node(NewNode("taken", ("52:54:03:00:00:01",)), actor="t")
    for i in range(1, 4):
        policy.booted(BootClient(f"52:54:03:00:00:0{i}", Firmware.PXE, Arch.BIOS), None, via="eth0")
    await asyncio.gather(*list(policy._tasks))
    assert sorted(n.name for n in await repo.list_nodes()) == [
        "node-525403000002", "node-525403000003", "taken"]


async def test_http_waits_for_the_registration_its_dhcp_exchange_started(
        client: TestClient, repo: Repository, policy: Policy) -> None:
    policy.booted(BootClient(MAC, Firmware.IPXE, Arch.BIOS), None, via="eth0")
    policy.leased(MAC, LOCAL)
    resp = await client.get(f"/boot/ipxe?mac={MAC}")
    assert resp.status == 200
    token = await repo.node_token("node-525400000001")
    assert f"bootd.token={token}" in await resp.text()


# -- 2. the bmc task ---------------------------------------------------------------------

async def _hardware_installing(repo: Repository, name: str, mac: str) -> str:
    await repo.add_node(NewNode(name, (mac,), state=NodeState.HARDWARE_INSTALLING), actor="t")
    return await repo.node_token(name)


async def test_two_nodes_fetching_the_bmc_task_at_once_get_two_addresses(
        client: TestClient, repo: Repository) -> None:
    t1 = await _hardware_installing(repo, "n1", "52:54:00:00:00:01")
    t2 = await _hardware_installing(repo, "n2", "52:54:00:00:00:02")
    r1, r2 = await asyncio.gather(
        client.get("/api/v1/nodes/n1/tasks/bmc", headers={"Authorization": f"Bearer {t1}"}),
        client.get("/api/v1/nodes/n2/tasks/bmc", headers={"Authorization": f"Bearer {t2}"}))
    s1, s2 = await r1.text(), await r2.text()
    assert r1.status == r2.status == 200
    a1 = {line.split()[-1] for line in s1.splitlines() if "ipaddr" in line and "defgw" not in line}
    a2 = {line.split()[-1] for line in s2.splitlines() if "ipaddr" in line and "defgw" not in line}
    assert a1 and a2 and a1 != a2
    assert a1 | a2 == {"127.0.1.10", "127.0.1.11"}
    # Nothing is the BMC's yet: the credentials wait for the node's report.
    assert (await repo.get_node("n1")).bmc is None and (await repo.get_node("n2")).bmc is None


async def test_bmc_credentials_stored_only_when_reported_applied(client: TestClient,
                                                                 repo: Repository) -> None:
    t1 = await _hardware_installing(repo, "n1", MAC)
    auth = {"Authorization": f"Bearer {t1}"}
    script = await (await client.get("/api/v1/nodes/n1/tasks/bmc", headers=auth)).text()
    password = next(line.split()[-1] for line in script.splitlines() if "user set password" in line)
    # The script ran on a machine without a BMC: exit 0, but no "applied" marker.
    resp = await client.post("/api/v1/nodes/n1/tasks/bmc", data="no BMC visible from the host",
                             headers={**auth, "X-Task-Status": "0"})
    assert resp.status == 200
    assert (await repo.get_node("n1")).bmc is None
    assert not any("address=" in e.message and e.kind == "bmc-set" for e in await repo.events("n1"))
    # Fetched again and run to the end on a machine with a BMC.
    script = await (await client.get("/api/v1/nodes/n1/tasks/bmc", headers=auth)).text()
    password = next(line.split()[-1] for line in script.splitlines() if "user set password" in line)
    resp = await client.post("/api/v1/nodes/n1/tasks/bmc", data=f"BMC configured\n{APPLIED}\n",
                             headers={**auth, "X-Task-Status": "0"})
    assert resp.status == 200
    node = await repo.get_node("n1")
    assert node.bmc is not None and node.bmc.address in ("127.0.1.10", "127.0.1.11")
    assert (await repo.bmc_credentials("n1")).password == password


# -- 12. operator task scripts are not on the TFTP root or /images/ -----------------------

async def test_operator_tasks_live_outside_the_served_roots(client: TestClient, repo: Repository,
                                                            config: Config) -> None:
    folder = tasks_dir(config)
    folder.mkdir(parents=True)
    (folder / "raid.sh").write_text("echo secret-raid-setup\n")
    assert not str(folder).startswith(str(config.tftp_root))
    assert (await client.get("/images/tasks/raid.sh")).status == 404
    token = await _hardware_installing(repo, "n1", MAC)
    resp = await client.get("/api/v1/nodes/n1/tasks/raid", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200 and "secret-raid-setup" in await resp.text()
    assert (await client.get("/api/v1/nodes/n1/tasks/raid")).status == 403


# -- 8. database errors carry the driver's reason, never the statement's parameters -----

def test_database_errors_carry_no_bound_parameters() -> None:
    secret = "node-token-that-must-not-leak"
    exc = IntegrityError("INSERT INTO nodes (name, token) VALUES (?, ?)", ("n1", secret),
                         Exception("UNIQUE constraint failed: nodes.name"))
    text = _reason(exc)
    assert secret not in text and "INSERT" not in text
    assert "UNIQUE constraint failed" in text




async def test_bmc_reservations_never_share_an_address_on_either_backend(db_url: str, tmp_path: Path) -> None:
    """Six nodes ask at once for three addresses: three distinct ones are handed out,
    three nodes are told there is none; the unique index settles PostgreSQL races."""
    engine = await open_database(db_url)
    try:
        repo = Repository(engine, SecretBox.from_file(tmp_path / "key"))
        extra = '\n[[subnets]]\ncidr = "127.0.0.0/8"\nbmc_range = "127.0.1.10-127.0.1.12"\n'
        config = parse_config(loopback_config(tmp_path / "state", 8080, extra))
        tasks = Tasks(config, repo)
        nodes = []
        for i in range(6):
            await repo.add_node(NewNode(f"n{i}", (f"52:54:00:00:01:{i:02x}",),
                                        state=NodeState.HARDWARE_INSTALLING), actor="t")
            nodes.append(await repo.get_node(f"n{i}"))
        scripts = await asyncio.gather(*(tasks.script(n, "bmc", "127.0.0.5") for n in nodes))
        handed = [line.split()[-1] for s in scripts for line in s.splitlines()
                  if line.startswith("ipmitool lan set 1 ipaddr")]
        assert sorted(handed) == ["127.0.1.10", "127.0.1.11", "127.0.1.12"]
        assert sum("no free address" in s for s in scripts) == 3
    finally:
        await engine.dispose()


async def test_a_registration_adds_its_node_without_rereading_the_directory(repo: Repository,
                                                                            policy: Policy) -> None:
    """A PXE flood must not cost a full directory read per recorded machine."""
    reads: list[object] = []
    original = repo.directory

    async def counting(name: str | None = None, *, names: object = None) -> list:  # type: ignore[type-arg]
        reads.append(name if names is None else sorted(names))  # type: ignore[call-overload]
        return await original(name, names=names)  # type: ignore[arg-type]

    repo.directory = counting  # type: ignore[method-assign]
    for i in range(5):
        policy.booted(BootClient(f"52:54:02:00:00:{i:02x}", Firmware.PXE, Arch.BIOS), None, via="eth0")
        await asyncio.gather(*list(policy._tasks))
    assert reads == [[f"node-52540200000{i}"] for i in range(5)]  # the new nodes only, never all
    assert all(policy.node(f"52:54:02:00:00:{i:02x}") is not None for i in range(5))


def test_the_lease_map_forgets_a_machine_whose_address_passed_on(policy: Policy) -> None:
    ip = IPv4Address("127.0.0.50")
    for i in range(100):
        policy.leased(f"52:54:03:00:00:{i:02x}", ip)
    assert policy.holds_lease(ip, "52:54:03:00:00:63")
    assert not policy.holds_lease(ip, "52:54:03:00:00:00")
    assert len(policy._ips_by_mac) == 1 and len(policy._macs_by_ip) == 1
    # One MAC at several addresses (a second exchange): each address still names it.
    policy.leased("52:54:03:00:00:63", IPv4Address("127.0.0.51"))
    assert policy.holds_lease(ip, "52:54:03:00:00:63")
    assert policy.holds_lease(IPv4Address("127.0.0.51"), "52:54:03:00:00:63")


def test_a_spoofed_exchange_cannot_make_another_host_the_lease_holder(config: Config,
                                                                     repo: Repository) -> None:
    """DHCP with the victim's chaddr (and a client id of the attacker's own) binds a pool
    address to the victim's MAC. The kernel's ARP entry for the attacker's address still
    names the attacker: no token for it; and the victim keeps its own address's trust."""
    victim, attacker_mac = "52:54:00:00:00:01", "02:00:00:00:66:66"
    victim_ip, attacker_ip = IPv4Address("198.18.0.100"), IPv4Address("198.18.0.166")
    arp = {victim_ip: victim, attacker_ip: attacker_mac}
    policy = Policy(config, repo, ChangeFeed(), link_address=arp.get)
    policy.leased(victim, victim_ip)
    policy.leased(victim, attacker_ip)  # the spoofed exchange
    assert not policy.holds_lease(attacker_ip, victim)
    assert policy.holds_lease(victim_ip, victim)
    assert policy.refused["not-lease-holder"] == 1


def test_link_address_reads_complete_arp_entries_only(tmp_path: Path) -> None:
    from bootd.neighbours import link_address

    table = tmp_path / "arp"
    table.write_text("IP address       HW type     Flags       HW address            Mask     Device\n"
                     "198.18.0.100     0x1         0x2         52:54:00:AA:00:01     *        eth0\n"
                     "198.18.0.101     0x1         0x0         00:00:00:00:00:00     *        eth0\n")
    assert link_address(IPv4Address("198.18.0.100"), table) == "52:54:00:aa:00:01"
    assert link_address(IPv4Address("198.18.0.101"), table) is None
    assert link_address(IPv4Address("198.18.0.102"), table) is None
    assert link_address(IPv4Address("198.18.0.100"), tmp_path / "missing") is None
