"""DHCP against real clients in the namespaced lab: ISC dhclient, busybox udhcpc,
isc-dhcp-relay's dhcrelay, dnsmasq beside our proxy, and scapy-crafted PXE
clients. Waits are bounded; nothing asserts on time.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bootd_proc import WAIT, Bootd
from conftest import REPO
from netlab import Host, Lab

pytestmark = pytest.mark.lab

SUBNETS = """
[[subnets]]
cidr = "198.18.0.0/24"
router = "198.18.0.254"
dns_servers = ["198.18.0.53"]
domain = "lab.test"
lease_time = 600
static_range = "198.18.0.10-198.18.0.49"
dynamic_pool = "198.18.0.100-198.18.0.199"

[[subnets]]
cidr = "198.19.0.0/16"
router = "198.19.0.1"
lease_time = 600
dynamic_pool = "198.19.1.1-198.19.1.250"
"""

# Client-side scripts: record each event's environment; configure only the lab NIC,
# so no client ever touches this machine's resolv.conf or routes.
UDHCPC_SCRIPT = """#!/bin/sh
env | sort > "{dir}/$1.$$.env"
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/${{mask:-24}}" dev "$interface";;
esac
"""
DHCLIENT_SCRIPT = """#!/bin/sh
env | sort > "{dir}/$reason.$$.env"
case "$reason" in BOUND|RENEW|REBOOT) ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface";; esac
exit 0
"""


def config(tmp: Path, dhcp: str = "") -> Path:
    path = tmp / "bootd.toml"
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "198.18.0.1"
        interfaces = ["eth0"]
        state_dir = "{tmp / 'state'}"
        [services]
        tftp = false
        dns = false
        [http]
        listen = "198.18.0.1:8080"
        [boot]
        uefi_arm64 = "ipxe-arm64.efi"
        [dhcp]
        {dhcp}
        """) + SUBNETS)
    return path


@pytest.fixture
def server(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., Bootd]]:
    started: list[Bootd] = []

    def start(dhcp: str = "", host: str = "srv") -> Bootd:
        srv = lab.hosts.get(host) or lab.add_host(host, "198.18.0.1/24")
        path = tmp_path / "bootd.toml"
        if not path.exists():
            config(tmp_path, dhcp)
        b = Bootd(path, srv.cmd()).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.close()
    for b in started:
        assert "Traceback" not in b.stderr, b.stderr


def events(directory: Path, kind: str) -> list[dict[str, str]]:
    out = []
    for f in sorted(directory.glob(f"{kind}.*.env"), key=lambda p: p.stat().st_mtime):
        out.append(dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line))
    return out


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def mac_of(host: Host, ifname: str = "eth0") -> str:
    return host.run("cat", f"/sys/class/net/{ifname}/address").stdout.strip()


