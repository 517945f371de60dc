"""The fleet's I/O: thousands of Machines in one asyncio loop, inside the client namespace.

DHCP goes through relays as perfdhcp does (LAB-NOTES): one UDP socket per
rack bound to the rack's relay address, port 67; a machine's BOOTREQUEST gets
giaddr = that address and hops = 1, and bootd answers the relay on port 67
(RFC 2131 section 4.1). No raw socket per machine: replies are matched to
machines by chaddr. HTTP goes from the machine's leased address: the client
namespace treats all of 198.19.0.0/16 as its own (AnyIP: a `local` route on
lo), so a TCP connection bound to the lease is what bootd's lease-holder check
sees. The HTTP client is a few lines of HTTP/1.1 with `Connection: close` on
asyncio streams (no session object per machine), bounded by a semaphore.

Packet loss drops a fraction of datagrams each way. Progress goes to stdout as
one JSON line a second; the last line is the result (bench.fleet.figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sys
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import cast
from urllib.parse import urlsplit

from bench.fleet.figures import summary
from bench.fleet.machine import (
    Action,
    DhcpIn,
    Event,
    Finished,
    Http,
    HttpFailed,
    HttpReply,
    Machine,
    SendDhcp,
    Sleep,
    TimedOut,
    Timing,
)
from bootd.dhcp.options import MalformedPacket
from bootd.dhcp.packet import build, parse
from bootd.model.states import NodeState

SERVER_PORT = 67


@dataclass(frozen=True)
class Plan:
    machines: int
    racks: int
    server: IPv4Address
    timing: Timing
    until: NodeState
    loss: float = 0.0
    spread: float = 0.0        # seconds over which machines power on
    http_concurrency: int = 256
    deadline: float = 600.0    # seconds; machines not finished by then are reported
    seed: int = 42

    def relay(self, rack: int) -> IPv4Address:
        return IPv4Address(f"198.19.{rack}.1")

    def mac(self, i: int) -> str:
        """Unique per machine (the index), with a random octet so MACs are not one run."""
        octet = random.Random(self.seed * 1_000_003 + i).randrange(256)
        return f"52:54:{octet:02x}:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}"


class Relay(asyncio.DatagramProtocol):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.fleet.dhcp_in(data)

    def error_received(self, exc: Exception) -> None:
        self.fleet.count("relay-errors")


class Fleet:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(plan.seed)
        self.machines = [Machine(plan.mac(i), plan.timing, until=plan.until, rng=random.Random(plan.seed + i))
                         for i in range(plan.machines)]
        self.rack_of = [i % plan.racks for i in range(plan.machines)]
        self.by_chaddr = {m.chaddr: i for i, m in enumerate(self.machines)}
        self.steps = [0] * plan.machines
        self.relays: list[Relay] = []
        self.sem = asyncio.Semaphore(plan.http_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.counts: dict[str, int] = {}
        self.remaining = plan.machines
        self.done = asyncio.Event()
        self.t0 = 0.0
        self.http_requests = 0

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def now(self) -> float:
        return self.loop.time() - self.t0

    async def open(self) -> None:
        for rack in range(self.plan.racks):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind((str(self.plan.relay(rack)), SERVER_PORT))
            _, proto = await self.loop.create_datagram_endpoint(lambda: Relay(self), sock=sock)
            self.relays.append(proto)

    def start(self) -> None:
        self.t0 = self.loop.time()
        n = self.plan.machines
        for i in range(n):
            at = self.t0 + (self.plan.spread * i / n if n > 1 else 0.0)
            self.loop.call_at(at, self._power_on, i)

    def _power_on(self, i: int) -> None:
        self._act(i, self.machines[i].start(self.now()))

    def _feed(self, i: int, event: Event) -> None:
        action = self.machines[i].feed(event, self.now())
        if action is not None:
            self._act(i, action)

    def _act(self, i: int, action: Action) -> None:
        self.steps[i] += 1
        step = self.steps[i]
        if isinstance(action, SendDhcp):
            relay = self.plan.relay(self.rack_of[i])
            packet = replace(action.packet, giaddr=relay, hops=1)
            if self.rng.random() >= self.plan.loss:
                transport = self.relays[self.rack_of[i]].transport
                assert transport is not None
                transport.sendto(build(packet), (str(self.plan.server), SERVER_PORT))
            else:
                self.count("dropped-out")
            self.loop.call_later(action.timeout, self._timer, i, step)
        elif isinstance(action, Sleep):
            self.loop.call_later(action.seconds, self._timer, i, step)
        elif isinstance(action, Http):
            task = self.loop.create_task(self._http(i, step, action))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(action, Finished):
            self.remaining -= 1
            if self.remaining == 0:
                self.done.set()

    def _timer(self, i: int, step: int) -> None:
        if self.steps[i] == step:
            self._feed(i, TimedOut())

    def dhcp_in(self, data: bytes) -> None:
        if self.plan.loss and self.rng.random() < self.plan.loss:
            self.count("dropped-in")
            return
        try:
            packet = parse(data)
        except MalformedPacket:
            self.count("malformed-replies")
            return
        i = self.by_chaddr.get(packet.chaddr[:6])
        if i is None:
            self.count("replies-for-nobody")
            return
        self._feed(i, DhcpIn(packet))

    async def _http(self, i: int, step: int, action: Http) -> None:
        ip = self.machines[i].ip
        async with self.sem:
            self.http_requests += 1
            event = await request(action, None if ip is None else str(ip))
        if isinstance(event, HttpFailed):
            self.count("http-failed")
        if self.steps[i] == step:
            self._feed(i, event)

    async def progress(self) -> None:
        while not self.done.is_set():
            print(json.dumps({"progress": self.census(), "t": round(self.now(), 2),
                              "http": self.http_requests}), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 1.0)

    def census(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.machines:
            for mark in m.marks:
                out[mark] = out.get(mark, 0) + 1
        return out


async def request(action: Http, local_ip: str | None) -> Event:
    """One HTTP/1.1 exchange on its own connection (Connection: close)."""
    url = urlsplit(action.url)
    host, port = url.hostname or "", url.port or 80
    path = url.path + (f"?{url.query}" if url.query else "")
    head = [f"{action.method} {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close",
            "User-Agent: bootd-fleet-sim"]
    head += [f"{k}: {v}" for k, v in action.headers]
    if action.body or action.method == "POST":
        head.append(f"Content-Length: {len(action.body)}")
    data = ("\r\n".join(head) + "\r\n\r\n").encode() + action.body
    try:
        async with asyncio.timeout(action.timeout):
            reader, writer = await asyncio.open_connection(
                host, port, local_addr=(local_ip, 0) if local_ip else None)
            try:
                writer.write(data)
                raw = await reader.read(-1)
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        return HttpFailed(type(exc).__name__)
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return HttpFailed("bad response")
    if any(line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower() for line in lines):
        body = _dechunk(body)
    return HttpReply(status, body.decode("utf-8", "replace"))


def _dechunk(body: bytes) -> bytes:
    out, i = bytearray(), 0
    while True:
        end = body.find(b"\r\n", i)
        if end < 0:
            return bytes(out)
        size = int(body[i:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2 : end + 2 + size]
        i = end + 2 + size + 2


async def simulate(plan: Plan) -> dict[str, object]:
    fleet = Fleet(plan)
    await fleet.open()
    started = time.process_time()
    fleet.start()
    reporter = asyncio.create_task(fleet.progress())
    try:
        await asyncio.wait_for(fleet.done.wait(), plan.deadline)
    except TimeoutError:
        fleet.count("deadline")
    fleet.done.set()
    await reporter
    for task in list(fleet.tasks):
        task.cancel()
    result = summary(fleet.machines, plan.until)
    result.update(wall=round(fleet.now(), 2), sim_cpu=round(time.process_time() - started, 2),
                  http_requests=fleet.http_requests, transport=fleet.counts)
    return result


def main(argv: list[str]) -> int:
    """`python -m bench.fleet.sim PLAN-JSON`: run in the client namespace by bench.fleet."""
    spec = json.loads(argv[0])
    plan = Plan(machines=spec["machines"], racks=spec["racks"], server=IPv4Address(spec["server"]),
                timing=Timing(**spec["timing"]), until=NodeState(spec["until"]), loss=spec["loss"],
                spread=spec["spread"], http_concurrency=spec["http_concurrency"], deadline=spec["deadline"],
                seed=spec["seed"])
    result = asyncio.run(simulate(plan))
    print(json.dumps({"result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
