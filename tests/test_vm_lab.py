"""Real firmware, end to end: QEMU VMs (TCG) with the iPXE ROM Debian ships PXE-boot
from bootd in the lab (and, without an iPXE ROM, OVMF's own PXE and UEFI HTTP boot
and a BIOS PXE ROM with pxelinux boot the loaders `bootd images bootloaders` and
`bootd init` installed from Debian's packages), run the discovery image bootd built, report their real
inventory, are allocated, run their hardware-install tasks, boot a small test
installer that fetches its rendered kickstart and marks the disk, then boot from
their own disk. The test reads each VM's serial console and bootd's event log.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from boot_timeline import Timeline, ipv6_on
from bootd_proc import Bootd
from conftest import REPO
from netlab import Host, Lab, add_tap, qemu_argv

from bootd.images import testinstaller
from bootd.images.bootloaders import LOADERS
from bootd.images.build import build_discovery
from bootd.images.packages import DebianPackages
from bootd.images.testinstaller import LOCAL_MARK

pytestmark = pytest.mark.lab
SERVER = "198.18.0.1"
BOOT_WAIT = 600.0  # TCG is slow and these machines are shared: a bound, not a speed claim
DISK_BYTES = 64 << 20
MEMORY_MB = 384
CACHE = REPO / ".cache" / "images"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/ of a TFTP root: the discovery image bootd builds, and the test installer.
    No loaders: each test's state directory gets them from bootd itself."""
    root = tmp_path_factory.mktemp("vm") / "tftp"
    result = build_discovery(root / "images" / "discovery", CACHE)
    assert result.initrd_bytes < 32 << 20
    testinstaller.build(root)
    return root / "images"


def link_images(images: Path, tftp_root: Path) -> None:
    """The images into a state directory's TFTP root, as hard links (a symlink out of the
    root would be refused, as bootd.files refuses any path that leads outside it)."""
    shutil.copytree(images, tftp_root / "images", copy_function=os.link)


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@pytest.fixture
def timeline(lab: Lab, tmp_path: Path) -> Iterator[Timeline]:
    """Seconds from power-on to each boot step, printed by the tests (boot_timeline)."""
    the_timeline = Timeline(lab, tmp_path)
    yield the_timeline
    the_timeline.close()