class Udhcpc:
    def __init__(self, host: Host, tmp: Path, *args: str) -> None:
        self.dir = tmp / f"udhcpc-{host.role}"
        self.dir.mkdir()
        script = self.dir / "script"
        script.write_text(UDHCPC_SCRIPT.format(dir=self.dir))
        script.chmod(0o755)
        self.proc = host.popen("busybox", "udhcpc", "-f", "-i", "eth0", "-s", str(script), "-t", "20",
                               "-T", "1", "-A", "1", *args, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)

    def wait(self, kind: str, count: int = 1) -> dict[str, str]:
        return wait_until(lambda: len(events(self.dir, kind)) >= count and events(self.dir, kind)[-1],
                          f"udhcpc {kind}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=WAIT)
        return str(out)


def leases(b: Bootd) -> dict[str, dict[str, Any]]:
    return {x["mac"]: x for x in json.loads(b.cli("leases", "list", "--json"))["leases"]}


def scapy_client(host: Host, *args: str) -> dict[str, Any]:
    res = host.run(sys.executable, str(REPO / "tests" / "dhcp_client.py"), *args, timeout=120)
    return json.loads(res.stdout)


# -- tests ------------------------------------------------------------------------


def test_dhclient_gets_and_releases_a_lease(lab: Lab, server: Callable[..., Bootd], tmp_path: Path) -> None:
    b = server()
    c1 = lab.add_host("c1")
    d = tmp_path / "dhclient"
    d.mkdir()
    (d / "script").write_text(DHCLIENT_SCRIPT.format(dir=d))
    (d / "script").chmod(0o755)
    common = ["-4", "-lf", str(d / "leases"), "-pf", str(d / "pid"), "-sf", str(d / "script")]
    c1.run("dhclient", "-1", "-v", *common, "eth0", timeout=60)
    bound = wait_until(lambda: events(d, "BOUND"), "dhclient BOUND")[-1]
    assert bound["new_ip_address"] == "198.18.0.100"
    assert bound["new_subnet_mask"] == "255.255.255.0"
    assert bound["new_routers"] == "198.18.0.254"
    assert bound["new_domain_name"] == "lab.test"
    assert bound["new_domain_name_servers"] == "198.18.0.53"
    assert "198.18.0.100/24" in c1.run("ip", "-4", "addr", "show", "eth0").stdout
    lease = leases(b)[mac_of(c1)]
    assert (lease["ip"], lease["state"]) == ("198.18.0.100", "bound")
    # -r: release the lease and stop the dhclient started above (by its pid file).
    c1.run("dhclient", "-r", *common, "eth0", timeout=60)
    wait_until(lambda: leases(b)[mac_of(c1)]["state"] == "released", "lease released")


def test_udhcpc_binds_renews_releases(lab: Lab, server: Callable[..., Bootd], tmp_path: Path) -> None:
    b = server()
    c1 = lab.add_host("c1")
    u = Udhcpc(c1, tmp_path)
    try:
        bound = u.wait("bound")
        assert bound["ip"] == "198.18.0.100"
        assert bound["router"] == "198.18.0.254"
        assert bound["dns"].strip() == "198.18.0.53"
        assert bound["domain"] == "lab.test"
        assert bound["lease"] == "600"
        first = leases(b)[mac_of(c1)]["expires_at"]
        time.sleep(1.1)  # so that the renewed expiry differs at second resolution
        u.signal(signal.SIGUSR1)  # renew now: a unicast REQUEST with ciaddr (RENEWING)
        renewed = u.wait("renew")
        assert renewed["ip"] == "198.18.0.100"
        wait_until(lambda: leases(b)[mac_of(c1)]["expires_at"] > first, "renewed expiry")
        u.signal(signal.SIGUSR2)  # release
        wait_until(lambda: leases(b)[mac_of(c1)]["state"] == "released", "lease released")
    finally:
        u.stop()


def test_known_node_gets_reserved_address_and_name(lab: Lab, server: Callable[..., Bootd],
                                                   tmp_path: Path) -> None:
    c1 = lab.add_host("c1")
    config(tmp_path)
    subprocess.run([sys.executable, "-m", "bootd", "nodes", "add", "rack1-n07", "--mac", mac_of(c1),
                    "--ip", "198.18.0.17", "--config", str(tmp_path / "bootd.toml")],
                   cwd=REPO, check=True, capture_output=True, timeout=WAIT)
    server()
    u = Udhcpc(c1, tmp_path)
    try:
        bound = u.wait("bound")
        assert bound["ip"] == "198.18.0.17"
        assert bound["hostname"] == "rack1-n07"
    finally:
        u.stop()


@pytest.mark.parametrize(("args", "file", "vendor"), [
    (["--vendor", "PXEClient:Arch:00000:UNDI:002001"], "undionly.kpxe", None),
    (["--vendor", "PXEClient:Arch:00007:UNDI:003000", "--arch", "7"], "snponly.efi", None),
    (["--vendor", "PXEClient:Arch:00011:UNDI:003000", "--arch", "11"], "ipxe-arm64.efi", None),
    (["--vendor", "HTTPClient:Arch:00016:UNDI:003000", "--arch", "16"],
     "http://198.18.0.1:8080/tftp/snponly.efi", "HTTPClient"),
    (["--vendor", "PXEClient:Arch:00000:UNDI:002001", "--user-class", "iPXE"],
     "http://198.18.0.1:8080/boot/ipxe?mac={mac}", None),
])
def test_pxe_clients_get_their_loader_and_are_recorded(lab: Lab, server: Callable[..., Bootd],
                                                       args: list[str], file: str,
                                                       vendor: str | None) -> None:
    b = server()
    c1 = lab.add_host("c1")
    mac = "52:54:00:a1:b2:c3"
    result = scapy_client(c1, "--mac", mac, "--request", "--wait", "2", *args)
    by_type = {r["type"]: r for r in result["replies"]}
    offer, ack = by_type["offer"], by_type["ack"]
    assert offer["yiaddr"] == ack["yiaddr"] == "198.18.0.100"
    for reply in (offer, ack):
        assert reply["file"] == file.format(mac=mac)
        assert reply["siaddr"] == "198.18.0.1"
        assert reply["options"].get("vendor_class_id") == (vendor.encode().hex() if vendor else None)
    # A machine nobody registered booted: it is now in the inventory, discovering.
    node = wait_until(lambda: [n for n in json.loads(b.cli("nodes", "list", "--json"))["nodes"]
                               if n["interfaces"][0]["mac"] == mac], "node recorded")[0]
    assert node["name"] == "node-5254" + "00a1b2c3"
    assert node["state"] == "discovering"


def test_relay_serves_another_segment_and_records_location(lab: Lab, server: Callable[..., Bootd],
                                                           tmp_path: Path) -> None:
    srv = lab.add_host("srv", "198.18.0.1/24")
    lab.add_switch("br1")
    relay = lab.add_host("relay", "198.18.0.2/24")
    lab.link(relay, "br1", "198.19.0.1/16")
    srv.run("ip", "route", "add", "198.19.0.0/16", "via", "198.18.0.2")
    lab_relay = relay.popen("dhcrelay", "-d", "-4", "-a", "-iu", "eth0", "-id", "eth1", "198.18.0.1",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Behind the relay a host squats on the pool's first address; ARP cannot see it
    # from the server, so the conflict check pings it (through the relay, which routes).
    relay.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    squat = lab.add_host("squat", "198.19.1.1/16", switch="br1")
    squat.run("ip", "route", "add", "default", "via", "198.19.0.1")
    b = server()
    c1 = lab.add_host("c1", switch="br1")
    u = Udhcpc(c1, tmp_path)
    try:
        bound = u.wait("bound")
        assert bound["ip"] == "198.19.1.2"
        assert bound["router"] == "198.19.0.1"
        assert bound["subnet"] == "255.255.0.0"
    finally:
        u.stop()
    mac = "52:54:00:77:00:01"
    c2 = lab.add_host("c2", switch="br1")
    result = scapy_client(c2, "--mac", mac, "--vendor", "PXEClient:Arch:00000:UNDI:002001", "--request")
    ack = next(r for r in result["replies"] if r["type"] == "ack")
    assert ack["yiaddr"].startswith("198.19.1.")
    assert ack["file"] == "undionly.kpxe"
    node = wait_until(lambda: [n for n in json.loads(b.cli("nodes", "list", "--json"))["nodes"]
                               if n["interfaces"][0]["mac"] == mac and n["location"]], "node location")[0]
    assert node["location"].endswith("/eth1")  # dhcrelay -a: circuit-id is the receiving interface
    assert lab_relay.poll() is None
    b.stop()
    assert "address in use by a host we did not give it to; skipped ip=198.19.1.1" in b.stderr


def test_proxy_beside_dnsmasq(lab: Lab, server: Callable[..., Bootd], tmp_path: Path) -> None:
    dnsm = lab.add_host("dnsm", "198.18.0.3/24")
    # --no-ping: dnsmasq otherwise pings an address for up to 3 s before offering it, as long
    # as the client's whole wait.
    dnsm.popen("dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces",
               "--no-ping", "--dhcp-range=198.18.0.150,198.18.0.199,255.255.255.0,600",
               f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}", "--no-resolv", "--no-hosts",
               "--user=root", "--group=root", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server('mode = "proxy"')
    c1 = lab.add_host("c1")
    pxe = ["--vendor", "PXEClient:Arch:00000:UNDI:002001", "--arch", "0"]
    result = scapy_client(c1, "--mac", "52:54:00:00:aa:01", "--request", *pxe)
    offers = {r["source"]: r for r in result["replies"] if r["type"] == "offer"}
    assert set(offers) == {"198.18.0.1", "198.18.0.3"}
    ours, theirs = offers["198.18.0.1"], offers["198.18.0.3"]
    assert ours["yiaddr"] == "0.0.0.0"
    assert ours["file"] == "undionly.kpxe"
    assert ours["options"]["vendor_class_id"] == b"PXEClient".hex()
    assert ours["options"]["vendor_specific"] == "060108ff"
    assert theirs["yiaddr"].startswith("198.18.0.1")
    ack = next(r for r in result["replies"] if r["type"] == "ack")
    assert ack["source"] == "198.18.0.3"  # the address comes from dnsmasq
    # With its address, the PXE client asks the boot server on port 4011.
    c1.run("ip", "addr", "add", f"{ack['yiaddr']}/24", "dev", "eth0")
    boot = scapy_client(c1, "--mac", "52:54:00:00:aa:01", "--pxe-request", "198.18.0.1", "--ciaddr",
                        ack["yiaddr"], *pxe)
    (reply,) = boot["replies"]
    assert (reply["type"], reply["file"], boot["port"]) == ("ack", "undionly.kpxe", 4011)
    # An ordinary client gets dnsmasq's offer only.
    plain = scapy_client(lab.add_host("c2"), "--mac", "52:54:00:00:aa:02")
    assert {r["source"] for r in plain["replies"]} == {"198.18.0.3"}


def test_restart_keeps_every_lease(lab: Lab, server: Callable[..., Bootd], tmp_path: Path) -> None:
    b = server()
    clients = [lab.add_host(f"c{i}") for i in range(1, 4)]
    runs = [Udhcpc(c, tmp_path) for c in clients]
    try:
        before = {c.role: u.wait("bound")["ip"] for c, u in zip(clients, runs, strict=True)}
        assert len(set(before.values())) == 3
        b.stop()
        stored = leases(b)  # straight from the database, daemon stopped
        assert {stored[mac_of(c)]["ip"] for c in clients} == set(before.values())
        b = server()
        for u in runs:
            u.signal(signal.SIGUSR1)
        for c, u in zip(clients, runs, strict=True):
            assert u.wait("renew")["ip"] == before[c.role]  # ACKed, not NAKed, after the restart
        assert not any(events(u.dir, "deconfig")[1:] for u in runs)
        newcomer = Udhcpc(lab.add_host("c9"), tmp_path)
        try:
            assert newcomer.wait("bound")["ip"] not in before.values()
        finally:
            newcomer.stop()
    finally:
        for u in runs:
            u.stop()


def test_conflict_check_skips_an_address_in_use(lab: Lab, server: Callable[..., Bootd],
                                                tmp_path: Path) -> None:
    lab.add_host("squat", "198.18.0.100/24")  # a host that took the pool's first address by hand
    b = server()
    u = Udhcpc(lab.add_host("c1"), tmp_path)
    try:
        assert u.wait("bound")["ip"] == "198.18.0.101"
    finally:
        u.stop()
    b.stop()
    assert "address in use by a host we did not give it to; skipped ip=198.18.0.100" in b.stderr


def test_garbage_on_the_wire_is_logged_once_and_service_continues(
        lab: Lab, server: Callable[..., Bootd], tmp_path: Path) -> None:
    b = server()
    c1 = lab.add_host("c1", "198.18.0.60/24")
    sender = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "for _ in range(50): s.sendto(b'\\x01garbage'*3,('198.18.0.1',67))\n"
              "s.sendto(bytes(300),('198.18.0.1',67))\n")
    c1.run(sys.executable, "-c", sender)
    u = Udhcpc(lab.add_host("c2"), tmp_path)
    try:
        assert u.wait("bound")["ip"] == "198.18.0.100"
    finally:
        u.stop()
    assert b.stop() == 0
    # One line per drop reason a minute, whatever the text or sender varies; all counted.
    assert b.stderr.count("dropped packet why=malformed") == 1
    # Which reason is the logged one depends on the order the backlog answers in (the
    # DISCOVER lane, where unreadable packets go, is served newest first).
    reasons = ('reason="too short for DHCP (24 bytes)"',
               'reason="no DHCP magic cookie (plain BOOTP is not served)"')
    assert sum(b.stderr.count(r) for r in reasons) == 1
    assert "dropped-malformed=51" in b.stderr
    with socket.socket():
        pass
