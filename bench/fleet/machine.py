"""One simulated machine, sans-IO: events in, actions out, no sockets and no clock.

A machine is written as the real thing runs, one step after another, as a
generator: iPXE's DHCP (DISCOVER, OFFER, REQUEST, ACK with option 60
"PXEClient:Arch:00000:UNDI:002001", user class "iPXE", option 175, so bootd
answers with its script URL), the script fetch (honouring a wave's
`# bootd-wait seconds=N place=P of=Q` line: sleep, ask the same URL again),
then what the script boots:

- the discovery image (bootd/images/agent.sh, step by step): its own udhcpc
  lease, the inventory posted with `discovered`, /self polled every POLL
  seconds, a 403 answered once by /boot/identity (allocation rotated the
  token), hardware-install tasks fetched, "run" and reported, then
  `hardware-installed` and a reboot; a script without node or token (bootd did
  not record the machine) makes the agent sleep 60 s and reboot;
- an installer (kickstart/preseed/user-data): its DHCP, the answer file, the
  answer file's own `installing`/`installed` callback URLs, a reboot;
- the local disk (sanboot): the installed OS's DHCP, then firstboot.sh's
  `readying` and `ready` callbacks.

Each step yields one action (SendDhcp, Http, Sleep, Finished) and receives one
event (DhcpIn, HttpReply, HttpFailed, TimedOut); `Machine.feed` filters DHCP
replies by xid and message type, so the generator sees only its own. Time
comes in with each event (`now`), randomness from a seeded Random: the same
inputs give the same run, which is how the unit tests drive it.
"""

from __future__ import annotations

import enum
import json
import random
import re
import struct
from collections.abc import Generator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from bootd.dhcp.options import MessageType, Opt, Options
from bootd.dhcp.packet import BOOTREQUEST, Packet
from bootd.model.states import NodeState


@dataclass(frozen=True, slots=True)
class Timing:
    """Firmware and software timing (seconds), retries and timeouts."""

    post: float = 0.0             # power-on self test before the first DISCOVER
    kernel: float = 1.0           # script -> kernel and initrd fetched, image running
    task: float = 0.2             # one hardware-install task running
    install: float = 5.0          # installer: answer file -> `installed`
    os_boot: float = 1.0          # sanboot -> the installed OS's network is up
    poll: float = 5.0             # agent.sh POLL
    reboot: float = 2.0           # agent.sh `sleep 2` before `reboot -f`; firmware restart
    unknown_reboot: float = 60.0  # agent.sh: no bootd.node/bootd.token -> sleep 60, reboot
    dhcp_timeout: float = 1.0     # first retransmission; doubles up to dhcp_max_timeout
    dhcp_max_timeout: float = 8.0
    dhcp_tries: int = 5
    http_timeout: float = 30.0    # agent.sh wraps wget in `timeout 30`
    http_tries: int = 3           # the firmware's script fetch, the installer's answer file
    unreachable_limit: float = 600.0  # agent.sh UNREACHABLE_LIMIT


class Client(enum.Enum):
    """Who does DHCP for the machine at that moment (what bootd's classifier sees)."""

    IPXE = "ipxe"
    UDHCPC = "udhcpc"        # the discovery image's busybox
    INSTALLER = "installer"  # anaconda / d-i
    OS = "os"                # the installed system's DHCP client


class Outcome(enum.StrEnum):
    REACHED = "reached"      # got to the `until` state
    GAVE_UP = "gave-up"      # stopped short (e.g. firstboot's callbacks all failed)


# -- actions (out) and events (in) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class SendDhcp:
    packet: Packet  # from the client: giaddr is the relay's business
    timeout: float
    expect: frozenset[MessageType]


@dataclass(frozen=True, slots=True)
class Http:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Finished:
    outcome: Outcome


Action = SendDhcp | Http | Sleep | Finished


@dataclass(frozen=True, slots=True)
class DhcpIn:
    packet: Packet


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: str


@dataclass(frozen=True, slots=True)
class HttpFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class TimedOut:
    pass


Event = DhcpIn | HttpReply | HttpFailed | TimedOut
Program = Generator[Action, Event, bool]


class _Reboot(Exception):
    """agent.sh's `reboot -f` from deep inside a step: start over from DHCP."""


# -- what a boot script says --------------------------------------------------------


class ScriptKind(enum.Enum):
    WAIT = "wait"
    DISCOVERY = "discovery"
    INSTALL = "install"
    LOCAL = "local"
    OTHER = "other"


