"""Power and boot-device control of one node's BMC: an async protocol, and IPMI over pyghmi.

Each operation runs pyghmi in a short-lived worker process (python -m
bootd.bmc.ipmi_worker; the request, password included, goes over its stdin,
never argv). Measured reasons: pyghmi is blocking, keeps process-wide session
caches that hand a dead or half-logged-in session to the next caller (a second
Command for the same BMC waited forever against ipmi_sim; after a BMC stopped
answering, every later call failed with "Session no longer connected"), and a
thread stuck in it cannot be stopped. A process gives each operation a clean
pyghmi, real parallelism across BMCs, and a timeout that kills. The event loop
never waits on a BMC. One operation at a time per BMC is the caller's rule
(PowerService holds a lock per BMC address, see throttle.KeyedLocks), so this
module keeps no state between operations.
Failures become BmcError with a kind an operator can act on:
unreachable, auth (wrong user/password), timeout (answered, then stopped),
error (the BMC refused the command).
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

from bootd.errors import BootdError

IPMI_PORT = 623
SWITCH_WAIT = 60.0  # seconds a power change may take to show
OPERATION_LIMIT = SWITCH_WAIT * 2 + 30  # a whole operation (a cycle switches twice)


class PowerOp(enum.StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    RESET = "reset"
    SOFT_OFF = "soft-off"
    STATUS = "status"
    PXE = "pxe"          # next boot from the network, once
    PXE_ALWAYS = "pxe-always"
    IDENTIFY = "identify"


class ErrorKind(enum.StrEnum):
    UNREACHABLE = "unreachable"
    AUTH = "auth"
    TIMEOUT = "timeout"
    ERROR = "error"


class BmcError(BootdError):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind


@dataclass(frozen=True)
class Outcome:
    power: str | None  # "on"/"off" when known after the operation
    detail: str = ""


class PowerController(Protocol):
    async def run(self, op: PowerOp) -> Outcome: ...


def parse_address(address: str) -> tuple[str, int]:
    """"host" or "host:port" (a BMC on a non-standard port, such as a simulator)."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host and "]" not in port:
        return host.strip("[]"), int(port)
    return address, IPMI_PORT


def _classify(exc: Exception, opened: bool) -> BmcError:
    text = str(exc) if str(exc) not in ("", "None") else type(exc).__name__
    lowered = text.lower()
    if "password" in lowered or "unauthorized" in lowered or ("user" in lowered and "name" in lowered):
        return BmcError(ErrorKind.AUTH, text)
    if not opened:
        return BmcError(ErrorKind.UNREACHABLE, f"no IPMI session ({text})")
    if ("timeout" in lowered or "timed out" in lowered or "no longer connected" in lowered
            or text == "IpmiException"):
        return BmcError(ErrorKind.TIMEOUT, f"the BMC stopped answering ({text})")
    return BmcError(ErrorKind.ERROR, text)


class IpmiController:
    """IPMI 2.0 (RMCP+, lanplus) through pyghmi, one worker process per operation."""

    def __init__(self, address: str, user: str, password: str, cycle_pause: float = 2.0,
                 limit: float = OPERATION_LIMIT) -> None:
        self.host, self.port = parse_address(address)
        self.user, self._password = user, password
        self.cycle_pause, self.limit = cycle_pause, limit

    def __repr__(self) -> str:  # never the password
        return f"IpmiController({self.host}:{self.port}, user={self.user!r})"

    async def run(self, op: PowerOp) -> Outcome:
        request = json.dumps({"host": self.host, "port": self.port, "user": self.user,
                              "password": self._password, "op": op.value,
                              "cycle_pause": self.cycle_pause}).encode()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bootd.bmc.ipmi_worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(request), self.limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BmcError(ErrorKind.TIMEOUT, f"no result within {self.limit:.0f} s") from None
        try:
            answer = json.loads(out)
        except ValueError:
            raise BmcError(ErrorKind.ERROR,
                           f"IPMI worker exited {proc.returncode} without an answer") from None
        if "error" in answer:
            raise BmcError(ErrorKind(answer["kind"]), answer["error"])
        return Outcome(answer.get("power"), answer.get("detail", ""))


def perform(host: str, port: int, user: str, password: str, op: PowerOp, cycle_pause: float) -> Outcome:
    """One operation with pyghmi, blocking: the worker process's whole job."""
    opened = False
    try:
        from pyghmi.ipmi import command

        session = command.Command(bmc=host, userid=user, password=password, port=port, keepalive=False)
        opened = True
        return _operate(session, op, cycle_pause)
    except BmcError:
        raise
    except Exception as exc:  # pyghmi raises bare exceptions of several kinds
        raise _classify(exc, opened) from None


def _switch(session: Any, state: str) -> str:
    """Ask for `state` and wait (bounded) until the BMC reports it (pyghmi's own
    wait=True trips over its session timer without keepalive)."""
    session.set_power(state)
    deadline = time.monotonic() + SWITCH_WAIT
    while True:
        now: str = session.get_power()["powerstate"]
        if now == state or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def _operate(session: Any, op: PowerOp, cycle_pause: float) -> Outcome:
    if op is PowerOp.STATUS:
        return Outcome(session.get_power()["powerstate"])
    if op is PowerOp.ON:
        return Outcome(_switch(session, "on"))
    if op is PowerOp.OFF:
        return Outcome(_switch(session, "off"))
    if op is PowerOp.SOFT_OFF:
        session.set_power("shutdown")
        return Outcome(None, "ACPI shutdown requested")
    if op is PowerOp.RESET:
        session.set_power("reset")
        return Outcome("on", "reset")
    if op is PowerOp.CYCLE:
        # Off, then on: a "power cycle" command is optional in IPMI, off+on works on all.
        if session.get_power()["powerstate"] == "on":
            _switch(session, "off")
            time.sleep(cycle_pause)
        return Outcome(_switch(session, "on"), "cycled")
    if op in (PowerOp.PXE, PowerOp.PXE_ALWAYS):
        session.set_bootdev("network", persist=op is PowerOp.PXE_ALWAYS)
        return Outcome(None, "next boot: network" + (" (persistent)" if op is PowerOp.PXE_ALWAYS
                                                    else " (once)"))
    if op is PowerOp.IDENTIFY:
        session.set_identify(on=True, duration=30)
        return Outcome(None, "identify light on for 30 s")
    raise BmcError(ErrorKind.ERROR, f"unknown operation {op}")
