"""OpenIPMI's ipmi_sim as a node's BMC, on loopback: a real IPMI-over-LAN peer for the tests.

Each instance gets its own port, state directory and chassis-control program.
The program keeps the power state in a file (or, given a command, starts and
stops it) and appends every call it gets (`get power`, `set power 1`, `set boot
pxe`, ...) to calls.log, so a test can see what the BMC was asked to do.
ipmitool checks the same BMC independently (`-I lanplus -C 3`, see LAB-NOTES).
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from conftest import free_port_udp

CHASSIS = """#!/bin/sh
# ipmi_sim chassis control: $1 = MC address, then get/set and the item.
dir=$(dirname "$0")
echo "$2 $3 $4" >> "$dir/calls.log"
case "$2 $3" in
  "get power") echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)" ;;
  "set power") echo "$4" > "$dir/power"
               [ -x "$dir/on-power" ] && "$dir/on-power" "$4" >/dev/null 2>&1 </dev/null ;;
  "get boot") echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)" ;;
  "set boot") echo "$4" > "$dir/boot" ;;
esac
exit 0
"""


class IpmiSim:
    def __init__(self, directory: Path, user: str = "admin", password: str = "secret") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "state").mkdir(exist_ok=True)
        self.port = free_port_udp()
        self.user, self.password = user, password
        self.address = f"127.0.0.1:{self.port}"
        chassis = self.dir / "chassis"
        chassis.write_text(CHASSIS)
        chassis.chmod(0o755)
        (self.dir / "lan.conf").write_text(textwrap.dedent(f"""\
            name "bmc{self.port}"
            set_working_mc 0x20
              startlan 1
                addr 127.0.0.1 {self.port}
                priv_limit admin
                allowed_auths_callback none md2 md5 straight
                allowed_auths_user none md2 md5 straight
                allowed_auths_operator none md2 md5 straight
                allowed_auths_admin none md2 md5 straight
                guid a123456789abcdefa123456789abcdef
              endlan
              chassis_control "{chassis} 0x20"
              user 2 true "{user}" "{password}" admin 10 none md2 md5 straight
            """))
        (self.dir / "cmds").write_text("mc_setbmc 0x20\n"
                                       "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
                                       "mc_enable 0x20\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IpmiSim:
        self.proc = subprocess.Popen(
            ["ipmi_sim", "-c", str(self.dir / "lan.conf"), "-f", str(self.dir / "cmds"),
             "-s", str(self.dir / "state"), "-n"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded wait until it answers
            if self.ipmitool("power", "status").returncode == 0:
                return self
            time.sleep(0.2)
        raise AssertionError(f"ipmi_sim on {self.address} did not answer")

    def ipmitool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1",
                               "-p", str(self.port), "-U", self.user, "-P", self.password, *args],
                              capture_output=True, text=True, timeout=60)

    def power(self) -> str:
        out = self.ipmitool("power", "status").stdout
        return "on" if "is on" in out else "off" if "is off" in out else out

    def calls(self) -> list[str]:
        path = self.dir / "calls.log"
        return path.read_text().splitlines() if path.exists() else []

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            self.proc.wait(timeout=10)