WAIT_LINE = re.compile(r"^# bootd-wait seconds=(\d+) place=(\d+) of=(\d+)", re.MULTILINE)
KERNEL_LINE = re.compile(r"^kernel (\S+) (.*?)(?: &&.*)?$", re.MULTILINE)
CALLBACK = re.compile(r"(https?://[^\s'\"]+/transition\?token=[^&\s'\"]+&state=)installing")


@dataclass(frozen=True, slots=True)
class Script:
    kind: ScriptKind
    args: dict[str, str] = field(default_factory=dict)  # the kernel command line's key=value words
    wait: int = 0
    place: int = 0
    of: int = 0

    @property
    def answer_url(self) -> str | None:
        """The installer's answer file: kickstart (inst.ks= or ks=), preseed (url=
        with auto=true), or cloud-init's nocloud-net seed + "user-data"."""
        a = self.args
        if "inst.ks" in a or "ks" in a:
            return a.get("inst.ks") or a["ks"]
        if "ds" in a and ";s=" in a["ds"]:
            return a["ds"].split(";s=", 1)[1] + "user-data"
        if a.get("auto") == "true" and "url" in a:
            return a["url"]
        return None


def parse_script(text: str) -> Script:
    """What an iPXE script from bootd boots (bootd/templates/ipxe.j2)."""
    wait = WAIT_LINE.search(text)
    if wait:
        return Script(ScriptKind.WAIT, wait=int(wait[1]), place=int(wait[2]), of=int(wait[3]))
    kernel = KERNEL_LINE.search(text)
    if kernel is None:
        return Script(ScriptKind.LOCAL if "sanboot" in text else ScriptKind.OTHER)
    args = dict(w.split("=", 1) for w in kernel[2].split() if "=" in w)
    if "bootd.url" in args:
        return Script(ScriptKind.DISCOVERY, args)
    return Script(ScriptKind.INSTALL if Script(ScriptKind.INSTALL, args).answer_url else ScriptKind.OTHER,
                  args)


# -- DHCP requests ---------------------------------------------------------------

IPXE_VENDOR = b"PXEClient:Arch:00000:UNDI:002001"
# iPXE's encapsulated options (include/ipxe/dhcp.h): features it was built with
# (HTTP 0x13, DNS 0x17, TFTP 0x15, bzImage 0x18, PXE 0x21, menu 0x27), bus id
# 0xb1 and version 0xeb, as Debian's ipxe-qemu ROM sends them.
IPXE_175 = bytes((0x13, 1, 1, 0x17, 1, 1, 0x15, 1, 1, 0x18, 1, 1, 0x21, 1, 1, 0x27, 1, 1,
                  0xb1, 5, 1, 0x1a, 0xf4, 0x10, 0x00, 0xeb, 3, 1, 21, 1))
IPXE_PRL = bytes((1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134,
                  135, 175, 203))
CLIENT_OPTIONS: dict[Client, tuple[tuple[int, bytes], ...]] = {
    Client.IPXE: ((Opt.MAX_MESSAGE_SIZE, struct.pack("!H", 1472)), (Opt.CLIENT_ARCH, b"\0\0"),
                  (Opt.CLIENT_NDI, b"\x01\x02\x01"), (Opt.VENDOR_CLASS, IPXE_VENDOR),
                  (Opt.USER_CLASS, b"iPXE"), (Opt.PARAMETER_REQUEST_LIST, IPXE_PRL), (Opt.IPXE, IPXE_175)),
    Client.UDHCPC: ((Opt.MAX_MESSAGE_SIZE, struct.pack("!H", 576)), (Opt.VENDOR_CLASS, b"udhcp 1.35.0"),
                    (Opt.PARAMETER_REQUEST_LIST, bytes((1, 3, 6, 12, 15, 28, 42)))),
    Client.INSTALLER: ((Opt.VENDOR_CLASS, b"anaconda-Linux 5.14 x86_64"),
                       (Opt.PARAMETER_REQUEST_LIST, bytes((1, 3, 6, 12, 15, 26, 28, 42, 119)))),
    Client.OS: ((Opt.PARAMETER_REQUEST_LIST, bytes((1, 3, 6, 12, 15, 26, 28, 42, 119, 121))),),
}
TRANSITION = "/api/v1/nodes/{}/transition"


