"""GET /metrics: real traffic through HTTP, TFTP, the lifecycle and the BMC service, then a scrape
parsed by prometheus-client's own text parser; each counter must have moved by exactly what was sent.

The DHCP path runs end to end in the namespaced lab (a bootd process, busybox
udhcpc, a scrape over HTTP); in process, the DHCP collector is checked over the
service's own pool accounting. Two Metrics objects in one process never share
a series (no global registry). Nothing asserts on time.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import prometheus_client
import pytest
from aiohttp.test_utils import TestClient, TestServer
from bootd_proc import Bootd
from conftest import free_port_udp, loopback_config
from netlab import Lab
from prometheus_client.parser import text_string_to_metric_families
from test_dhcp_lab import Udhcpc
from test_dhcp_lab import config as dhcp_lab_config
from test_tftp_service import FakePolicy, ask, fetch, settle

from bootd.app import http_app
from bootd.bmc.controller import Outcome, PowerOp
from bootd.bmc.service import PowerService
from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.dhcp.server import DhcpService
from bootd.feed import ChangeFeed
from bootd.keys import SecretBox
from bootd.lifecycle import Lifecycle
from bootd.metrics import Metrics, dhcp_families
from bootd.model.records import LeaseRecord, LeaseState, NewNode
from bootd.model.states import NodeState
from bootd.policy import Policy
from bootd.tasks import Tasks
from bootd.tftp import packet as p
from bootd.tftp.server import TftpService

TOKEN = "operator-token-" + "m" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAC = "52:54:00:00:07:01"
LOCAL = IPv4Address("127.0.0.1")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by (sample name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not yet created (a counter that never moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def _config(tmp_path: Path, extra: str = "") -> Config:
    return parse_config(loopback_config(tmp_path / "state", 8080, """
