"""Simulated machines on a rack segment behind a real DHCP relay (ISC dhcrelay).

bench/fleet/sim.py speaks as the relay itself (giaddr set, port 67), which is
the fast way to load one bootd with thousands of machines. Here the machines
(bench/fleet/machine.py, unchanged) sit where real ones would: on the rack's
segment, broadcasting each BOOTREQUEST from port 68 to 255.255.255.255:67. A
relay on the segment forwards it to its bootd, and because the BROADCAST flag
is set (RFC 2131 section 4.1) the relay broadcasts the reply back, so one UDP
socket bound to port 68 on the rack interface hears every machine's replies;
they are matched to machines by chaddr, as sim.py matches relayed ones.

HTTP goes from each machine's leased address with sim.py's client: the
namespace routes the dynamic pool as local (AnyIP, `ip route add local POOL
dev lo`) and its default route is the relay, which routes to bootd. So bootd
sees what it would see from real machines: relayed DHCP with option 82 from
dhcrelay, HTTP from the lease holder's address.

    python -m bench.fleet.broadcast '{"macs": [...], "interface": "eth0", "until": "ready",
                                      "timing": {...}, "deadline": 120, "spread": 0.0}'

prints one JSON line {"result": {...}} (bench.fleet.figures.summary) at the end.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import replace
from typing import Any, cast

from bench.fleet.figures import summary
from bench.fleet.machine import (
    Action,
    DhcpIn,
    Event,
    Finished,
    Http,
    Machine,
    SendDhcp,
    Sleep,
    TimedOut,
    Timing,
)
from bench.fleet.sim import request
from bootd.dhcp.options import MalformedPacket
from bootd.dhcp.packet import BROADCAST_FLAG, build, parse
from bootd.model.states import NodeState

CLIENT_PORT, SERVER_PORT = 68, 67


class _Segment(asyncio.DatagramProtocol):
    def __init__(self, fleet: BroadcastFleet) -> None:
        self.fleet = fleet

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.fleet.dhcp_in(data)


class BroadcastFleet:
    def __init__(self, macs: list[str], timing: Timing, until: NodeState, interface: str,
                 spread: float = 0.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.machines = [Machine(mac, timing, until=until) for mac in macs]
        self.by_chaddr = {m.chaddr: i for i, m in enumerate(self.machines)}
        self.steps = [0] * len(macs)
        self.interface, self.spread = interface, spread
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.remaining = len(macs)
        self.done = asyncio.Event()
        self.counts: dict[str, int] = {}
        self.t0 = 0.0

    def now(self) -> float:
        return self.loop.time() - self.t0

    async def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
        sock.bind(("0.0.0.0", CLIENT_PORT))  # the rack segment's broadcasts, on one interface
        self.transport, _ = await self.loop.create_datagram_endpoint(lambda: _Segment(self), sock=sock)

    def start(self) -> None:
        self.t0 = self.loop.time()
        n = len(self.machines)
        for i in range(n):
            self.loop.call_at(self.t0 + (self.spread * i / n if n > 1 else 0.0), self._power_on, i)

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
            packet = replace(action.packet, flags=action.packet.flags | BROADCAST_FLAG)
            assert self.transport is not None
            self.transport.sendto(build(packet), ("255.255.255.255", SERVER_PORT))
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
        try:
            packet = parse(data)
        except MalformedPacket:
            self.counts["malformed"] = self.counts.get("malformed", 0) + 1
            return
        i = self.by_chaddr.get(packet.chaddr[:6])
        if i is not None:
            self._feed(i, DhcpIn(packet))

    async def _http(self, i: int, step: int, action: Http) -> None:
        ip = self.machines[i].ip
        event = await request(action, None if ip is None else str(ip))
        if self.steps[i] == step:
            self._feed(i, event)


async def simulate(spec: dict[str, object]) -> dict[str, object]:
    macs = cast(list[str], spec["macs"])
    timing = Timing(**cast(dict[str, Any], spec.get("timing", {})))
    until = NodeState(cast(str, spec.get("until", "ready")))
    fleet = BroadcastFleet(macs, timing, until, cast(str, spec.get("interface", "eth0")),
                           float(cast(float, spec.get("spread", 0.0))))
    await fleet.open()
    started = time.process_time()
    fleet.start()
    try:
        await asyncio.wait_for(fleet.done.wait(), float(cast(float, spec.get("deadline", 300.0))))
    except TimeoutError:
        fleet.counts["deadline"] = 1
    for task in list(fleet.tasks):
        task.cancel()
    result = summary(fleet.machines, until)
    result.update(wall=round(fleet.now(), 2), sim_cpu=round(time.process_time() - started, 2),
                  transport=fleet.counts)
    return result


def main(argv: list[str]) -> int:
    result = asyncio.run(simulate(json.loads(argv[0])))
    print(json.dumps({"result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
