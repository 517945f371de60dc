"""The demo's virtual rack: QEMU VMs that PXE-boot from bootd and walk to `ready`.

    demo_vms.py --config DIR/bootd.toml --switch NS --dir DIR [--vms 2] [--check SECONDS]

Starts the VMs (TCG, iPXE ROM, a disk holding only a boot sector) on taps in the
lab's switch namespace, then plays the operator: once every VM is discovered, one
command installs the rack, `bootd rollout start --all --profile demo
--max-parallel 1` (the `demo` profile is a miniature installer,
bootd.images.testinstaller), so the VMs take turns in the heavy states: the one
waiting shows its place in the queue on its console. When a
VM has booted its own disk (the boot sector's mark on its serial console), it
reports `readying` and `ready` with the node's own callback URL, as an installed
OS's first-boot script would. Prints each state change. With --check, exits 0
once every VM is ready and the nodes' event logs show at most one install slot
held at any instant (1 otherwise, or on timeout); otherwise runs until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bootd.images.testinstaller import LOCAL_MARK, disk_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netlab import add_tap, qemu_argv
from waves_check import most_at_once, slot_intervals

MEMORY_MB = 384


def bootd(config: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "bootd", *args, "--config", str(config)],
                          check=True, capture_output=True, text=True).stdout


def start_vm(switch: str, work: Path, index: int) -> tuple[str, subprocess.Popen[bytes], Path]:
    mac = f"52:54:00:de:00:{index:02x}"
    tap = f"dtap{index}"
    disk, serial = work / f"vm{index}.img", work / f"vm{index}.serial"
    disk_image(disk, 64 << 20)
    add_tap(switch, tap)
    with (work / f"vm{index}.qemu.log").open("wb") as log:
        proc = subprocess.Popen(qemu_argv(switch, mac=mac, tap=tap, disk=str(disk), serial=str(serial),
                                          memory_mb=MEMORY_MB), stdout=subprocess.DEVNULL, stderr=log)
    return mac, proc, serial


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--switch", required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--vms", type=int, default=2)
    p.add_argument("--check", type=float, default=0.0, help="exit once all are ready, within SECONDS")
    args = p.parse_args()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    vms = [start_vm(args.switch, args.dir, i) for i in range(1, args.vms + 1)]
    serial_of = {mac: serial for mac, _, serial in vms}
    seen: dict[str, str] = {}
    started = time.monotonic()
    code = 1
    rollout_started = False
    try:
        while not stopping:
            nodes = {n["interfaces"][0]["mac"]: n for n in json.loads(bootd(args.config, "nodes", "list",
                                                                             "--json"))["nodes"]
                     if n["interfaces"] and n["interfaces"][0]["mac"] in serial_of}
            for mac, node in sorted(nodes.items()):
                if seen.get(mac) != node["state"]:
                    seen[mac] = node["state"]
                    elapsed = time.monotonic() - started
                    print(f"{elapsed:6.0f}s  {node['name']:20} {node['state']}", flush=True)
                if node["state"] == "installed" and LOCAL_MARK.decode() in serial_of[mac].read_text(
                        errors="replace"):
                    kickstart = bootd(args.config, "nodes", "render", node["name"], "kickstart")
                    m = re.search(r"'(http[^']*state=)installing'", kickstart)
                    if m is not None:
                        for state in ("readying", "ready"):
                            subprocess.run(["ip", "netns", "exec", args.switch.replace("-sw", "-srv"),
                                            "curl", "-fsS", "-X", "POST", "-o", "/dev/null",
                                            m.group(1) + state], check=False, timeout=30)
            if not rollout_started and len(nodes) == len(vms) and all(
                    n["state"] == "discovered" for n in nodes.values()):
                # The operator's one command for the whole rack; the VMs take turns.
                print(bootd(args.config, "rollout", "start", "--all", "--profile", "demo",
                            "--max-parallel", "1", "--no-wait").strip(), flush=True)
                rollout_started = True
            if len(nodes) == len(vms) and all(n["state"] == "ready" for n in nodes.values()):
                print(f"all {len(vms)} VMs ready after {time.monotonic() - started:.0f} s", flush=True)
                slots = [iv for name in sorted(n["name"] for n in nodes.values())
                         for iv in slot_intervals(json.loads(bootd(args.config, "nodes", "events", name,
                                                                   "--json"))["events"])]
                most = most_at_once(slots)
                print(f"install slots: {len(slots)} admitted, at most {most} at once", flush=True)
                code = 0 if most <= 1 else 1
                if args.check:
                    break
            if args.check and time.monotonic() - started > args.check:
                print(f"not all VMs ready after {args.check:.0f} s: {seen}", flush=True)
                break
            time.sleep(2)
    finally:
        for _, proc, _ in vms:
            proc.terminate()
        for _, proc, _ in vms:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return code if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
