"""The real Debian 12 installer, booted by bootd on an isolated admin network.

Debian's `debian-installer-12-netboot-amd64` package (downloaded into the repo's
.cache/media, shared with tests/test_media_import.py, unpacked, never installed)
gives the d-i netboot tree; `bootd images import` makes it a profile of family
preseed (linux, initrd.gz under the TFTP root's images/debian-12/). The subnet has no router and
no name server (what `bootd init` writes for an isolated admin network), so the
DHCP offer carries neither: d-i at critical priority would stop at "Continue
without a default route?" and "Name server addresses:" before it fetches its
preseed (LAB-NOTES "Installers") unless bootd's kernel command line answers both.

A BIOS VM (TCG, the iPXE ROM of Debian's ipxe-qemu) powers on with the node in
reinstall: DHCP -> iPXE script -> d-i -> preseed fetched (bootd logs it with the
user agent) -> preseed/early_command posts `installing` with the node's token.
Waits are bounds, never assertions on speed; the timeline is printed.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boot_timeline import ipv6_on
from bootd_proc import Notifications, env_for
from conftest import REPO
from netlab import Lab, add_tap, qemu_argv

from bootd.backend import open_backend
from bootd.config import load_config
from bootd.images.build import fetch

pytestmark = pytest.mark.lab
SERVER = "198.18.0.1"
PACKAGE = "debian-installer-12-netboot-amd64"
CACHE = REPO / ".cache" / "media"
NETBOOT = "usr/lib/debian-installer/images/12/amd64/text"
PROFILE = "debian-12"
MAC = "52:54:00:be:e1:01"
MEMORY_MB = 1024  # d-i's lowmem mode starts below ~780 MB and would change what it loads
DISK_BYTES = 2 << 30  # sparse; the installer only needs to see a disk
# LAB-NOTES: preseed fetched ~60-85 s after power-on under TCG, early_command ~15 s
# later. The machine is shared: a generous bound, not a speed claim.
INSTALLER_WAIT = 420.0
CLI_WAIT = 60.0


def netboot_tree() -> Path:
    tree = fetch([PACKAGE], CACHE)[PACKAGE] / NETBOOT
    assert (tree / "debian-installer/amd64/linux").is_file(), f"no d-i netboot tree at {tree}"
    return tree


def cli(config: Path, *argv: str) -> str:
    res = subprocess.run([sys.executable, "-m", "bootd", *argv, "--config", str(config)],
                         cwd=REPO, capture_output=True, text=True, timeout=CLI_WAIT, check=False)
    assert res.returncode == 0, f"bootd {' '.join(argv)}: {res.stdout}{res.stderr}"
    return res.stdout


class Daemon:
    """bootd serve in the server namespace, its log in a file the test reads as it grows."""

    def __init__(self, config: Path, prefix: list[str], log: Path) -> None:
        self.config, self.log = config, log
        self.notify = Notifications(config.with_name("notify.sock"))
        with log.open("w") as err:
            self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "bootd", "serve", "--config",
                                          str(config)], cwd=REPO, env=env_for(self.notify),
                                         stdout=subprocess.DEVNULL, stderr=err)
        try:
            self.notify.wait_for("READY", "1")
        except (AssertionError, TimeoutError):
            self.close()
            raise AssertionError(f"bootd did not become ready:\n{self.text()}") from None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def cli(self, *argv: str) -> str:
        return cli(self.config, *argv)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=CLI_WAIT)
        self.notify.close()


@pytest.fixture
def bootd(lab: Lab, tmp_path: Path) -> Iterator[Daemon]:
    srv = lab.add_host("srv", f"{SERVER}/24")
    ipv6_on(srv)  # bootd's router advertisements: iPXE stops waiting for IPv6 (~13 s)
    config = tmp_path / "bootd.toml"
    # No router and no dns_servers: the DHCP offer carries neither.
    config.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{SERVER}"
        interfaces = ["eth0"]
        state_dir = "{tmp_path / 'state'}"
        [services]
        dns = false
        [http]
        listen = "{SERVER}:8080"
        [dhcp]
        conflict_check = false
        [bmc]
        lifecycle_power = false
        [install]
        root_password_hash = "$6$vm$hash"
        [[subnets]]
        cidr = "198.18.0.0/24"
        domain = "bootd.internal"
        dynamic_pool = "198.18.0.100-198.18.0.199"
        """))
    # The installer's media become a profile the way an operator does it.
    imported = cli(config, "images", "import", str(netboot_tree()), "--profile", PROFILE)
    assert f"profile {PROFILE} (preseed)" in imported, imported
    daemon = Daemon(config, srv.cmd(), tmp_path / "bootd.log")
    try:
        yield daemon
    finally:
        daemon.close()
        assert "Traceback" not in daemon.text(), daemon.text()[-5000:]


