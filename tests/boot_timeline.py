"""Where a VM's boot time goes: seconds from power-on to each step, for the VM tests' output.

Two passive sources, neither inside bootd:
- a packet capture on the lab's bridge (tcpdump, only DHCP, TFTP read requests and
  the first segment of each HTTP request and response, so a kernel download costs
  nothing): DHCP messages by type and by who sent them (vendor class: the firmware's
  PXE, iPXE, the agent's udhcpc), TFTP files, HTTP requests by path (query strings,
  which may carry tokens, are cut) and the answer to the agent's `discovered`;
- the VM's serial console, watched by a thread: the kernel's first line and /init.

`Timeline.report(mac)` is printed by the tests (pytest -s shows it) and appended to
their failure messages. Figures only, never assertions (TCG on a shared machine).
Also: `ipv6_on` turns IPv6 on for the server's NIC in a lab (which turns it off
everywhere), so bootd's router advertisements reach the VMs.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from netlab import Host, Lab
from scapy.error import Scapy_Exception
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapReader

DHCP_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE",
              8: "INFORM"}
HTTP_PORT = 8080
# BPF: the first 4 payload bytes of a TCP segment are "GET ", "POST", "HEAD" or "HTTP".
_PAYLOAD = "tcp[((tcp[12:1] & 0xf0) >> 2):4]"
FILTER = (f"udp port 67 or udp port 68 or udp dst port 69 or (tcp port {HTTP_PORT} and ("
          + " or ".join(f"{_PAYLOAD} = {v:#x}" for v in (0x47455420, 0x504F5354, 0x48454144, 0x48545450))
          + "))")
# iPXE's own lines reach the serial console only through UEFI's console (OVMF mirrors it).
SERIAL_MARKS = {"iPXE initialising devices": "iPXE: starts", "Configuring (net": "iPXE: configures the NIC",
                "Linux version": "kernel: first console line", "Run /init": "kernel: runs /init",
                "bootd-agent": "agent: first console line"}


def ipv6_on(host: Host, ifname: str = "eth0") -> None:
    """IPv6 on one NIC of a lab host, without duplicate address detection (a fresh lab
    has no duplicates), so its link-local address is usable at once."""
    host.run("sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0",
             f"net.ipv6.conf.{ifname}.disable_ipv6=0")


@dataclass
class _Serial:
    path: Path
    marks: dict[str, float] = field(default_factory=dict)


class Timeline:
    """tcpdump on the lab's bridge plus a serial watcher per VM; started before power-on."""

    def __init__(self, lab: Lab, tmp: Path, bridge: str = "br0") -> None:
        self.pcap = tmp / "boot.pcap"
        err = tmp / "tcpdump.err"
        with err.open("w") as out:  # the child keeps its own copy
            lab.processes.append(subprocess.Popen(
                ["ip", "netns", "exec", lab.switch, "tcpdump", "-i", bridge, "-U", "-n", "-s", "600",
                 "-w", str(self.pcap), FILTER], stdout=out, stderr=out))
        deadline = time.monotonic() + 20
        while "listening on" not in err.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"tcpdump did not start: {err.read_text()}")
            time.sleep(0.05)
        self.power_on: dict[str, float] = {}  # mac -> wall-clock seconds
        self._serials: dict[str, _Serial] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def powered_on(self, mac: str, serial: Path, at: float | None = None) -> None:
        self.power_on[mac.lower()] = time.time() if at is None else at
        self._serials[mac.lower()] = _Serial(serial)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for serial in list(self._serials.values()):
                if len(serial.marks) == len(SERIAL_MARKS):
                    continue
                with contextlib.suppress(OSError):
                    text = serial.path.read_text(errors="replace")
                    for needle, label in SERIAL_MARKS.items():
                        if label not in serial.marks and needle in text:
                            serial.marks[label] = time.time()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def events(self, mac: str) -> list[tuple[float, str]]:
        """(wall-clock time, what) for one VM, each kind of event at its first occurrence."""
        mac = mac.lower()
        seen: dict[str, float] = {}
        pending_post = False

        def mark(what: str, when: float) -> None:
            seen.setdefault(what, when)

        # Read while tcpdump writes: a cut last packet ends the reading, keeping what came before.
        with contextlib.suppress(Scapy_Exception, EOFError, OSError, ValueError), \
                PcapReader(str(self.pcap)) as packets:
            for pkt in packets:
                when = float(pkt.time)
                if DHCP in pkt and BOOTP in pkt:  # by chaddr: offers may go to broadcast
                    if bytes(pkt[BOOTP].chaddr)[:6].hex(":") == mac:
                        mark(_dhcp(pkt), when)
                    continue
                if Ether not in pkt or mac not in (pkt[Ether].src.lower(), pkt[Ether].dst.lower()):
                    continue
                if UDP in pkt and pkt[UDP].dport == 69 and Raw in pkt:
                    name = bytes(pkt[Raw].load)[2:].split(b"\0")[0].decode(errors="replace")
                    mark(f"TFTP read {name}", when)
                elif TCP in pkt and Raw in pkt:
                    line = bytes(pkt[Raw].load).split(b"\r\n", 1)[0].decode(errors="replace")
                    if line.startswith("HTTP/"):
                        if pending_post:
                            mark(f"HTTP {line.split(' ', 2)[1]} to the first POST (discovered)", when)
                            pending_post = False
                        continue
                    method, _, rest = line.partition(" ")
                    path = rest.split(" ")[0].split("?")[0]
                    if method == "POST" and not any(k.startswith("HTTP POST") for k in seen):
                        pending_post = True
                    mark(f"HTTP {method} {_short(path)}", when)
        serial = self._serials.get(mac)
        for label, when in (serial.marks.items() if serial else ()):
            mark(label, when)
        return sorted(((t, w) for w, t in seen.items()), key=lambda e: e[0])

    def report(self, mac: str, title: str = "", extra: dict[str, float] | None = None) -> str:
        start = self.power_on.get(mac.lower())
        if start is None:
            return f"timeline {mac}: not powered on"
        events = self.events(mac) + sorted((t, w) for w, t in (extra or {}).items())
        lines = [f"timeline {title or mac} (seconds from power-on):"]
        lines += [f"  {when - start:7.1f}  {what}" for when, what in sorted(events)]
        return "\n".join(lines)


def _dhcp(pkt: object) -> str:
    options = {o[0]: o[1:] for o in pkt[DHCP].options if isinstance(o, tuple)}  # type: ignore[index]
    kind = DHCP_TYPES.get(int(options.get("message-type", (0,))[0]), "?")
    who = ""
    if pkt[BOOTP].op == 1:  # type: ignore[index]
        vendor = options.get("vendor_class_id", (b"",))[0]
        vendor = vendor.decode(errors="replace") if isinstance(vendor, bytes) else str(vendor)
        user = options.get("user_class", (b"",))[0]
        user = user.decode(errors="replace") if isinstance(user, bytes) else str(user)
        who = " from " + ("iPXE" if "iPXE" in user else (vendor.split(":Arch")[0] or "a client"))
    else:
        who = " to the VM"
    return f"DHCP {kind}{who}"


def _short(path: str) -> str:
    """A path without tokens: long random segments are cut."""
    return "/".join(p if len(p) < 32 else p[:6] + "..." for p in path.split("/"))
