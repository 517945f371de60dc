"""DNS in the namespaced lab, asked by BIND's `dig`: `bootd serve` answers A, PTR and
NXDOMAIN-with-SOA for its nodes and BMCs, forwards other names to a second resolver
(dnsmasq in its own namespace), truncates an answer that does not fit UDP so that
dig retries over TCP, and answers a new lease and a rename in the very next query.
Waits are bounded; nothing asserts on time.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bootd_proc import WAIT, Bootd
from conftest import REPO
from netlab import Host, Lab

pytestmark = pytest.mark.lab
SERVER, UPSTREAM = "198.18.0.1", "198.18.0.3"
BASE = f"http://{SERVER}:8080"
MAC = "52:54:00:aa:00:01"
TXT = "x" * 240  # eight of these do not fit 1232 bytes


def dig(host: Host, *args: str) -> str:
    res = host.run("dig", f"@{SERVER}", "+time=2", "+tries=2", *args, check=False, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def short(host: Host, *args: str) -> list[str]:
    return dig(host, "+short", *args).split()


def curl(host: Host, *args: str) -> tuple[int, str]:
    res = host.run("curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args, check=False, timeout=30)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


class Rig:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.srv = lab.add_host("srv", f"{SERVER}/24")
        self.cli = lab.add_host("cli", "198.18.0.2/24")
        self.up = lab.add_host("up", f"{UPSTREAM}/24")
        self.node = lab.add_host("node")
        self.tmp = tmp
        self.config = tmp / "bootd.toml"
        self.config.write_text(textwrap.dedent(f"""\
            [server]
            admin_address = "{SERVER}"
            interfaces = ["eth0"]
            state_dir = "{tmp / 'state'}"
            [services]
            tftp = false
            [http]
            listen = "{SERVER}:8080"
            [dns]
            upstreams = ["{UPSTREAM}"]
            [[subnets]]
            cidr = "198.18.0.0/24"
            domain = "rack1.lab"
            dns_servers = ["{SERVER}"]
            static_range = "198.18.0.10-198.18.0.49"
            dynamic_pool = "198.18.0.100-198.18.0.199"
            """))
        # The second resolver: one name, and a TXT set too big for one UDP answer of ours.
        self.up.popen("dnsmasq", "--no-daemon", "--port=53", f"--listen-address={UPSTREAM}",
                      "--bind-interfaces", "--no-resolv", "--no-hosts", "--edns-packet-max=4096",
                      "--address=/upstream.test/192.0.2.7",
                      *(f"--txt-record=big.test,{i}{TXT}" for i in range(8)),
                      "--user=root", "--group=root", f"--pid-file={tmp / 'dnsmasq.pid'}",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (tmp / "bmc-password").write_text("secret\n")
        self.srv.run(sys.executable, "-m", "bootd", "nodes", "add", "web1", "--config", str(self.config),
                     "--mac", "52:54:00:00:00:10", "--ip", "198.18.0.10", "--bmc-address", "198.18.0.200",
                     "--bmc-user", "admin", "--bmc-password-file", str(tmp / "bmc-password"), cwd=REPO)
        self.bootd = Bootd(self.config, self.srv.cmd()).start()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with Lab() as lab:
        r = Rig(lab, tmp_path_factory.mktemp("dns"))
        try:
            yield r
        finally:
            r.bootd.close()
        assert "Traceback" not in r.bootd.stderr, r.bootd.stderr


def test_nodes_bmcs_and_reverse_names(rig: Rig) -> None:
    assert short(rig.cli, "web1.rack1.lab") == ["198.18.0.10"]
    assert short(rig.cli, "WEB1-BMC.rack1.lab") == ["198.18.0.200"]
    assert short(rig.cli, "bootd.rack1.lab") == [SERVER]
    assert short(rig.cli, "-x", "198.18.0.10") == ["web1.rack1.lab."]
    assert short(rig.cli, "-x", "198.18.0.200") == ["web1-bmc.rack1.lab."]
    full = dig(rig.cli, "web1.rack1.lab")
    assert re.search(r"flags: qr aa rd ra;", full) and re.search(r"web1\.rack1\.lab\.\s+30\s+IN\s+A", full)


def test_missing_names_are_authoritative_nxdomain_with_the_soa(rig: Rig) -> None:
    out = dig(rig.cli, "nobody.rack1.lab")
    assert "status: NXDOMAIN" in out and "flags: qr aa" in out
    assert re.search(r";; AUTHORITY SECTION:\nrack1\.lab\.\s+30\s+IN\s+SOA\s+bootd\.rack1\.lab\.", out), out
    private = dig(rig.cli, "-x", "10.1.2.3")  # RFC 6303: never forwarded
    assert "status: NXDOMAIN" in private and "10.in-addr.arpa." in private


def test_other_names_go_to_the_upstream_resolver(rig: Rig) -> None:
    assert short(rig.cli, "upstream.test") == ["192.0.2.7"]
    assert "status: REFUSED" in dig(rig.cli, "elsewhere.test")  # dnsmasq's own answer, passed on


def test_an_answer_too_big_for_udp_is_truncated_then_served_over_tcp(rig: Rig) -> None:
    udp = dig(rig.cli, "+ignore", "+bufsize=4096", "big.test", "TXT")
    assert re.search(r"flags: qr tc rd ra;", udp) and "QUERY: 1, ANSWER: 0" in udp, udp
    assert "OPT PSEUDOSECTION" in udp and "udp: 1232" in udp
    full = dig(rig.cli, "+bufsize=4096", "big.test", "TXT")
    assert "Truncated, retrying in TCP mode" in full and "ANSWER: 8" in full, full
    assert "ANSWER: 8" in dig(rig.cli, "+tcp", "big.test", "TXT")


def test_a_lease_and_a_rename_answer_in_the_next_query(rig: Rig) -> None:
    # The host's NIC answers ARP as the MAC it asks DHCP for: bootd checks that before
    # it hands the lease holder a script with the node's token (bootd.neighbours).
    rig.node.run("ip", "link", "set", "eth0", "address", MAC)
    res = rig.node.run(sys.executable, str(REPO / "tests" / "dhcp_client.py"), "--mac", MAC, "--request",
                       "--wait", "2", "--vendor", "PXEClient:Arch:00000:UNDI:002001", "--user-class", "iPXE",
                       timeout=120)
    ack = {r["type"]: r for r in json.loads(res.stdout)["replies"]}["ack"]
    assert ack["options"]["name_server"] == SERVER  # DHCP names bootd as DNS server now that it serves DNS
    leased = ack["yiaddr"]
    # The lease answers at once under the MAC's stable name ...
    assert short(rig.cli, "d525400aa0001.rack1.lab") == [leased]
    # ... and under the node bootd recorded for it once that write lands (bounded wait).
    name = f"node-{MAC.replace(':', '')}"
    deadline = time.monotonic() + WAIT
    while short(rig.cli, f"{name}.rack1.lab") != [leased] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert short(rig.cli, f"{name}.rack1.lab") == [leased]
    assert short(rig.cli, "-x", leased) == [f"{name}.rack1.lab."]

    # The node reports in; the operator allocates it under a new name: the next answer has it.
    rig.node.run("ip", "addr", "add", f"{leased}/24", "dev", "eth0")
    code, script = curl(rig.node, ack["file"])
    assert code == 200, script
    token = re.search(r"bootd\.token=(\S+)", script).group(1)  # type: ignore[union-attr]
    json_type = ["-H", "Content-Type: application/json"]
    code, body = curl(rig.node, "-H", f"Authorization: Bearer {token}", *json_type, "-X", "POST",
                      "--data", json.dumps({"state": "discovered"}),
                      f"{BASE}/api/v1/nodes/{name}/transition")
    assert code == 200, body
    operator = (rig.tmp / "state" / "api-token").read_text().strip()
    code, body = curl(rig.cli, "-H", f"Authorization: Bearer {operator}", *json_type, "-X", "POST",
                      "--data", json.dumps({"profile": "rocky-9", "name": "web2"}),
                      f"{BASE}/api/v1/nodes/{name}/allocate")
    assert code == 200, body
    assert short(rig.cli, "web2.rack1.lab") == [leased]
    assert "status: NXDOMAIN" in dig(rig.cli, f"{name}.rack1.lab")
    assert short(rig.cli, "-x", leased) == ["web2.rack1.lab."]
