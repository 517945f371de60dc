"""Rogue DHCP detection in the namespaced lab: `bootd serve` on one host, a rogue
dnsmasq (its own dhcp-range) on another host of the same bridge. bootd's probe
DISCOVER at start finds dnsmasq (active); then busybox udhcpc asks with the
broadcast flag, dnsmasq's broadcast OFFER reaches bootd's NIC and bootd notices it
(passive). The finding is in the API, on the status page, in /metrics and, once, in
bootd's log. Waits are bounded; nothing asserts on time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bootd_proc import WAIT, Bootd
from netlab import Host, Lab

pytestmark = pytest.mark.lab

SERVER, ROGUE = "198.18.0.1", "198.18.0.3"
BASE = f"http://{SERVER}:8080"


def curl(host: Host, *args: str) -> str:
    res = host.run("curl", "-sS", "--fail", *args, timeout=30)
    return res.stdout


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Rig:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.srv = lab.add_host("srv", f"{SERVER}/24")
        self.rogue = lab.add_host("rogue", f"{ROGUE}/24")
        self.client = lab.add_host("c1")
        self.tmp = tmp
        config = tmp / "bootd.toml"
        config.write_text(textwrap.dedent(f"""\
            [server]
            admin_address = "{SERVER}"
            interfaces = ["eth0"]
            state_dir = "{tmp / 'state'}"
            [services]
            tftp = false
            dns = false
            [http]
            listen = "{SERVER}:8080"
            status_public = true
            [ra]
            enabled = false
            [rogue]
            probe_interval = 3600   # one probe, at start; the passive case must not be a probe's answer
            probe_wait = 3
            [[subnets]]
            cidr = "198.18.0.0/24"
            router = "198.18.0.254"
            lease_time = 600
            dynamic_pool = "198.18.0.100-198.18.0.149"
            """))
        # The rogue: a plain DHCP server with a range of its own (no ping check, so it
        # answers within the probe's wait).
        self.dnsmasq = self.rogue.popen(
            "dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces", "--no-ping",
            "--dhcp-range=198.18.0.150,198.18.0.199,255.255.255.0,600", "--dhcp-option=3,198.18.0.3",
            f"--dhcp-leasefile={tmp / 'dnsmasq.leases'}", "--no-resolv", "--no-hosts",
            "--user=root", "--group=root", f"--pid-file={tmp / 'dnsmasq.pid'}",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.rogue_mac = self.rogue.run("cat", "/sys/class/net/eth0/address").stdout.strip()
        self.bootd = Bootd(config, self.srv.cmd()).start()
        self.token = (tmp / "state" / "api-token").read_text().strip()

    def findings(self) -> list[dict[str, Any]]:
        body = curl(self.srv, "-H", f"Authorization: Bearer {self.token}", f"{BASE}/api/v1/dhcp/findings")
        found: list[dict[str, Any]] = json.loads(body)["findings"]
        return found

    def close(self) -> None:
        self.bootd.close()
        if self.dnsmasq.poll() is None:  # only the dnsmasq this rig started, by its PID
            self.dnsmasq.terminate()
            self.dnsmasq.wait(timeout=WAIT)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with Lab() as lab:
        r = Rig(lab, tmp_path_factory.mktemp("rogue"))
        try:
            yield r
        finally:
            r.close()
        assert "Traceback" not in r.bootd.stderr, r.bootd.stderr


def test_the_probe_at_start_finds_the_rogue_server(rig: Rig) -> None:
    (found,) = wait_until(rig.findings, "a finding from the probe")
    assert (found["server_ip"], found["server_mac"], found["interface"], found["method"]) == \
        (ROGUE, rig.rogue_mac, "eth0", "active")
    assert found["offered"].startswith("198.18.0.1")  # from dnsmasq's range 150-199
    assert "router 198.18.0.3" in found["offered"] and "lease 600 s" in found["offered"]


def test_a_clients_exchange_with_the_rogue_is_noticed_passively(rig: Rig) -> None:
    before = wait_until(rig.findings, "the first finding")[0]["count"]
    # -B: the client asks for broadcast replies (RFC 2131 4.1), so dnsmasq's OFFER and ACK
    # reach bootd's NIC; -n -q: one lease attempt, then exit.
    res = rig.client.run("busybox", "udhcpc", "-B", "-n", "-q", "-f", "-i", "eth0", "-t", "5", "-T", "1",
                         "-s", "/bin/true", check=False, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr

    def passive() -> dict[str, Any] | None:
        f = rig.findings()[0]
        return f if f["method"] == "passive" and f["count"] > before else None

    found = wait_until(passive, "a passive finding")
    assert (found["server_ip"], found["server_mac"]) == (ROGUE, rig.rogue_mac)


GARBAGE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("198.18.0.3", 0))
for data in (b"", b"\\x02" * 300, bytes(236) + b"\\x63\\x82\\x53\\x63\\x35\\x01\\x02\\x36\\x09\\x01"):
    s.sendto(data, ("198.18.0.255", 68))
"""


def test_broken_replies_on_the_wire_are_dropped(rig: Rig) -> None:
    rig.rogue.run(sys.executable, "-c", GARBAGE)
    # Still serving: the API answers and the finding is unchanged by the garbage.
    assert rig.findings()[0]["server_ip"] == ROGUE


def test_the_finding_is_on_the_status_page_in_metrics_and_logged_once(rig: Rig) -> None:
    wait_until(rig.findings, "a finding")
    page = curl(rig.srv, f"{BASE}/")
    assert f"Another DHCP server answers on eth0: {ROGUE} ({rig.rogue_mac}) offered 198.18.0.1" in page
    metrics = curl(rig.srv, f"{BASE}/metrics")
    assert "bootd_rogue_dhcp_servers 1.0" in metrics
    answers = next(line for line in metrics.splitlines() if line.startswith("bootd_rogue_dhcp_answers_total"))
    assert float(answers.split()[1]) >= 2  # the probe's offer, the client's offer (and ack)
    rig.bootd.stop()
    warnings = [line for line in rig.bootd.stderr.splitlines()
                if "another DHCP server answers on an admin interface" in line]
    assert len(warnings) == 1, rig.bootd.stderr
    dropped = [line for line in rig.bootd.stderr.splitlines() if "malformed DHCP reply dropped" in line]
    assert len(dropped) == 1, rig.bootd.stderr  # three broken packets, one line a minute
    assert " warning " in warnings[0] and f"server={ROGUE}" in warnings[0] and "method=active" in warnings[0]
