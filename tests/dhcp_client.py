"""A scriptable DHCP client for tests, built on scapy (the packet crafter), run
inside a lab namespace. Prints one JSON object with every reply it saw.

    dhcp_client.py --iface eth0 --mac 52:54:00:00:00:01 [--vendor PXEClient:...]
                   [--arch 7] [--user-class iPXE] [--request] [--wait 3]
    dhcp_client.py --pxe-request 198.18.0.1 --ciaddr 198.18.0.150 --mac ... --vendor PXEClient
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import time
from typing import Any

from scapy.all import AsyncSniffer, conf, sendp  # type: ignore[attr-defined]
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

conf.verb = 0
TYPES = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak", 7: "release", 8: "inform"}


def describe(bootp: Any, source: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in bootp[DHCP].options:
        if isinstance(item, tuple):
            key, *values = item
            value = values[0] if len(values) == 1 else list(values)
            opts[str(key)] = value.hex() if isinstance(value, bytes) else value
    return {"type": TYPES.get(opts.get("message-type", 0), "?"), "source": source,
            "yiaddr": bootp.yiaddr, "siaddr": bootp.siaddr, "giaddr": bootp.giaddr,
            "file": bootp.file.rstrip(b"\0").decode(errors="replace"), "xid": bootp.xid,
            "options": opts}


def options(args: argparse.Namespace, kind: str, extra: list[Any]) -> list[Any]:
    mac = bytes.fromhex(args.mac.replace(":", ""))
    opts: list[Any] = [("message-type", kind), ("client_id", b"\x01" + mac)]
    if args.vendor:
        opts.append(("vendor_class_id", args.vendor.encode()))
    if args.arch is not None:
        opts.append((93, struct.pack("!H", args.arch)))
        opts.append((94, b"\x01\x03\x00"))
        opts.append((97, b"\x00" + bytes(range(16))))
    if args.user_class:
        opts.append(("user_class", args.user_class.encode()))
    opts.append(("param_req_list", [1, 3, 6, 12, 15, 43, 60, 66, 67, 175]))
    return opts + extra + ["end"]


def exchange(args: argparse.Namespace) -> dict[str, Any]:
    mac = bytes.fromhex(args.mac.replace(":", ""))
    xid = random.getrandbits(32)
    got: list[Any] = []
    sniffer = AsyncSniffer(iface=args.iface, store=False, prn=got.append,
                           lfilter=lambda p: UDP in p and p[UDP].dport in (68, 67) and BOOTP in p
                           and p[BOOTP].op == 2)
    sniffer.start()
    time.sleep(0.3)

    def send(kind: str, extra: list[Any]) -> None:
        frame = (Ether(src=args.mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                 / UDP(sport=68, dport=67) / BOOTP(op=1, xid=xid, chaddr=mac + bytes(10), flags=0x8000)
                 / DHCP(options=options(args, kind, extra)))
        sendp(frame, iface=args.iface)

    def collect(until: float) -> None:
        while time.monotonic() < until:
            time.sleep(0.1)

    send("discover", [])
    collect(time.monotonic() + args.wait)
    offers = [p for p in got if p[BOOTP].xid == xid]
    seen = [describe(p[BOOTP], p[IP].src) for p in offers]
    if args.request:
        chosen = next((s for s in seen if s["type"] == "offer" and s["yiaddr"] != "0.0.0.0"), None)
        if chosen is not None:
            send("request", [("requested_addr", chosen["yiaddr"]),
                             ("server_id", chosen["options"]["server_id"])])
            collect(time.monotonic() + args.wait)
            seen = [describe(p[BOOTP], p[IP].src) for p in got if p[BOOTP].xid == xid]
    sniffer.stop()
    return {"replies": seen}


def pxe_request(args: argparse.Namespace) -> dict[str, Any]:
    """PXE 2.1: a client that has an address asks the boot server on port 4011."""
    mac = bytes.fromhex(args.mac.replace(":", ""))
    xid = random.getrandbits(32)
    raw = bytes(BOOTP(op=1, xid=xid, chaddr=mac + bytes(10), ciaddr=args.ciaddr)
                / DHCP(options=options(args, "request", [])))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((args.ciaddr, 68))
        s.settimeout(args.wait)
        s.sendto(raw, (args.pxe_request, 4011))
        try:
            data, source = s.recvfrom(4096)
        except TimeoutError:
            return {"replies": []}
    return {"replies": [describe(BOOTP(data), source[0])], "port": source[1]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iface", default="eth0")
    p.add_argument("--mac", required=True)
    p.add_argument("--vendor")
    p.add_argument("--arch", type=int)
    p.add_argument("--user-class")
    p.add_argument("--request", action="store_true")
    p.add_argument("--wait", type=float, default=3.0)
    p.add_argument("--pxe-request")
    p.add_argument("--ciaddr")
    args = p.parse_args()
    result = pxe_request(args) if args.pxe_request else exchange(args)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