[[subnets]]
cidr = "127.0.0.0/8"
dynamic_pool = "127.0.0.100-127.0.0.149"
""" + extra))


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


# -- HTTP, the lifecycle and the policy, through the application ----------------------------------

async def test_http_traffic_moves_the_counters(repo: Repository, tmp_path: Path) -> None:
    config, feed, metrics = _config(tmp_path), ChangeFeed(), Metrics()
    policy = Policy(config, repo, feed)
    metrics.watch_policy(policy)
    app = http_app(repo, TOKEN, config, policy=policy, tasks=Tasks(config, repo), feed=feed, metrics=metrics)
    await repo.add_node(NewNode("n1", (MAC,), state=NodeState.DISCOVERING), actor="t")
    await policy.refresh(force=True)
    token = await repo.node_token("n1")
    async with TestClient(TestServer(app)) as client:
        before = parse(await (await client.get("/metrics")).text())
        assert value(before, "bootd_nodes", state="discovering") == 1
        assert value(before, "bootd_nodes", state="discovered") == 0
        # Not the lease holder yet: the policy refuses the script that carries the token.
        assert (await client.get(f"/boot/identity?mac={MAC}")).status == 403
        policy.leased(MAC, LOCAL)
        for _ in range(2):
            assert (await client.get(f"/boot/ipxe?mac={MAC}")).status == 200
        moved = await client.post(f"/api/v1/nodes/n1/transition?token={token}&state=discovered")
        assert moved.status == 200
        replay = await client.post(f"/api/v1/nodes/n1/transition?token={token}&state=discovered",
                                   json={"state": "discovered", "from": "discovering"})
        assert replay.status == 409
        assert (await client.get("/api/v1/nodes/nope", headers=AUTH)).status == 404
        assert (await client.get("/no/such/path")).status == 404
        await policy.refresh(force=True)
        scrape = await client.get("/metrics")  # no token: readable like /healthz
        assert scrape.status == 200
        assert scrape.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await scrape.text()
    after = parse(text)
    get, post = "bootd_http_requests_total", {"method": "POST"}
    assert value(after, get, method="GET", route="/boot/{kind}", status="200") == 2
    assert value(after, get, method="GET", route="/boot/{kind}", status="403") == 1
    assert value(after, get, route="/api/v1/nodes/{name}/transition", status="200", **post) == 1
    assert value(after, get, route="/api/v1/nodes/{name}/transition", status="409", **post) == 1
    assert value(after, get, method="GET", route="/api/v1/nodes/{name}", status="404") == 1
    assert value(after, get, method="GET", route="unmatched", status="404") == 1
    assert value(after, get, method="GET", route="/metrics", status="200") == 1  # the scrape before
    assert value(after, "bootd_http_request_duration_seconds_count", method="GET", route="/boot/{kind}") == 3
    # Route patterns only: no node token, node name or raw path in any label.
    assert token not in text and "/nodes/n1" not in text and "nope" not in text
    assert value(after, "bootd_policy_refused_total", reason="not-lease-holder") == 1
    assert value(after, "bootd_node_transitions_total", from_state="discovering", to_state="discovered") == 1
    assert value(after, "bootd_node_callbacks_total", state="discovered", result="accepted") == 1
    assert value(after, "bootd_node_callbacks_total", state="discovered", result="refused") == 1
    assert value(after, "bootd_nodes", state="discovering") == 0
    assert value(after, "bootd_nodes", state="discovered") == 1


async def test_no_metrics_route_without_metrics(repo: Repository, tmp_path: Path) -> None:
    config = _config(tmp_path)
    app = http_app(repo, TOKEN, config, tasks=Tasks(config, repo))
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/metrics")).status == 404


# -- stalls and BMC operations ----------------------------------------------------------------------

class Bmc:
    async def run(self, op: PowerOp) -> Outcome:
        return Outcome("on")


async def test_stalls_and_bmc_operations(repo: Repository, tmp_path: Path) -> None:
    config = _config(tmp_path, "[lifecycle]\nretries = 1\n[lifecycle.timeouts]\ndiscovering = 60\n")
    metrics = Metrics()
    power = PowerService(config, repo, factory=lambda *a: Bmc(), metrics=metrics)
    await repo.add_node(NewNode("n0", ("52:54:00:00:07:02",)), actor="t")
    await repo.add_node(NewNode("nobmc", ("52:54:00:00:07:03",), state=NodeState.READY), actor="t")
    await repo.set_bmc("n0", "10.0.0.1", "u", "p", actor="t")
    node = await repo.get_node("n0")
    late = node.state_changed_at + timedelta(seconds=61)
    lifecycle = Lifecycle(config, repo, power=power, clock=lambda: late, metrics=metrics)
    (retried,) = await lifecycle.tick()
    assert retried.retries == 1
    assert not (await power.one(PowerOp.STATUS, "nobmc", actor="t")).ok
    samples = parse(metrics.exposition().decode())
    assert value(samples, "bootd_node_stalls_total", state="discovering") == 1
    # A retry restarts the same state: no transition.
    assert not any(name == "bootd_node_transitions_total" for name, _ in samples)
    assert value(samples, "bootd_bmc_operations_total", op="pxe", result="ok") == 1
    assert value(samples, "bootd_bmc_operations_total", op="cycle", result="ok") == 1
    assert value(samples, "bootd_bmc_operations_total", op="status", result="no-bmc") == 1
    assert value(samples, "bootd_bmc_operation_duration_seconds_count", op="cycle") == 1


# -- TFTP over loopback -------------------------------------------------------------------------------

async def test_tftp_transfer_and_refusal(tmp_path: Path) -> None:
    root = tmp_path / "state" / "tftp"
    root.mkdir(parents=True)
    (root / "undionly.kpxe").write_bytes(bytes(i % 253 for i in range(70_001)))
    config = parse_config(loopback_config(tmp_path / "state", 8080, f"[tftp]\nport = {free_port_udp()}\n"))
    metrics = Metrics()
    service = TftpService(config, FakePolicy(), root, metrics=metrics)
    metrics.watch_tftp(service)
    await service.start()
    try:
        _, content = await fetch(service.port, "undionly.kpxe")
        assert len(content) == 70_001
        sock, answer, _ = await ask(service.port, p.request(p.Opcode.RRQ, "missing.bin", "octet"))
        sock.close()
        assert isinstance(answer, p.Error) and answer.code == p.ErrorCode.FILE_NOT_FOUND
        await settle(service)
        samples = parse(metrics.exposition().decode())
    finally:
        await service.stop()
    assert value(samples, "bootd_tftp_requests_total") == 2
    assert value(samples, "bootd_tftp_transfers_started_total") == 1
    assert value(samples, "bootd_tftp_transfers_completed_total") == 1
    assert value(samples, "bootd_tftp_transfers_failed_total") == 0
    assert value(samples, "bootd_tftp_refused_total") == 1
    assert value(samples, "bootd_tftp_refusals_total", reason="not-found") == 1
    assert value(samples, "bootd_tftp_refusals_total", reason="busy") == 0
    assert value(samples, "bootd_tftp_sent_bytes_total") == 70_001
    assert value(samples, "bootd_tftp_transfers_in_flight") == 0
    assert value(samples, "bootd_tftp_transfer_duration_seconds_count", result="complete") == 1


# -- DHCP: the collector over the service's own accounting ---------------------------------------------

class NoLeases:
    async def put_leases(self, leases: object) -> None:
        raise AssertionError("not written in this test")

    async def list_leases(self) -> list[LeaseRecord]:
        return []


def test_dhcp_pools_and_counters(tmp_path: Path) -> None:
    config = _config(tmp_path)
    now = 1_800_000_000.0
    service = DhcpService(config, NoLeases(), Policy(config), clock=lambda: now)

    def lease(ip: str, state: LeaseState, expires: float) -> LeaseRecord:
        return LeaseRecord(IPv4Address(ip), "52:54:00:00:07:" + ip.rsplit(".", 1)[1][-2:].zfill(2), state,
                           datetime.fromtimestamp(expires, UTC))

    service.table.load([lease("127.0.0.100", LeaseState.BOUND, now + 600),
                        lease("127.0.0.101", LeaseState.BOUND, now + 600),
                        lease("127.0.0.102", LeaseState.BOUND, now - 1),       # expired
                        lease("127.0.0.103", LeaseState.RELEASED, now + 600),
                        lease("127.0.0.20", LeaseState.BOUND, now + 600)])     # outside the pool
    service.counters.update({"received-discover": 3, "received-malformed": 1, "sent-offer": 2,
                             "dropped-no-subnet": 1, "offer": 2, "probed": 64, "probe-conflicts": 1})
    metrics = Metrics()
    metrics.watch_dhcp(service)
    samples = parse(metrics.exposition().decode())
    pool = {"subnet": "127.0.0.0/8", "pool": "127.0.0.100-127.0.0.149"}
    assert value(samples, "bootd_dhcp_pool_addresses", **pool) == 50
    assert value(samples, "bootd_dhcp_pool_assigned", **pool) == 2
    assert value(samples, "bootd_dhcp_packets_received_total", type="discover") == 3
    assert value(samples, "bootd_dhcp_packets_received_total", type="malformed") == 1
    assert value(samples, "bootd_dhcp_packets_sent_total", verdict="offer") == 2
    assert value(samples, "bootd_dhcp_packets_dropped_total", reason="no-subnet") == 1
    assert value(samples, "bootd_dhcp_decisions_total", verdict="offer") == 2
    assert value(samples, "bootd_dhcp_decisions_total", verdict="nak") == 0
    assert ("bootd_dhcp_decisions_total", frozenset({("verdict", "nak")})) in samples  # every verdict listed
    assert value(samples, "bootd_dhcp_conflict_probes_total") == 64
    assert value(samples, "bootd_dhcp_conflicts_total") == 1
    assert list(dhcp_families(service))  # the collector reads the service directly, too


# -- no global state ------------------------------------------------------------------------------------

class _Dns:
    """What DnsService counts as it answers (bootd.metrics.DnsSource)."""

    queries = {("A", "NOERROR"): 1, ("PTR", "NXDOMAIN"): 2}
    drops = {"malformed": 3}


def test_two_metrics_objects_do_not_share_series(tmp_path: Path) -> None:
    config = _config(tmp_path)
    one, two = Metrics(), Metrics()
    for m in (one, two):  # the same collector names twice: fine in separate registries
        m.watch_policy(Policy(config))
        m.watch_dhcp(DhcpService(config, NoLeases(), Policy(config)))
    one.http_request("GET", "/boot/{kind}", 200, 0.01)
    one.watch_dns(_Dns())
    assert value(parse(one.exposition().decode()), "bootd_http_requests_total",
                 method="GET", route="/boot/{kind}", status="200") == 1
    scraped = parse(one.exposition().decode())
    assert value(scraped, "bootd_dns_queries_total", qtype="A", rcode="NOERROR") == 1
    assert value(scraped, "bootd_dns_queries_total", qtype="PTR", rcode="NXDOMAIN") == 2
    assert value(scraped, "bootd_dns_dropped_total", reason="malformed") == 3
    assert not any(name.startswith(("bootd_http_requests", "bootd_dns"))
                   for name, _ in parse(two.exposition().decode()))
    assert b"bootd_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


# -- DHCP end to end, in the lab ---------------------------------------------------------------------------

@pytest.mark.lab
def test_dhcp_lab_scrape(lab: Lab, tmp_path: Path) -> None:
    srv = lab.add_host("srv", "198.18.0.1/24")
    b = Bootd(dhcp_lab_config(tmp_path), srv.cmd()).start()
    try:
        u = Udhcpc(lab.add_host("c1"), tmp_path)
        try:
            assert u.wait("bound")["ip"] == "198.18.0.100"
        finally:
            u.stop()
        # Scraped from inside the lab, where the daemon listens.
        text = srv.run(sys.executable, "-c", "import sys, urllib.request; sys.stdout.write(urllib.request"
                       ".urlopen('http://198.18.0.1:8080/metrics', timeout=10).read().decode())").stdout
    finally:
        b.close()
    assert "Traceback" not in b.stderr, b.stderr
    samples = parse(text)
    assert value(samples, "bootd_dhcp_packets_received_total", type="discover") >= 1
    assert value(samples, "bootd_dhcp_packets_received_total", type="request") >= 1
    assert value(samples, "bootd_dhcp_packets_sent_total", verdict="offer") >= 1
    assert value(samples, "bootd_dhcp_packets_sent_total", verdict="ack") >= 1
    assert value(samples, "bootd_dhcp_decisions_total", verdict="ack") >= 1
    pool = {"subnet": "198.18.0.0/24", "pool": "198.18.0.100-198.18.0.199"}
    assert value(samples, "bootd_dhcp_pool_addresses", **pool) == 100
    assert value(samples, "bootd_dhcp_pool_assigned", **pool) == 1
    assert value(samples, "bootd_dhcp_conflict_probes_total") >= 1
    assert value(samples, "bootd_nodes", state="discovering") == 0  # udhcpc is no PXE client