class Machine:
    """One machine. `start(now)` gives its first action; `feed(event, now)` the next
    one, or None when the event is not for the step it is at (a stray DHCP reply)."""

    def __init__(self, mac: str, timing: Timing, *, until: NodeState = NodeState.DISCOVERED,
                 rng: random.Random | None = None, inventory: dict[str, object] | None = None) -> None:
        self.mac = mac
        self.timing = timing
        self.until = until
        self.rng = rng or random.Random(mac)
        self.chaddr = bytes.fromhex(mac.replace(":", ""))
        self.uuid = bytes(self.rng.randrange(256) for _ in range(16))
        self.inventory = inventory or default_inventory(mac)
        self.now = 0.0
        self.ip: IPv4Address | None = None
        self.marks: dict[str, float] = {}  # first time each milestone (a node state, mostly) was seen
        self.counts: dict[str, int] = {}   # retransmissions, waits, reboots, errors
        self.place: tuple[int, int] | None = None  # last wave place (place, of)
        self.base = ""  # bootd.url from the discovery script
        self.node = "-"
        self.token = ""
        self.callback: str | None = None  # firstboot's URL, once an installer put it on "disk"
        self.outcome: Outcome | None = None
        self._program = self._life()
        self._pending: Action | None = None
        self._xid = 0

    # -- driving -----------------------------------------------------------------

    @property
    def pending(self) -> Action | None:
        return self._pending

    def start(self, now: float) -> Action:
        self.now = now
        return self._next(next(self._program))

    def feed(self, event: Event, now: float) -> Action | None:
        pending = self._pending
        if isinstance(event, DhcpIn) and (
                not isinstance(pending, SendDhcp) or event.packet.xid != self._xid
                or event.packet.message_type not in pending.expect or event.packet.chaddr[:6] != self.chaddr):
            return None
        self.now = now
        try:
            action = self._program.send(event)
        except StopIteration:
            action = Finished(self.outcome or Outcome.GAVE_UP)
        return self._next(action)

    def _next(self, action: Action) -> Action:
        self._pending = action
        if isinstance(action, Finished):
            self.outcome = action.outcome
        return action

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def mark(self, what: str) -> None:
        self.marks.setdefault(what, self.now)

    # -- the machine's life --------------------------------------------------------

    def _life(self) -> Generator[Action, Event, None]:
        if self.timing.post:
            yield Sleep(self.timing.post)
        self.mark("power-on")
        while True:
            try:
                done = yield from self._firmware()
            except _Reboot:
                done = False
            if done:
                self.outcome = Outcome.REACHED if self.until.value in self.marks else Outcome.GAVE_UP
                yield Finished(self.outcome)
                return
            self.count("reboots")
            yield Sleep(self.timing.reboot)

    def _firmware(self) -> Program:
        """iPXE: DHCP, the script (waiting as long as a wave says), then what it boots."""
        ack = yield from self._dora(Client.IPXE)
        if ack is None:
            return False
        url = (ack.options.get(Opt.BOOTFILE_NAME) or ack.file).rstrip(b"\0").decode()
        if not url.startswith("http"):
            self.count("no-script-url")
            return False
        while True:
            text = yield from self._fetch(url)
            if text is None:
                return False
            script = parse_script(text)
            if script.kind is not ScriptKind.WAIT:
                break
            self.count("waits")
            self.mark("waiting")
            self.place = (script.place, script.of)
            yield Sleep(script.wait)  # iPXE `sleep N`, then `chain` the same URL
        self.place = None
        if script.kind is ScriptKind.DISCOVERY:
            return (yield from self._agent(script))
        if script.kind is ScriptKind.INSTALL:
            return (yield from self._installer(script))
        if script.kind is ScriptKind.LOCAL:
            return (yield from self._installed_os())
        self.count("unknown-script")
        return False

    # -- DHCP ---------------------------------------------------------------------

    def _packet(self, client: Client, mtype: MessageType, extra: tuple[tuple[int, bytes], ...] = (),
                secs: int = 0) -> Packet:
        items: list[tuple[int, bytes]] = [(Opt.MESSAGE_TYPE, bytes((mtype,)))]
        items += extra
        items.append((Opt.CLIENT_ID, b"\x01" + self.chaddr))
        if client is Client.IPXE:
            items.append((Opt.CLIENT_UUID, b"\0" + self.uuid))
        items += CLIENT_OPTIONS[client]
        return Packet(op=BOOTREQUEST, xid=self._xid, chaddr=self.chaddr, options=Options(items),
                      secs=min(secs, 0xFFFF))

    def _exchange(self, packet: Packet, expect: frozenset[MessageType], what: str
                  ) -> Generator[Action, Event, Packet | None]:
        timeout = self.timing.dhcp_timeout
        for attempt in range(self.timing.dhcp_tries):
            if attempt:
                self.count(f"{what}-retransmits")
            event = yield SendDhcp(packet, timeout, expect)
            if isinstance(event, DhcpIn):
                return event.packet
            timeout = min(timeout * 2, self.timing.dhcp_max_timeout)
        return None

    def _dora(self, client: Client) -> Generator[Action, Event, Packet | None]:
        """DISCOVER/OFFER/REQUEST/ACK (RFC 2131 section 3.1); a NAK starts over once."""
        self.mark("first-discover")
        for _ in range(2):
            self._xid = self.rng.getrandbits(32)
            started = self.now
            offer = yield from self._exchange(self._packet(client, MessageType.DISCOVER),
                                              frozenset({MessageType.OFFER}), "discover")
            if offer is None:
                self.count("dhcp-gave-up")
                return None
            server = offer.options.get(Opt.SERVER_ID, b"")
            request = self._packet(client, MessageType.REQUEST,
                                   ((Opt.REQUESTED_IP, offer.yiaddr.packed), (Opt.SERVER_ID, server)),
                                   secs=int(self.now - started))
            reply = yield from self._exchange(request, frozenset({MessageType.ACK, MessageType.NAK}),
                                              "request")
            if reply is None:
                self.count("dhcp-gave-up")
                return None
            if reply.message_type is MessageType.ACK:
                self.ip = reply.yiaddr
                self.mark("leased")
                return reply
            self.count("naks")
        return None

    # -- HTTP ---------------------------------------------------------------------

    def _fetch(self, url: str) -> Generator[Action, Event, str | None]:
        """A GET as firmware or an installer does it: a few tries, then give up."""
        for attempt in range(self.timing.http_tries):
            if attempt:
                yield Sleep(2.0 * attempt)
            event = yield Http("GET", url, timeout=self.timing.http_timeout)
            if isinstance(event, HttpReply) and event.status == 200:
                return event.body
            self.count(f"http-{event.status}" if isinstance(event, HttpReply) else "http-failed")
        return None

    def _api(self, method: str, path: str, body: str = "", ctype: str = "application/json",
             extra: tuple[tuple[str, str], ...] = ()) -> Generator[Action, Event, str | None]:
        """agent.sh api(): a 4xx/5xx fails at once (a 403 once tries /boot/identity
        first), an unreachable bootd is retried with backoff up to UNREACHABLE_LIMIT."""
        waited, delay, fresh = 0.0, 1.0, False
        url = self.base + path
        while True:
            headers = (("Authorization", f"Bearer {self.token}"), *extra)
            if method == "POST":
                headers += (("Content-Type", ctype),)
            event = yield Http(method, url, headers, body.encode(), self.timing.http_timeout)
            if isinstance(event, HttpReply):
                if event.status < 400:
                    return event.body
                if event.status == 403 and not fresh and (yield from self._reidentify()):
                    fresh = True
                    continue
                self.count(f"api-{event.status}")
                return None
            self.count("api-unreachable")
            if waited >= self.timing.unreachable_limit:
                raise _Reboot
            yield Sleep(delay)
            waited += delay
            delay = min(delay * 2, 30.0)

    def _reidentify(self) -> Generator[Action, Event, bool]:
        url = f"{self.base}/boot/identity?mac={self.mac}"
        event = yield Http("GET", url, timeout=self.timing.http_timeout)
        if not isinstance(event, HttpReply) or event.status != 200:
            return False
        lines = dict(line.split("=", 1) for line in event.body.splitlines() if "=" in line)
        token, node = lines.get("token", ""), lines.get("node", "")
        if not token or not node or token == self.token:
            return False
        self.token = token  # agent.sh keeps NODE: /self tells it the new name
        self.count("reidentified")
        return True

    def _report(self, state: NodeState, message: str = "", inventory: bool = False
                ) -> Generator[Action, Event, bool]:
        body: dict[str, object] = {"state": state.value, "message": message}
        if inventory:
            body["inventory"] = self.inventory
        ok = (yield from self._api("POST", TRANSITION.format(self.node), json.dumps(body))) is not None
        if ok:
            self.mark(state.value)
        return ok

    # -- the discovery image (agent.sh main) -------------------------------------------

    def _agent(self, script: Script) -> Program:
        yield Sleep(self.timing.kernel)
        self.base = script.args.get("bootd.url", "")
        self.node = script.args.get("bootd.node", "-")
        self.token = script.args.get("bootd.token", "")
        state = script.args.get("bootd.state", "")
        if not self.base or not self.token or self.node == "-":
            self.count("unknown-to-bootd")
            yield Sleep(self.timing.unknown_reboot)
            return False
        if (yield from self._dora(Client.UDHCPC)) is None:
            yield Sleep(10.0)
            return False
        if state in ("discovering", "reset", "problem", "discovered") \
                and not (yield from self._report(NodeState.DISCOVERED, inventory=True)):
            self.count("discovered-refused")
        while True:
            if self.until is NodeState.DISCOVERED and NodeState.DISCOVERED.value in self.marks:
                return True  # the bench stops here; a real agent goes on polling
            now = yield from self._state_now()
            if now == NodeState.DISCOVERED.value:
                self.mark(now)
                if self.until is NodeState.DISCOVERED:
                    return True
            if now == NodeState.HARDWARE_INSTALLING.value:
                self.mark(now)
                yield from self._hardware_install()
                break
            if now in ("discovered", "discovering", "reset", "problem", ""):
                yield Sleep(self.timing.poll)
                continue
            break  # any other state: reboot into what bootd says now
        yield Sleep(self.timing.reboot)
        return False

    def _state_now(self) -> Generator[Action, Event, str]:
        text = yield from self._api("GET", f"/api/v1/nodes/{self.node}/self")
        if text is None:
            return ""
        try:
            me = json.loads(text)
        except ValueError:
            return ""
        name = me.get("name")
        if isinstance(name, str) and name and name != self.node:
            self.count("renamed")
            self.node = name
        return str(me.get("state", ""))

    def _hardware_install(self) -> Generator[Action, Event, None]:
        base = f"/api/v1/nodes/{self.node}/tasks"
        tasks = yield from self._api("GET", base)
        if tasks is None:
            yield from self._report(NodeState.PROBLEM, "cannot fetch the task list")
            return
        names = tasks.split()
        for task in names:
            if (yield from self._api("GET", f"{base}/{task}")) is None:
                yield from self._report(NodeState.PROBLEM, f"cannot fetch task {task}")
                return
            yield Sleep(self.timing.task)
            # A simulated machine has no BMC: the bmc task exits 0 without its marker.
            yield from self._api("POST", f"{base}/{task}", f"{task}: simulated, no BMC\n", "text/plain",
                                 (("X-Task-Status", "0"),))
        yield from self._report(NodeState.HARDWARE_INSTALLED, f"tasks: {' '.join(names)}")

    # -- the OS installer and the installed OS ---------------------------------------

    def _installer(self, script: Script) -> Program:
        yield Sleep(self.timing.kernel)
        if (yield from self._dora(Client.INSTALLER)) is None:
            return False
        url = script.answer_url
        assert url is not None  # parse_script said INSTALL
        answer = yield from self._fetch(url)
        callback = None if answer is None else CALLBACK.search(answer)
        if callback is None:
            self.count("no-answer-file")
            return False
        cb = callback[1]
        if (yield from self._callback(cb, NodeState.INSTALLING, tries=4)):  # curl --retry 3 || true
            yield Sleep(self.timing.install)
            yield from self._callback(cb, NodeState.INSTALLED, tries=4)
        self.callback = cb  # firstboot.sh, written to the new system's disk
        return False  # the installer reboots

    def _installed_os(self) -> Program:
        yield Sleep(self.timing.os_boot)
        while (yield from self._dora(Client.OS)) is None:
            yield Sleep(self.timing.dhcp_max_timeout)
        if self.callback is not None:  # firstboot.sh: each report up to 30 times, 10 s apart
            if (yield from self._callback(self.callback, NodeState.READYING, tries=30, pause=10.0)):
                yield from self._callback(self.callback, NodeState.READY, tries=30, pause=10.0)
            self.callback = None
        return True

    def _callback(self, cb: str, state: NodeState, *, tries: int, pause: float = 1.0
                  ) -> Generator[Action, Event, bool]:
        for attempt in range(tries):
            if attempt:
                yield Sleep(pause)
            event = yield Http("POST", cb + state.value, timeout=self.timing.http_timeout)
            if isinstance(event, HttpReply) and event.status == 200:
                self.mark(state.value)
                return True
            if isinstance(event, HttpReply) and event.status < 500:
                self.count(f"callback-{event.status}")  # curl -f: a 4xx is final
                return False
            self.count("callback-failed")
        return False


def default_inventory(mac: str) -> dict[str, object]:
    """What agent.sh's inventory() prints for a small virtual machine."""
    return {
        "system": {"vendor": "QEMU", "product": "Standard PC (i440FX + PIIX, 1996)",
                   "serial": mac.replace(":", ""), "uuid": ""},
        "cpus": 2, "cpu_model": "QEMU Virtual CPU version 2.5+", "memory_kb": 2030612,
        "disks": [{"name": "vda", "size_bytes": 8589934592, "serial": "", "model": ""}],
        "nics": [{"name": "eth0", "mac": mac, "driver": "virtio_net", "speed_mbps": None, "link": True}],
        "bmc": None, "boot_nic": "eth0",
    }
