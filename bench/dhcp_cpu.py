"""bench/dhcp_cpu: CPU cost of bootd's DHCP path per packet, no sockets, no lab.

Feeds perfdhcp-like relayed DISCOVER/REQUEST pairs (random MACs, giaddr
198.19.0.2) through DhcpService._handle (what the backlog's pump calls per
message: parse, decide, apply, send), with a fake socket and a lease store that commits instantly, and prints
microseconds per packet (best of --repeat). --profile prints cProfile's top
functions instead. A machine shared with other work makes the absolute figure
noisy; compare before/after on the same machine.

    .venv/bin/python bench/dhcp_cpu.py [--pairs 20000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import struct
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dhcp_bench import DHCP_SECTIONS  # noqa: E402
from bootd.config import parse_config  # noqa: E402
from bootd.dhcp.decide import Ingress  # noqa: E402
from bootd.dhcp.packet import parse  # noqa: E402
from bootd.dhcp.server import DhcpService  # noqa: E402
from bootd.dhcp.transport import Datagram  # noqa: E402
from bootd.model.records import LeaseRecord  # noqa: E402
from bootd.policy import Policy  # noqa: E402

CONFIG = """
[server]
admin_address = "198.18.0.1"
interfaces = ["eth0"]
""" + DHCP_SECTIONS
GIADDR = IPv4Address("198.19.0.2")
SERVER = IPv4Address("198.18.0.1")


class InstantStore:
    async def put_leases(self, leases: Sequence[LeaseRecord]) -> None:
        return None

    async def list_leases(self) -> list[LeaseRecord]:
        return []


class FakeSocket:
    interface, port = "eth0", 67

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, ip: IPv4Address, port: int) -> bool:
        self.sent.append(data)
        return True


def message(kind: int, mac: bytes, xid: int, extra: bytes = b"") -> bytes:
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s4s", 1, 1, 6, 1, xid, 0, 0, bytes(4), bytes(4),
                         bytes(4), GIADDR.packed, mac.ljust(16, b"\0"), bytes(64), bytes(128),
                         b"\x63\x82\x53\x63")
    return header + bytes((53, 1, kind)) + b"\x37\x04\x01\x03\x06\x0f" + extra + b"\xff"


async def run(pairs: int, profile: bool) -> float:
    config = parse_config(CONFIG)
    service = DhcpService(config, InstantStore(), Policy(config))  # type: ignore[arg-type]
    service._ingress[("eth0", 67)] = Ingress("eth0", SERVER, config.subnets[:1])
    sock = FakeSocket()
    writer = asyncio.ensure_future(service.writer.run())
    rng = random.Random(1)
    macs = [bytes((0x52, 0x54, *(rng.randrange(256) for _ in range(4)))) for _ in range(pairs)]
    discovers = [message(1, mac, i) for i, mac in enumerate(macs)]
    source = (str(GIADDR), 67)
    prof = cProfile.Profile() if profile else None
    elapsed = 0.0
    for start in range(0, pairs, 500):  # 500 pairs per "wakeup", then the writer commits
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        for i in range(start, min(pairs, start + 500)):
            service._handle(sock, Datagram(discovers[i], source, SERVER))  # type: ignore[arg-type]
        offers = sock.sent[-min(500, pairs - start):]
        for i, offer in zip(range(start, pairs), offers, strict=False):
            yiaddr = parse(offer).yiaddr.packed
            req = message(3, macs[i], i, b"\x32\x04" + yiaddr + b"\x36\x04" + SERVER.packed)
            service._handle(sock, Datagram(req, source, SERVER))  # type: ignore[arg-type]
        if prof:
            prof.disable()
        elapsed += time.perf_counter() - t0
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await service.writer.flush()
    writer.cancel()
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    assert service.counters["sent-ack"] == pairs, service.counters
    return elapsed / (2 * pairs) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    if args.profile:
        asyncio.run(run(args.pairs, True))
        return 0
    best = min(asyncio.run(run(args.pairs, False)) for _ in range(args.repeat))
    print(f"{best:.1f} us per packet (DISCOVER+REQUEST pairs, best of {args.repeat}); "
          f"{1e6 / best / 2:.0f} 4-way/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
