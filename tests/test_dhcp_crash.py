"""bootd killed with SIGKILL in the middle of a DHCP storm keeps every promise it put on the
wire (issue 11, section 4: "prove it, as the trusted servers do").

An ACK is a promise: the client will use the address for the lease time, so
the lease must be durable before the ACK leaves (bootd's lease writer commits
each group before it sends their replies; SQLite in WAL mode survives the
death of the process). Here perfdhcp (Kea's load generator, always a relay:
giaddr = its -l address, LAB-NOTES) storms bootd with random MACs, tcpdump in
the server's namespace records every reply bootd sends, and bootd is killed
with SIGKILL mid-storm. After a restart on the same state directory:
- every address ACKed on the wire (from the capture, not from bootd's logs) is
  in the lease table with the MAC (chaddr) it was ACKed to, still bound;
- no address was ACKed to two MACs, and none is held by two in the database;
- the nodes added (and moved) before the storm have the same states and the
  same number of events.
Waits are bounded; nothing asserts on time; the counts are printed.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bootd_proc import WAIT, Bootd
from netlab import Host, Lab
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP
from scapy.utils import rdpcap

pytestmark = pytest.mark.lab
SERVER, CLIENT = "198.18.0.1", "198.19.0.2"
RATE, STORM_SECONDS = 1000, 4.0  # exchanges/s offered; seconds of storm before the kill
ACK = 5
NODES = {"crash-1": "52:54:00:cc:00:01", "crash-2": "52:54:00:cc:00:02"}


def _config(tmp: Path) -> Path:
    path = tmp / "bootd.toml"
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{SERVER}"
        interfaces = ["eth0"]
        state_dir = "{tmp / 'state'}"
        log_level = "warning"
        [services]
        tftp = false
        dns = false
        http = false
        [dhcp]
        conflict_check = false
        [[subnets]]
        cidr = "198.18.0.0/24"
        dynamic_pool = "198.18.0.100-198.18.0.200"
        [[subnets]]
        cidr = "198.19.0.0/16"
        lease_time = 3600
        dynamic_pool = "198.19.1.0-198.19.255.254"
        """))
    return path


def _capture(srv: Host, pcap: Path) -> subprocess.Popen[str]:
    """tcpdump on the server's NIC: every datagram bootd sends from port 67, written per packet (-U)."""
    proc = srv.popen("tcpdump", "-i", "eth0", "-n", "-U", "-w", str(pcap), "udp", "src", "port", "67",
                     "and", "src", "host", SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     text=True)
    assert proc.stderr is not None
    deadline, seen = time.monotonic() + WAIT, []
    while not seen or "listening on" not in seen[-1]:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready or proc.poll() is not None:
            raise AssertionError(f"tcpdump did not start: {seen}")
        seen.append(proc.stderr.readline())
    return proc


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=WAIT)
    return err or ""


def _acks(pcap: Path) -> list[tuple[str, str]]:
    """(yiaddr, MAC) of every DHCPACK in the capture, in order."""
    out = []
    for frame in rdpcap(str(pcap)):
        if BOOTP not in frame or DHCP not in frame or frame[IP].src != SERVER or frame[BOOTP].op != 2:
            continue
        options = dict(o for o in frame[DHCP].options if isinstance(o, tuple) and len(o) == 2)
        if options.get("message-type") == ACK:
            out.append((frame[BOOTP].yiaddr, bytes(frame[BOOTP].chaddr)[:6].hex(":")))
    return out


def _nodes(b: Bootd) -> dict[str, tuple[str, int]]:
    """Each node's state and number of events, through the CLI."""
    nodes = json.loads(b.cli("nodes", "list", "--json"))["nodes"]
    return {n["name"]: (n["state"], len(json.loads(b.cli("nodes", "events", n["name"], "--json"))["events"]))
            for n in nodes}


def test_every_ack_on_the_wire_survives_kill_9(lab: Lab, tmp_path: Path) -> None:
    srv = lab.add_host("srv", f"{SERVER}/24")
    client = lab.add_host("perf", f"{CLIENT}/16")
    srv.run("ip", "route", "add", "198.19.0.0/16", "dev", "eth0")  # back to the relay (perfdhcp)
    client.run("ip", "route", "add", "198.18.0.0/24", "dev", "eth0")
    path = _config(tmp_path)
    rng = random.Random(11)
    macs = tmp_path / "macs.txt"
    macs.write_text("".join("02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5)) + "\n"
                            for _ in range(50_000)))

    b = Bootd(path, srv.cmd()).start()
    tcpdump = perfdhcp = None
    try:
        for name, mac in NODES.items():
            b.cli("nodes", "add", name, "--mac", mac)
        b.cli("nodes", "reset", "crash-2")  # one node moved: discovering -> reset, with its events
        before = _nodes(b)
        assert before["crash-2"][0] == "reset"

        pcap = tmp_path / "replies.pcap"
        tcpdump = _capture(srv, pcap)
        perfdhcp = client.popen("perfdhcp", "-4", "-l", CLIENT, "-r", str(RATE), "-p", "60", "-M", str(macs),
                                "-R", "1000000", SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(STORM_SECONDS)
        assert b.proc is not None and b.proc.poll() is None, "bootd died before the kill"
        os.kill(b.proc.pid, signal.SIGKILL)  # `ip netns exec` execs: this PID is bootd itself
        killed = b.stop()
        time.sleep(0.5)  # perfdhcp goes on sending for a moment into the void
        _stop(perfdhcp)
        dumped = _stop(tcpdump)
    finally:
        b.close()
        for proc in (perfdhcp, tcpdump):
            if proc is not None:
                _stop(proc)
    assert killed == -signal.SIGKILL

    acks = _acks(pcap)
    b2 = Bootd(path, srv.cmd()).start()  # the same state directory, after the crash
    try:
        leases = json.loads(b2.cli("leases", "list", "--json"))["leases"]
        after = _nodes(b2)
    finally:
        rc = b2.stop()
        b2.close()

    by_ip = {lease["ip"]: lease for lease in leases}
    acked: dict[str, set[str]] = {}
    for address, mac in acks:
        acked.setdefault(address, set()).add(mac)
    missing = [a for a in acked if a not in by_ip]
    wrong = [(a, m, by_ip[a]["mac"]) for a, ms in acked.items() for m in ms
             if a in by_ip and by_ip[a]["mac"] != m]
    unbound = [a for a in acked if a in by_ip and by_ip[a]["state"] != "bound"]
    doubly_acked = {a: ms for a, ms in acked.items() if len(ms) > 1}
    held = Counter(lease["ip"] for lease in leases if lease["state"] == "bound")
    print(f"\ncrash test: {len(acks)} ACKs captured for {len(acked)} addresses; {len(leases)} leases in "
          f"the database after the restart; missing {len(missing)}, wrong MAC {len(wrong)}, not bound "
          f"{len(unbound)}, ACKed to two MACs {len(doubly_acked)}; tcpdump: "
          f"{' '.join(line for line in dumped.splitlines() if 'packets' in line)}; nodes {after}")
    assert len(acked) > 100, "the storm did not get going before the kill"
    assert missing == [] and wrong == [] and unbound == [], (missing[:5], wrong[:5], unbound[:5])
    assert doubly_acked == {}
    assert max(held.values()) == 1 and len(by_ip) == len(leases)
    assert after == before
    assert rc == 0
    assert "Traceback" not in b2.stderr
