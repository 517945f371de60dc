"""Several admin nodes, one inventory (issue 14), in the namespaced lab.

One PostgreSQL (Debian's binaries, started here inside a lab namespace so the
daemons can reach it), two bootd daemons in two server namespaces, each the
DHCP server of its own rack subnet behind an ISC dhcrelay:

    db 198.18.0.5    s1 198.18.0.1 (admin-1)    s2 198.18.0.2 (admin-2)      br0
    relay1 198.18.0.11 | 198.19.1.1  -> rack 1 (br1), relayed to s1
    relay2 198.18.0.12 | 198.19.2.1  -> rack 2 (br2), relayed to s2

Checked: a daemon claiming a served subnet refuses to start with the reason;
busybox udhcpc clients behind each relay get their lease from their own
daemon; each daemon's API and status page list the nodes of both racks (the
status page of the other daemon follows through LISTEN/NOTIFY at once: its own
poll runs every 60 s, longer than any wait here); and the issue's headline:
simulated machines of both racks (bench/fleet/broadcast.py, behind the same
relays) installed to `ready` by one `bootd rollout start` while the two daemons
share [waves] max_global = 2, which the event log, replayed, shows was never
exceeded. One lab for the module; every wait bounded, nothing timed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from bootd_proc import WAIT, Bootd
from conftest import REPO, _pg_bindir
from cryptography.fernet import Fernet
from netlab import Host, Lab, cleanup_stale
from test_dhcp_lab import Udhcpc

from bootd.model.admission import holds
from bootd.model.states import NodeState

pytestmark = [pytest.mark.lab, pytest.mark.postgres]

DB_ADDRESS, DB_PORT = "198.18.0.5", 5432
DB_URL = f"postgresql+asyncpg://postgres@{DB_ADDRESS}:{DB_PORT}/postgres"
PXE_VENDOR = "PXEClient:Arch:00000:UNDI:002001"
MAX_GLOBAL = 2  # [waves] max_global, shared by both daemons
POOL = "128/26"  # each rack's dynamic pool: 198.19.n.128-191


class Postgres:
    """A private cluster run as `postgres` inside a lab namespace, listening on the lab only."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.dir = Path(tempfile.mkdtemp(prefix="bootd-mdpg-"))  # postgres must traverse it: not tmp_path
        pg = pwd.getpwnam("postgres")
        os.chown(self.dir, pg.pw_uid, pg.pw_gid)
        self.bindir = _pg_bindir()
        self.as_pg = ["runuser", "-u", "postgres", "--"]

    def start(self) -> None:
        subprocess.run([*self.as_pg, str(self.bindir / "initdb"), "-D", str(self.dir / "db"), "-A", "trust",
                        "-U", "postgres", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        with open(self.dir / "db" / "pg_hba.conf", "a") as hba:
            hba.write("host all all 198.18.0.0/15 trust\n")
        opts = f"-c listen_addresses={DB_ADDRESS} -p {DB_PORT} -k {self.dir} -c fsync=off"
        self.host.run(*self.as_pg, str(self.bindir / "pg_ctl"), "-D", str(self.dir / "db"), "-o", opts,
                      "-w", "-t", "60", "-l", str(self.dir / "log"), "start")

    def sql(self, query: str) -> list[list[str]]:
        out = self.host.run(*self.as_pg, str(self.bindir / "psql"), "-h", DB_ADDRESS, "-p", str(DB_PORT),
                            "-U", "postgres", "-At", "-F", "\t", "-c", query).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def stop(self) -> None:
        self.host.run(*self.as_pg, str(self.bindir / "pg_ctl"), "-D", str(self.dir / "db"), "-m", "fast",
                      "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def daemon_config(tmp: Path, n: int, *, subnet: int | None = None, port: int = 8080, extra: str = "") -> Path:
    """admin-n on 198.18.0.n, serving rack subnet 198.19.<subnet>.0/24 (its own by default)."""
    subnet = n if subnet is None else subnet
    state = tmp / f"state-{n}-{port}"
    state.mkdir(exist_ok=True)
    # Two admin nodes share one inventory, so they share its secret (sealed tokens) and the API token.
    shutil.copy(tmp / "secret.key", state / "secret.key")
    path = tmp / f"admin-{n}-{port}.toml"
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "198.18.0.{n}"
        interfaces = ["eth0"]
        state_dir = "{state}"
        database_url = "{DB_URL}"
        daemon_id = "admin-{n}"
        [services]
        tftp = false
        dns = false
        [http]
        listen = "198.18.0.{n}:{port}"
        api_token_file = "{tmp / 'api-token'}"
        status_public = true
        [dhcp]
        conflict_check = false
        [rogue]
        watch = false
        probe_interval = 0
        [ra]
        enabled = false
        [waves]
        max_global = {MAX_GLOBAL}
        wait = 1
        {extra}
        [[subnets]]
        cidr = "198.19.{subnet}.0/24"
        router = "198.19.{subnet}.1"
        lease_time = 600
        dynamic_pool = "198.19.{subnet}.128-198.19.{subnet}.191"
        """))
    os.chmod(state / "secret.key", 0o600)
    return path


@dataclass
class MultiLab:
    lab: Lab
    tmp: Path
    db: Postgres
    servers: dict[int, Host]
    racks: dict[int, Host]   # a client-side host per rack (the relay's rack segment)
    daemons: dict[int, Bootd]

    @property
    def token(self) -> str:
        return (self.tmp / "api-token").read_text().strip()

    def api(self, n: int, path: str, *, method: str = "GET", body: Any = None) -> Any:
        data = [] if body is None else ["-d", json.dumps(body)]
        out = self.servers[n].run("curl", "-sf", "-X", method, "-H", f"Authorization: Bearer {self.token}",
                                  *data, f"http://198.18.0.{n}:8080{path}").stdout
        return json.loads(out)

    def states(self, n: int = 1) -> dict[str, str]:
        return {x["name"]: x["state"] for x in self.api(n, "/api/v1/nodes")["nodes"]}

    def node_names(self, n: int) -> set[str]:
        return {x["name"] for x in self.api(n, "/api/v1/nodes")["nodes"]}

    def page(self, n: int, path: str = "/") -> str:
        return self.servers[n].run("curl", "-sf", f"http://198.18.0.{n}:8080{path}").stdout


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiLab]:
    cleanup_stale()
    tmp = tmp_path_factory.mktemp("multi")
    (tmp / "secret.key").write_bytes(Fernet.generate_key())
    (tmp / "api-token").write_text("multi-daemon-lab-operator-token-0123456789\n")
    os.chmod(tmp / "api-token", 0o600)
    with Lab() as lab:
        db_host = lab.add_host("db", f"{DB_ADDRESS}/24")
        db = Postgres(db_host)
        servers = {n: lab.add_host(f"s{n}", f"198.18.0.{n}/24") for n in (1, 2)}
        racks: dict[int, Host] = {}
        for n in (1, 2):
            lab.add_switch(f"br{n}")
            relay = lab.add_host(f"relay{n}", f"198.18.0.{10 + n}/24")
            lab.link(relay, f"br{n}", f"198.19.{n}.1/24")
            relay.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            relay.popen("dhcrelay", "-d", "-4", "-a", "-iu", "eth0", "-id", "eth1", f"198.18.0.{n}",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for srv in servers.values():
                srv.run("ip", "route", "add", f"198.19.{n}.0/24", "via", f"198.18.0.{10 + n}")
            racks[n] = relay
        daemons: dict[int, Bootd] = {}
        db.start()
        try:
            for n in (1, 2):
                daemons[n] = Bootd(daemon_config(tmp, n), servers[n].cmd()).start()
            yield MultiLab(lab, tmp, db, servers, racks, daemons)
        finally:
            for d in daemons.values():
                d.close()
            for d in daemons.values():
                assert "Traceback" not in d.stderr, d.stderr
            db.stop()


# -- (a) one server per subnet ---------------------------------------------------------------------------

def test_a_daemon_claiming_a_served_subnet_refuses_to_start(multi: MultiLab) -> None:
    # admin-3 on s2's host, configured for rack 1's subnet (a copy-paste mistake in its config).
    path = daemon_config(multi.tmp, 3, subnet=1, port=8081)
    path.write_text(path.read_text().replace('admin_address = "198.18.0.3"', 'admin_address = "198.18.0.2"')
                    .replace("198.18.0.3:8081", "198.18.0.2:8081"))
    argv = multi.servers[2].cmd(sys.executable, "-m", "bootd", "serve", "--config", str(path))
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=WAIT)
    assert res.returncode != 0
    assert ("cannot start: subnet 198.19.1.0/24 is served by daemon admin-1 (198.18.0.1), heartbeat "
            in res.stderr)
    assert "two DHCP servers on one subnet would hand out the same addresses" in res.stderr
    assert "Traceback" not in res.stderr
    # The running daemons keep their claims.
    assert sorted(multi.db.sql("SELECT cidr, daemon, address FROM subnet_claims")) == [
        ["198.19.1.0/24", "admin-1", "198.18.0.1"], ["198.19.2.0/24", "admin-2", "198.18.0.2"]]


# -- (b) and (c): leases from each rack's own daemon; one inventory seen by both ------------------------

def test_each_rack_leases_from_its_daemon_and_both_daemons_see_both_racks(multi: MultiLab) -> None:
    clients = {n: multi.lab.add_host(f"c{n}", switch=f"br{n}") for n in (1, 2)}
    macs = {n: clients[n].run("cat", "/sys/class/net/eth0/address").stdout.strip() for n in (1, 2)}
    runs = {n: Udhcpc(clients[n], multi.tmp, "-V", PXE_VENDOR) for n in (1, 2)}
    try:
        bound = {n: runs[n].wait("bound") for n in (1, 2)}
    finally:
        for u in runs.values():
            u.stop()
    for n in (1, 2):
        assert IPv4Address(bound[n]["ip"]) in IPv4Network(f"198.19.{n}.{POOL}")  # the rack's pool
        assert bound[n]["serverid"] == f"198.18.0.{n}"     # from its own daemon, through its relay
        assert bound[n]["router"] == f"198.19.{n}.1"
    leases = {(row[0], row[1]) for row in multi.db.sql("SELECT ip, mac FROM leases WHERE state = 'bound'")}
    assert {(bound[n]["ip"], macs[n]) for n in (1, 2)} <= leases
    # Each PXE client became a node, registered by the daemon that answered it.
    names = {n: "node-" + macs[n].replace(":", "") for n in (1, 2)}
    for n in (1, 2):
        wait_until(lambda n=n: set(names.values()) <= multi.node_names(n), f"admin-{n}'s API, both racks")
    # The status page of each daemon shows the other's node: its snapshot follows the other
    # daemon's change through LISTEN/NOTIFY (its own poll is every 60 s).
    for n, other in ((1, 2), (2, 1)):
        wait_until(lambda n=n, other=other: names[other] in multi.page(n), f"admin-{n}'s status page")


# -- (d) one rollout over both racks under one global wave limit --------------------------------------

MACHINES_PER_RACK = 3
TIMING = {"kernel": 0.2, "task": 0.1, "install": 1.0, "os_boot": 0.2, "poll": 1.0, "reboot": 0.5,
          "http_timeout": 10.0}


def machines_of(rack: int) -> list[str]:
    return [f"52:54:00:d0:{rack:02x}:{i:02x}" for i in range(1, MACHINES_PER_RACK + 1)]


def start_machines(multi: MultiLab, rack: int) -> subprocess.Popen[str]:
    """Simulated machines (bench/fleet/broadcast.py) on rack `rack`'s segment, behind its dhcrelay;
    the pool is theirs to speak from (AnyIP), the relay is their router."""
    host = multi.lab.add_host(f"m{rack}", f"198.19.{rack}.2/24", switch=f"br{rack}")
    host.run("ip", "route", "add", "default", "via", f"198.19.{rack}.1")
    host.run("ip", "route", "add", "local", f"198.19.{rack}.{POOL}", "dev", "lo")
    spec = {"macs": machines_of(rack), "interface": "eth0", "until": "ready", "timing": TIMING,
            "deadline": 150.0}
    return host.popen(sys.executable, "-m", "bench.fleet.broadcast", json.dumps(spec), cwd=REPO,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def most_slots_held(rows: list[list[str]]) -> int:
    """The most wave slots held at once, replaying the event log in id order: a node holds
    a slot from its `admitted slot=S` event until a move to a state that does not hold S
    (bootd.model.admission.holds). Id order, not time (tests/waves_check.py replays by
    time): an admission's time is taken before it waits for the admission lock, so a slot
    freed during that wait can end "after" the admission it made room for; its event id
    cannot, since an admission's event is inserted after it read that move committed."""
    held: dict[str, NodeState] = {}  # node id -> slot
    peak = 0
    for node_id, kind, to_state, message in rows:
        if kind == "admitted":
            held[node_id] = NodeState(message.removeprefix("slot="))
            peak = max(peak, len(held))
        elif to_state and node_id in held and not holds(held[node_id], NodeState(to_state)):
            del held[node_id]
    return peak


def test_one_rollout_over_both_racks_holds_the_global_limit(multi: MultiLab) -> None:
    """The issue's headline: machines of both racks, each rack booting from its own daemon,
    installed to `ready` by one `bootd rollout start`, never more than MAX_GLOBAL at once."""
    names = {n: ["node-" + mac.replace(":", "") for mac in machines_of(n)] for n in (1, 2)}
    sims = {n: start_machines(multi, n) for n in (1, 2)}
    try:
        wait_until(lambda: (lambda now: all(now.get(x) == "discovered" for x in names[1] + names[2]))(
            multi.states()), "every machine discovered")
        for n in (1, 2):  # the operator puts each rack's machines in their rack, on either daemon
            for name in names[n]:
                multi.api(n, f"/api/v1/nodes/{name}", method="PATCH", body={"rack": f"r{n}"})
        # The one command, on admin-1's host: both racks, one rollout; exit 0 once all are ready.
        argv = multi.servers[1].cmd(sys.executable, "-m", "bootd", "rollout", "start", "--rack", "r1",
                                    "--rack", "r2", "--profile", "ubuntu-24.04", "--json",
                                    "--config", str(multi.daemons[1].config))
        res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=150)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        results = {}
        for n, sim in sims.items():
            out, _ = sim.communicate(timeout=WAIT)
            results[n] = json.loads(out.strip().splitlines()[-1])["result"]
        assert all(r["all_reached"] for r in results.values()), results
        for n, r in results.items():  # figures for the reader (-s), never asserted on
            print(f"rack {n}: first DISCOVER to all ready {r['first_discover_to_all']} s, "
                  f"p50 {r['to_goal_p50']} s, waits {r['counts'].get('waits', 0)}")
    finally:
        for sim in sims.values():
            if sim.poll() is None:
                sim.terminate()
                sim.communicate(timeout=WAIT)
    rows = multi.db.sql("SELECT node_id, kind, coalesce(to_state, ''), message FROM events "
                        "WHERE kind = 'admitted' OR to_state IS NOT NULL ORDER BY id")
    admitted = multi.db.sql("SELECT actor, message, count(*) FROM events WHERE kind = 'admitted' "
                            "GROUP BY actor, message ORDER BY actor, message")
    # Every node was admitted to its installer's boot once, by the daemon it boots from: both
    # daemons admitted under the one limit. (The hardware-install tasks run in the discovery
    # image already booted, with no boot to admit: bootd.model.admission SLOT_FOR.)
    assert admitted == [[f"admin-{n}", "slot=installing", str(MACHINES_PER_RACK)] for n in (1, 2)]
    # The limit was needed (machines waited their turn) and held across the two daemons.
    assert sum(r["counts"].get("waits", 0) for r in results.values()) > 0
    assert most_slots_held(rows) == MAX_GLOBAL


def test_slot_replay_counts_overlapping_admissions() -> None:
    """The replay itself: three overlapping slots are seen as three; a freed slot is not."""
    rows = [["1", "admitted", "", "slot=installing"], ["2", "admitted", "", "slot=installing"],
            ["1", "transition", "installing", ""],  # still holds its slot
            ["1", "transition", "installed", ""],   # frees it
            ["3", "admitted", "", "slot=installing"]]
    assert most_slots_held(rows) == 2
    assert most_slots_held([*rows[:2], ["3", "admitted", "", "slot=installing"]]) == 3
