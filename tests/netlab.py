"""A throwaway network lab in network namespaces, for tests and for humans.

Layout: one "switch" namespace holding a bridge, and one namespace per host,
each joined to the bridge by a veth pair created inside the switch namespace
and moved straight into the host's (so nothing ever appears in the machine's
own namespace). Hosts get addresses in 198.18.0.0/15 (RFC 2544's benchmarking
range) and no default route: nothing leaves the lab. IPv6 is off in every lab
namespace so that no router solicitation or DAD traffic muddies captures.

Namespaces are named `bootd-<tag>-<role>`; the tag of a pytest lab includes
the test process's PID, so `cleanup_stale` can remove labs of dead runs.

For humans:
    python3 tests/netlab.py up [--tag lab] [--clients 2]    # server 198.18.0.1/24, clients unaddressed
    python3 tests/netlab.py down [--tag lab]
    python3 tests/netlab.py list
    python3 tests/netlab.py forward --ns NS --listen 127.0.0.1:8080 --to 198.18.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from typing import Any

PREFIX = "bootd-"
SERVER_ADDRESS = "198.18.0.1/24"
_counter = itertools.count()


def sh(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class Host:
    lab: Lab
    role: str
    ns: str
    address: IPv4Interface | None
    ifname: str = "eth0"

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60, **kw: Any
            ) -> subprocess.CompletedProcess[str]:
        return sh(*self.cmd(*argv), check=check, timeout=timeout, **kw)

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(self.cmd(*argv), **kw)
        self.lab.processes.append(proc)
        return proc

    @property
    def ip(self) -> str:
        assert self.address is not None, f"host {self.role} has no address"
        return str(self.address.ip)


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: f"{os.getpid()}-{next(_counter)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{PREFIX}{self.tag}-sw"

    def add_switch(self, name: str) -> str:
        """Another bridge (another L2 segment, e.g. a rack behind a relay) in the switch namespace."""
        sh("ip", "-n", self.switch, "link", "add", name, "type", "bridge", "stp_state", "0",
           "forward_delay", "0")
        sh("ip", "-n", self.switch, "link", "set", name, "up")
        return name

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        for key in ("all", "default"):
            sh("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")

    def up(self) -> Lab:
        if os.geteuid() != 0:
            raise RuntimeError("the network lab needs root (network namespaces); run as root")
        self._netns(self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge", "stp_state", "0",
           "forward_delay", "0")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        return self

    def add_host(self, role: str, address: str | None = None, switch: str = "br0") -> Host:
        if role in self.hosts or len(role) > 10:
            raise ValueError(f"bad or duplicate host role {role!r}")
        ns = f"{PREFIX}{self.tag}-{role}"
        self._netns(ns)
        host = Host(self, role, ns, IPv4Interface(address) if address else None)
        self.hosts[role] = host
        self.link(host, switch, address)
        return host

    def link(self, host: Host, switch: str, address: str | None) -> str:
        """A new NIC (eth0, eth1, ...) on host, plugged into `switch`."""
        n = int(sh("ip", "-n", host.ns, "-o", "link", "show", "type", "veth").stdout.count("\n"))
        ifname, port = f"eth{n}", f"p-{host.role}{n or ''}"
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", ifname,
           "netns", host.ns)
        sh("ip", "-n", self.switch, "link", "set", port, "master", switch, "up")
        if address:
            iface = IPv4Interface(address)
            if not iface.network.subnet_of(IPv4Interface("198.18.0.0/15").network):
                raise ValueError(f"{address} is outside the lab range 198.18.0.0/15")
            sh("ip", "-n", host.ns, "addr", "add", str(iface), "dev", ifname)
        sh("ip", "-n", host.ns, "link", "set", ifname, "up")
        return ifname

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.processes.clear()
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created.clear()

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_tap(switch_ns: str, tap: str, bridge: str = "br0") -> None:
    """A tap plugged into a bridge of the lab's switch, for a VM's NIC."""
    sh("ip", "netns", "exec", switch_ns, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
    sh("ip", "netns", "exec", switch_ns, "ip", "link", "set", tap, "master", bridge, "up")


def qemu_argv(switch_ns: str, *, mac: str, tap: str, disk: str, serial: str, memory_mb: int,
              firmware: Sequence[str] = (), nic_options: str = "", machine: str = "pc") -> list[str]:
    """A TCG VM (LAB-NOTES: /dev/kvm cannot run firmware here) that network-boots first,
    run in the switch namespace with its NIC on `tap` and its serial console in a file."""
    return ["ip", "netns", "exec", switch_ns, "qemu-system-x86_64", "-machine", machine, *firmware,
            "-accel", "tcg", "-m", str(memory_mb), "-smp", "1", "-display", "none", "-monitor", "none",
            "-no-user-config", "-serial", f"file:{serial}",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1{nic_options}",
            "-drive", f"file={disk},format=raw,if=virtio,index=0"]


def cleanup_stale() -> list[str]:
    """Remove lab namespaces left by test processes that no longer run."""
    removed = []
    for ns in namespaces():
        if not ns.startswith(PREFIX):
            continue
        pid = ns[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            sh("ip", "netns", "del", ns, check=False)
            removed.append(ns)
    return removed


def remove_tag(tag: str) -> list[str]:
    gone = [ns for ns in namespaces() if ns.startswith(f"{PREFIX}{tag}-")]
    for ns in gone:
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
        sh("ip", "netns", "del", ns, check=False)
    return gone


# -- forward: a TCP port on this namespace's localhost into a lab namespace ----

def _setns(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns({ns})")
    finally:
        os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def forward(ns: str, listen: tuple[str, int], to: tuple[str, int]) -> None:
    """Listen here; then enter `ns`, so that every connection made after it is made there.
    A socket stays in the namespace it was created in, so the listener keeps serving here."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*to)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))

    server = await asyncio.start_server(handle, *listen)
    _setns(ns)
    print(f"forwarding {listen[0]}:{listen[1]} -> {to[0]}:{to[1]} in {ns}", flush=True)
    async with server:
        await server.serve_forever()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="bootd's namespaced network lab")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--tag", default="lab")
    up.add_argument("--clients", type=int, default=2)
    down = sub.add_parser("down")
    down.add_argument("--tag", default="lab")
    sub.add_parser("list")
    fw = sub.add_parser("forward")
    fw.add_argument("--ns", required=True)
    fw.add_argument("--listen", type=_hostport, required=True)
    fw.add_argument("--to", type=_hostport, required=True)
    args = p.parse_args(argv)
    if args.cmd == "up":
        remove_tag(args.tag)
        lab = Lab(tag=args.tag).up()
        srv = lab.add_host("srv", SERVER_ADDRESS)
        clients = [lab.add_host(f"c{i}") for i in range(1, args.clients + 1)]
        print(f"switch {lab.switch}\nserver {srv.ns} eth0 {srv.address}")
        for c in clients:
            print(f"client {c.ns} eth0 (no address)")
        print(f"run inside: ip netns exec {srv.ns} <command>; remove: {sys.argv[0]} down --tag {args.tag}")
    elif args.cmd == "down":
        gone = remove_tag(args.tag)
        print("removed " + (", ".join(gone) or "nothing"))
    elif args.cmd == "list":
        print("\n".join(ns for ns in namespaces() if ns.startswith(PREFIX)) or "no lab namespaces")
    elif args.cmd == "forward":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(forward(args.ns, args.listen, args.to))
    return 0


if __name__ == "__main__":
    sys.exit(main())
