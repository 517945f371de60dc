"""bench/fuzz_tftp: a million mutated TFTP datagrams through codec, listener decision and sessions.

Each datagram is a mutation of a real client's packet (tests/tftp_mutate.py:
RRQs with blksize/tsize/timeout/windowsize, ACKs, ERRORs, DATA, garbage). All
go through the codec (parse raises only MalformedPacket), intake.examine and
live sans-IO sessions on a fake clock (SessionHarness checks their
invariants). A share (LISTENER_SHARE) also goes over loopback to a real
TftpService on an unprivileged port, from 200 source addresses, paced to what
it reads; an exception the event loop sees there is a crash too. At the end
every session must end within retries + 1 timeouts, the service's tables must
be empty again, and a real transfer must still work.

Reports crashes (must be 0), packets/s and the process's peak RSS
(getrusage ru_maxrss). Run on its own:

    .venv/bin/python bench/fuzz_tftp.py [--packets 1000000] [--seed 1]

or through bench/fuzz --protocol tftp, which calls run(packets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import socket
import sys
import tempfile
import textwrap
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tftp_mutate import Counts, SessionHarness, fuzz_one, mutate  # noqa: E402

from bootd.config import load_config  # noqa: E402
from bootd.logs import setup  # noqa: E402
from bootd.tftp import packet as p  # noqa: E402
from bootd.tftp.server import TftpService  # noqa: E402

LISTENER_SHARE = 20  # one datagram in this many also goes to the real listener
CHUNK = 2000
SOURCES = 200
HOST = "127.0.0.1"
FILE = bytes(i % 251 for i in range(70_001))


class _Policy:
    def fetched(self, peer: IPv4Address | None, kind: str, detail: str) -> None:
        pass

    async def tftp_file(self, path: str, peer: IPv4Address) -> bytes | None:
        return f"# {path} for {peer}\n".encode() if path.startswith("pxelinux.cfg/") else None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _service(tmp: Path) -> TftpService:
    root = tmp / "state" / "tftp"
    root.mkdir(parents=True)
    for name in ("undionly.kpxe", "ipxe.efi", "shimx64.efi", "text.txt"):
        (root / name).write_bytes(FILE)
    (tmp / "bootd.toml").write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{HOST}"
        interfaces = ["lo"]
        state_dir = "{tmp / 'state'}"
        [services]
        dhcp = false
        dns = false
        http = false
        [tftp]
        port = {_free_udp_port()}
        max_transfers = 64
        timeout = 0.2
        retries = 1
        """))
    return TftpService(load_config(tmp / "bootd.toml"), _Policy())


async def _fetch(port: int, name: str) -> bytes:
    """A plain lockstep read over loopback."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((HOST, 0))
        sock.sendto(p.request(p.Opcode.RRQ, name), (HOST, port))
        got, expected = bytearray(), 1
        while True:
            data, peer = await asyncio.wait_for(loop.sock_recvfrom(sock, 70000), 10)
            packet = p.parse(data)
            if not isinstance(packet, p.Data):
                raise RuntimeError(f"expected DATA, got {packet}")
            if packet.block == expected & 0xFFFF:
                got += packet.data
                expected += 1
            sock.sendto(p.ack(packet.block), peer)
            if len(packet.data) < 512:
                return bytes(got)


async def _run(packets: int, seed: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    loop_errors: list[str] = []
    loop.set_exception_handler(lambda _l, ctx: loop_errors.append(str(ctx.get("exception") or ctx)))
    rng, harness, counts = random.Random(seed), SessionHarness(), Counts()
    with tempfile.TemporaryDirectory() as tmp:
        service = _service(Path(tmp))
        await service.start()
        socks = []
        for i in range(SOURCES):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind((f"127.0.{i // 250}.{1 + i % 250}", 0))
            socks.append(s)
        sent = 0
        started = time.perf_counter()
        try:
            done = 0
            while done < packets:
                for _ in range(min(CHUNK, packets - done)):
                    raw = mutate(rng)
                    fuzz_one(raw, rng, harness, counts)
                    done += 1
                    if done % LISTENER_SHARE == 0:
                        with contextlib.suppress(BlockingIOError):
                            rng.choice(socks).sendto(raw, (HOST, service.port))
                            sent += 1
                # Let the listener read what was sent (bounded: a dropped datagram is never seen).
                for _ in range(200):
                    if service.counters["requests"] >= sent - 5:
                        break
                    await asyncio.sleep(0.001)
            try:
                harness.end()
            except Exception as exc:  # a crash to count, not to stop on
                counts.crashes += 1
                counts.examples.append(f"end: {exc}")
            seconds = time.perf_counter() - started
        finally:
            for s in socks:
                s.close()
        for _ in range(200):
            if not service.transfers and not service.tables()["pending"]:
                break
            await asyncio.sleep(0.05)
        tables = service.tables()
        works = await _fetch(service.port, "undionly.kpxe") == FILE
        await service.stop()
    return {
        "protocol": "tftp", "packets": counts.packets, "crashes": counts.crashes + len(loop_errors),
        "seconds": round(seconds, 2), "packets_per_s": round(counts.packets / seconds),
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "malformed": counts.malformed, "accepted": counts.accepted, "refused": counts.refused,
        "sessions": harness.started, "sessions_completed": harness.completed,
        "listener_sent": sent, "listener_read": service.counters["requests"],
        "listener_refused": service.refusals.total, "listener_transfers": service.counters["complete"]
        + service.counters["failed"] + service.counters["declined"],
        "tables_after": tables, "transfer_after": "ok" if works else "FAILED",
        "examples": counts.examples + loop_errors[:10],
    }


def run(packets: int = 1_000_000, seed: int = 1) -> dict[str, Any]:
    """`packets` mutated datagrams; counts (packets, crashes, peak_rss_kb, seconds, ...)."""
    setup("warning")
    return asyncio.run(_run(packets, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = run(args.packets, args.seed)
    print(json.dumps(result, indent=1))
    sys.exit(1 if result["crashes"] or result["transfer_after"] != "ok" else 0)


if __name__ == "__main__":
    main()