async def send_to_reinstall(config_path: Path, name: str) -> str:
    """Operator moves through the lifecycle: a new node goes to problem, then reinstall
    (which boots its profile's installer). Returns the node's state."""
    async with open_backend(load_config(config_path)) as backend:
        await backend.lifecycle.mark_problem(name, "lab: install without discovery", actor="test")
        node = await backend.lifecycle.reinstall(name, actor="test")
        return node.state.value


def node_state(bootd: Daemon, name: str) -> str:
    state: str = json.loads(bootd.cli("nodes", "show", name, "--json"))["state"]
    return state


def served(bootd: Daemon, kind: str) -> str | None:
    return next((line for line in bootd.text().splitlines()
                 if "install file served" in line and f"kind={kind}" in line), None)


def test_debian_installer_reports_installing_on_a_routerless_subnet(
        lab: Lab, bootd: Daemon, tmp_path: Path) -> None:
    bootd.cli("nodes", "add", "di1", "--mac", MAC, "--profile", PROFILE)
    assert asyncio.run(send_to_reinstall(bootd.config, "di1")) == "reinstall"
    # What the VM will be told (rendered as the lease holder would get it, via the CLI).
    ipxe = bootd.cli("nodes", "render", "di1", "ipxe")
    for arg in ("netcfg/no_default_route=true", "netcfg/get_nameservers= ", "domain=bootd.internal",
                "priority=critical", "auto=true"):
        assert arg in ipxe, ipxe

    disk, serial, qemu_log = tmp_path / "vm.img", tmp_path / "vm.serial", tmp_path / "qemu.log"
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
    add_tap(lab.switch, "tap1")
    with qemu_log.open("wb") as err:
        vm = subprocess.Popen(qemu_argv(lab.switch, mac=MAC, tap="tap1", disk=str(disk), serial=str(serial),
                                        memory_mb=MEMORY_MB), stdout=subprocess.DEVNULL, stderr=err)
    lab.processes.append(vm)
    powered_on = time.monotonic()
    marks: dict[str, float] = {}

    def console() -> str:
        return serial.read_text(errors="replace") if serial.exists() else ""

    deadline = powered_on + INSTALLER_WAIT
    while "installing" not in marks:
        now = time.monotonic()
        if "preseed" not in marks and served(bootd, "preseed") is not None:
            marks["preseed"] = now
        if node_state(bootd, "di1") == "installing":
            marks["installing"] = now
            break
        if vm.poll() is not None:
            raise AssertionError(f"QEMU exited: {qemu_log.read_text(errors='replace')}")
        if now > deadline:
            raise AssertionError(f"no `installing` within {INSTALLER_WAIT:.0f} s; marks {marks}\n"
                                 f"--- console\n{console()[-4000:]}\n--- bootd\n{bootd.text()[-4000:]}")
        time.sleep(1.0)

    # The preseed went to the installer itself (d-i's user agent), and the move came
    # from its early_command with the node's token (by the node, not the operator).
    line = served(bootd, "preseed")
    assert line is not None, bootd.text()[-4000:]
    assert "node=di1" in line and "agent=debian-installer" in line, line
    events: list[dict[str, Any]] = json.loads(bootd.cli("nodes", "events", "di1", "--json"))["events"]
    moves = [e["to"] for e in events if e["kind"] == "transition"]
    assert moves[-2:] == ["reinstall", "installing"], events
    # It never waited at the questions an isolated network would raise.
    text = console()
    assert not re.search(r"without a default route|Name server addresses", text), text[-4000:]
    print(f"\nd-i timeline (TCG): power-on -> preseed fetched {marks['preseed'] - powered_on:.0f} s "
          f"-> installing {marks['installing'] - powered_on:.0f} s")