class Vm:
    def __init__(self, lab: Lab, tmp: Path, index: int, uefi: bool = False, http_boot: bool = False,
                 timeline: Timeline | None = None) -> None:
        self.timeline = timeline
        self.mac = f"52:54:00:be:e0:{index:02x}"
        self.tap = f"tap{index}"
        self.serial = tmp / f"vm{index}.serial"
        self.disk = tmp / f"vm{index}.img"
        self.qemu_log = tmp / f"vm{index}.qemu.log"
        testinstaller.disk_image(self.disk, DISK_BYTES)
        add_tap(lab.switch, self.tap)
        firmware: list[str] = []
        nic_rom = ""
        if uefi:
            # OVMF's own PXE (no iPXE option ROM on the NIC): it fetches snponly.efi by TFTP.
            vars_copy = tmp / f"vm{index}.vars.fd"
            vars_copy.write_bytes(OVMF_VARS.read_bytes())
            firmware = ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                        "-drive", f"if=pflash,format=raw,file={vars_copy}"]
            nic_rom = ",romfile="
            if http_boot:
                # LAB-NOTES: without PXE, OVMF's first network option is UEFI HTTP boot.
                firmware += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
                             "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"]
        log = self.qemu_log.open("wb")
        if timeline is not None:
            timeline.powered_on(self.mac, self.serial)
        self.proc = subprocess.Popen(
            qemu_argv(lab.switch, mac=self.mac, tap=self.tap, disk=str(self.disk), serial=str(self.serial),
                      memory_mb=MEMORY_MB, firmware=firmware, nic_options=nic_rom,
                      machine="q35" if uefi else "pc"),
            stdout=subprocess.DEVNULL, stderr=log)
        log.close()  # QEMU holds its own copy
        self.powered_on = time.monotonic()
        lab.processes.append(self.proc)

    def report(self, title: str = "") -> str:
        return self.timeline.report(self.mac, title) if self.timeline is not None else ""

    def console(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def disk_sector(self, n: int) -> bytes:
        with self.disk.open("rb") as f:
            f.seek(512 * n)
            return f.read(512)


def wait_for(what: str, check: Any, vms: list[Vm], timeout: float = BOOT_WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for vm in vms:
            if vm.proc.poll() is not None:
                raise AssertionError(f"QEMU exited: {vm.qemu_log.read_text(errors='replace')}")
        time.sleep(2)
    consoles = "\n".join(f"--- {vm.mac}\n{vm.console()[-3000:]}\n{vm.report()}" for vm in vms)
    raise AssertionError(f"timed out waiting for {what}\n{consoles}")


@pytest.fixture
def rack(lab: Lab, tmp_path: Path, images: Path) -> Iterator[Callable[..., Bootd]]:
    started: list[Bootd] = []

    def start(extra: str = "") -> Bootd:
        srv = lab.add_host("srv", f"{SERVER}/24")
        ipv6_on(srv)  # bootd's router advertisements (lifetime 0) reach the VMs
        state = tmp_path / "state"
        state.mkdir()
        link_images(images, state / "tftp")
        config = tmp_path / "bootd.toml"
        config.write_text(textwrap.dedent(f"""\
            [server]
            admin_address = "{SERVER}"
            interfaces = ["eth0"]
            state_dir = "{state}"
            [services]
            dns = false
            [http]
            listen = "{SERVER}:8080"
            [dhcp]
            conflict_check = false
            [install]
            root_password_hash = "$6$vm$hash"
            [profiles.testinstall]
            family = "kickstart"
            template = "kickstart/rocky-9.ks.j2"
            [[subnets]]
            cidr = "198.18.0.0/24"
            dynamic_pool = "198.18.0.100-198.18.0.199"
            """) + textwrap.dedent(extra))
        # The loaders, as an operator gets them (from the host: the lab has no route to
        # Debian's archive for the packages that are not installed).
        out = subprocess.run([sys.executable, "-m", "bootd", "images", "bootloaders", "--config", str(config),
                              "--cache", str(CACHE)], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        bootd = Bootd(config, srv.cmd()).start()
        started.append(bootd)
        return bootd

    yield start
    for bootd in started:
        bootd.close()
        assert "Traceback" not in bootd.stderr, bootd.stderr


def nodes(bootd: Bootd) -> dict[str, dict[str, Any]]:
    return {n["interfaces"][0]["mac"]: n for n in json.loads(bootd.cli("nodes", "list", "--json"))["nodes"]
            if n["interfaces"]}


def discovered_with_inventory(bootd: Bootd, vm: Vm, path: str) -> dict[str, Any]:
    node = wait_for(f"{vm.mac} discovered", lambda: (lambda n: n if n and n["state"] == "discovered"
                                                     else None)(nodes(bootd).get(vm.mac)), [vm])
    # Printed, never asserted: TCG on a shared machine; polled every 2 s.
    print(f"\nVM timing: {path}: power-on -> discovered {time.monotonic() - vm.powered_on:.0f} s")
    print(vm.report(path))
    inv: dict[str, Any] = json.loads(bootd.cli("nodes", "show", node["name"], "--json"))["inventory"]
    assert vm.mac in [nic["mac"] for nic in inv["nics"]]
    assert (MEMORY_MB - 96) * 1024 < inv["memory_kb"] <= MEMORY_MB * 1024
    assert [d["size_bytes"] for d in inv["disks"]] == [DISK_BYTES]
    return inv


def test_uefi_vm_reaches_discovered_through_snponly_efi(lab: Lab, rack: Callable[..., Bootd],
                                                      tmp_path: Path, timeline: Timeline) -> None:
    bootd = rack()
    vm = Vm(lab, tmp_path, 5, uefi=True, timeline=timeline)  # no iPXE ROM on the NIC: OVMF's own PXE
    inv = discovered_with_inventory(bootd, vm, "OVMF PXE -> installed snponly.efi (TFTP)")
    assert inv["system"]["product"]  # DMI from OVMF's SMBIOS tables
    assert tftp_complete(bootd) >= 1  # snponly.efi, fetched by OVMF's own PXE


def test_legacy_pxelinux_vm_reaches_discovered_over_tftp(lab: Lab, rack: Callable[..., Bootd],
                                                         tmp_path: Path, timeline: Timeline) -> None:
    bootd = rack("""\
        [boot]
        bios = "pxelinux.0"
        ipxe_script = false
        """)
    vm = Vm(lab, tmp_path, 6, timeline=timeline)
    discovered_with_inventory(bootd, vm, "BIOS PXE -> installed pxelinux.0 (TFTP)")
    # pxelinux.0, ldlinux.c32, the generated pxelinux.cfg/01-<mac>, kernel and initrd: all TFTP.
    assert tftp_complete(bootd) >= 5


def test_uefi_http_boot_from_bootd_init(lab: Lab, images: Path, tmp_path: Path, timeline: Timeline) -> None:
    """A fresh box: `bootd init` on the lab's interface and `bootd serve` as it wrote them; an
    OVMF VM with no PXE and no iPXE ROM boots by UEFI HTTP boot the snponly.efi init installed,
    from the TFTP root's copy (HTTP /tftp/), and reaches discovered with no TFTP at all."""
    srv: Host = lab.add_host("srv", f"{SERVER}/24")
    ipv6_on(srv)
    config, state = tmp_path / "bootd.toml", tmp_path / "state"
    # The packages that are not installed come from the cache, filled here: the lab has no route out.
    for package in dict.fromkeys(x.package for x in LOADERS):
        DebianPackages(CACHE).get(package)
    init = srv.run(sys.executable, "-m", "bootd", "init", "--interface", "eth0", "--output", str(config),
                   "--state-dir", str(state), "--cache", str(CACHE), cwd=REPO, timeout=600)
    assert "snponly.efi: installed (ipxe " in init.stdout
    link_images(images, state / "tftp")
    bootd = Bootd(config, srv.cmd()).start()
    try:
        vm = Vm(lab, tmp_path, 7, uefi=True, http_boot=True, timeline=timeline)
        inv = discovered_with_inventory(bootd, vm, "OVMF UEFI HTTP boot -> snponly.efi (HTTP /tftp/)")
        assert inv["system"]["product"]
        assert tftp_complete(bootd) == 0  # the loader came by HTTP; iPXE fetched the rest by HTTP
    finally:
        bootd.close()
    assert "Traceback" not in bootd.stderr, bootd.stderr


def tftp_complete(bootd: Bootd) -> int:
    bootd.stop()
    line = next(x for x in bootd.stderr.splitlines() if "tftp: stopped" in x)
    return int(re.search(r"complete=(\d+)", line).group(1))  # type: ignore[union-attr]


def test_two_vms_boot_through_every_state(lab: Lab, rack: Callable[..., Bootd], tmp_path: Path,
                                          timeline: Timeline) -> None:
    bootd, tmp = rack(), tmp_path
    started = time.monotonic()
    vms = [Vm(lab, tmp, i, timeline=timeline) for i in (1, 2)]
    by_mac = {vm.mac: vm for vm in vms}

    # DHCP -> iPXE script over HTTP -> discovery image -> `discovered` with its real inventory.
    found = wait_for("both VMs discovered", lambda: (lambda n: n if all(
        n.get(m, {}).get("state") == "discovered" for m in by_mac) else None)(nodes(bootd)), vms)
    to_discovered = time.monotonic() - started
    for vm in vms:
        print("\n" + vm.report(f"{vm.mac} (two VMs at once)"))
    for mac, node in found.items():
        if mac not in by_mac:
            continue
        inv = json.loads(bootd.cli("nodes", "show", node["name"], "--json"))["inventory"]
        assert mac in [nic["mac"] for nic in inv["nics"]]
        assert inv["boot_nic"] and inv["nics"][0]["driver"] == "virtio_net"
        assert (MEMORY_MB - 64) * 1024 < inv["memory_kb"] <= MEMORY_MB * 1024
        assert [d["size_bytes"] for d in inv["disks"]] == [DISK_BYTES]
        assert inv["cpus"] == 1

    # Allocated through the CLI (the API does the same; tested elsewhere).
    for i, vm in enumerate(vms, 1):
        name = found[vm.mac]["name"]
        out = bootd.cli("nodes", "allocate", name, "--profile", "testinstall", "--rename", f"vm{i}")
        assert "hardware-installing" in out

    # Tasks -> hardware-installed -> reboot -> the installer -> installed.
    wait_for("both VMs installed", lambda: all(
        nodes(bootd).get(m, {}).get("state") == "installed" for m in by_mac), vms)
    for i, vm in enumerate(vms, 1):
        assert vm.disk_sector(1).startswith(f"bootd-installed vm{i}".encode())
        events = json.loads(bootd.cli("nodes", "events", f"vm{i}", "--json"))["events"]
        assert any(e["kind"] == "task" and e["message"].startswith("bmc exit=0") for e in events)

    # The next boot is the local disk: the boot sector prints its mark on the console.
    wait_for("both VMs booted from disk", lambda: all(
        vm.console().count(LOCAL_MARK.decode()) >= 1 for vm in vms), vms)
    # The installed OS's first-boot script would now report readying and ready;
    # the boot sector cannot, so the test does it with the node's own callback.
    for i in (1, 2):
        kickstart = bootd.cli("nodes", "render", f"vm{i}", "kickstart")
        callback = re.search(r"'(http[^']*state=)installing'", kickstart).group(1)  # type: ignore[union-attr]
        for state in ("readying", "ready"):
            subprocess.run(lab.hosts["srv"].cmd("curl", "-fsS", "-X", "POST", "-o", "/dev/null",
                                                callback + state), check=True, timeout=30)
    to_ready = time.monotonic() - started
    for i in (1, 2):
        events = json.loads(bootd.cli("nodes", "events", f"vm{i}", "--json"))["events"]
        steps = [e["to"] for e in events if e["kind"] == "transition"]
        assert steps == ["discovered", "hardware-installing", "hardware-installed", "installing",
                         "installed", "readying", "ready"], steps
    print(f"\nVM timings: power-on -> discovered {to_discovered:.0f} s, -> ready {to_ready:.0f} s")


def test_image_is_reproducible(images: Path, tmp_path: Path) -> None:
    again = build_discovery(tmp_path / "again", CACHE)
    assert again.initrd.read_bytes() == (images / "discovery" / "initrd.img").read_bytes()
    with gzip.open(io.BytesIO(again.initrd.read_bytes())) as f:
        assert b"bootd-agent" in f.read()


ON_POWER = """#!/bin/sh
# ipmi_sim's chassis control calls this with 1 (power on) or 0 (off): start or stop the VM.
dir=$(dirname "$0")
if [ "$1" = 1 ]; then
  [ -f "$dir/vm.pid" ] && kill -0 "$(cat "$dir/vm.pid")" 2>/dev/null && exit 0
  setsid ip netns exec {switch} qemu-system-x86_64 -machine pc -accel tcg -m {memory} -smp 1 \\
    -display none -monitor none -no-user-config -serial file:{serial} \\
    -netdev tap,id=n0,ifname={tap},script=no,downscript=no \\
    -device virtio-net-pci,netdev=n0,mac={mac},bootindex=1 \\
    -drive file={disk},format=raw,if=virtio,index=0 </dev/null >/dev/null 2>&1 &
  echo $! > "$dir/vm.pid"
else
  [ -f "$dir/vm.pid" ] && kill "$(cat "$dir/vm.pid")" 2>/dev/null
  rm -f "$dir/vm.pid"
fi
"""


def test_bootd_power_on_boots_a_vm_behind_ipmi_sim(lab: Lab, rack: Callable[..., Bootd],
                                                   tmp_path: Path, timeline: Timeline) -> None:
    from ipmi_sim import IpmiSim

    bootd = rack()
    mac, tap = "52:54:00:be:e0:09", "tap9"
    add_tap(lab.switch, tap)
    disk, serial = tmp_path / "vm9.img", tmp_path / "vm9.serial"
    testinstaller.disk_image(disk, DISK_BYTES)
    sim = IpmiSim(tmp_path / "bmc")
    (sim.dir / "on-power").write_text(ON_POWER.format(switch=lab.switch, memory=MEMORY_MB, serial=serial,
                                                      tap=tap, mac=mac, disk=disk))
    (sim.dir / "on-power").chmod(0o755)
    sim.start()
    try:
        pw = tmp_path / "pw"
        pw.write_text(sim.password)
        bootd.cli("nodes", "add", "vmb", "--mac", mac, "--bmc-address", sim.address, "--bmc-user", sim.user,
                  "--bmc-password-file", str(pw))
        assert "vmb: ok, power off" in bootd.cli("power", "status", "vmb")
        powered_on = time.monotonic()
        timeline.powered_on(mac, serial)  # the CLI's power-on: ipmi_sim starts QEMU
        assert "vmb: ok, power on" in bootd.cli("power", "on", "vmb")
        assert sim.power() == "on"  # ipmitool agrees
        vm_pid = int((sim.dir / "vm.pid").read_text())

        def discovered() -> bool:
            return json.loads(bootd.cli("nodes", "show", "vmb", "--json"))["state"] == "discovered"
        deadline = time.monotonic() + BOOT_WAIT
        while not discovered():
            assert time.monotonic() < deadline, (serial.read_text(errors="replace")[-3000:]
                                                 + timeline.report(mac))
            time.sleep(2)
        print(f"\nVM timing: BIOS iPXE behind ipmi_sim: power-on -> discovered "
              f"{time.monotonic() - powered_on:.0f} s")
        print(timeline.report(mac, "BIOS iPXE ROM behind ipmi_sim"))
        assert "vmb: ok, power off" in bootd.cli("power", "off", "vmb")
        assert sim.power() == "off"
        deadline = time.monotonic() + 30
        while Path(f"/proc/{vm_pid}").exists() and Path(f"/proc/{vm_pid}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "the VM kept running after power off"
            time.sleep(0.5)
        events = json.loads(bootd.cli("nodes", "events", "vmb", "--json"))["events"]
        assert [e["message"].split(":")[0] for e in events if e["kind"] == "power"] == ["on", "off"]
    finally:
        pid_file = sim.dir / "vm.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
        sim.stop()
