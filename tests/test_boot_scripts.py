"""Boot scripts that survive a hiccup: every fetch in every rendered script has its
retries and its way out, and bootd hears about the failure.

The iPXE scripts are run by a small model of iPXE's shell (core/exec.c, script.c:
a line's commands split by &&, || and ;, each command's ${...} expanded when it
runs, innermost first, ${errno} kept from the last failure, labels and goto),
with fetches that fail as a test says, for every state and every profile family.
GRUB configs and pxelinux configs are checked for their shape (GRUB: each load
inside `if` in a bounded loop that ends in a reboot; pxelinux: a boot: prompt
timeout that reboots). The report endpoint is tested over HTTP on a real database.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from boot_timeline import ipv6_on
from bootd_proc import Bootd
from conftest import REPO, loopback_config
from netlab import Lab, add_tap, qemu_argv

from bootd import boot
from bootd.app import http_app
from bootd.boot import NodeView
from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.errors import InvalidInput
from bootd.images.build import fetch
from bootd.keys import SecretBox
from bootd.lifecycle import Lifecycle
from bootd.model.bootfail import MAX_URL, BootFailure, Outcome, ReportLimiter, Step, parse_report
from bootd.model.lifecycle import BOOT, Boot
from bootd.model.records import NewNode
from bootd.model.states import NodeState

MAC = "52:54:00:00:00:07"
PROFILES = ("ubuntu-20.04", "ubuntu-24.04", "rhel-5.6", "rocky-9")  # one per family
TOKEN = "operator-token"
ERRNO = 0x2D0C613C  # what the fake fetches fail with
CACHE = REPO / ".cache" / "images"  # shared with the VM lab's image build
VM_WAIT = 400.0  # TCG on shared cores: a bound, not a speed claim


def config() -> Config:
    return parse_config(loopback_config(Path("/var/lib/bootd"), 8080, """
[install]
root_password_hash = "$6$bootdsalt$hash"
"""))


# -- a model of iPXE's shell ------------------------------------------------------------

@dataclass
class Ipxe:
    """Runs a script; `fails(url, attempt)` says whether the attempt-th fetch of url fails."""

    script: str
    fails: Callable[[str, int], bool]
    boot_fails: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    trace: list[tuple[str, str]] = field(default_factory=list)  # (what, argument)
    attempts: dict[str, int] = field(default_factory=dict)
    errno: int = 0

    def expand(self, token: str) -> str:
        while (m := re.search(r"\$\{([^${}]*)\}", token)) is not None:  # innermost first
            name = m.group(1)
            value = f"{self.errno:#x}" if name == "errno" else self.settings.get(name, "")
            if name == "platform":
                value = "pcbios"
            token = token[:m.start()] + value + token[m.end():]
        return token

    def run(self, max_commands: int = 5000) -> list[tuple[str, str]]:
        lines = self.script.splitlines()
        assert lines[0] == "#!ipxe"
        labels = {line[1:]: i for i, line in enumerate(lines) if line.startswith(":")}
        pc, executed = 1, 0
        while pc < len(lines):
            line, pc = lines[pc], pc + 1
            if line.startswith(":"):
                continue
            tokens = line.split()
            rc, process = 0, True
            while True:
                end = next((i for i, t in enumerate(tokens) if t in ("&&", "||", ";") or t[0] == "#"),
                           len(tokens))
                if process and end:
                    executed += 1
                    assert executed < max_commands, f"the script does not end:\n{self.trace[-20:]}"
                    argv = [self.expand(t) for t in tokens[:end]]
                    rc, jump = self.execute(argv, labels)
                    if rc:
                        self.errno = rc
                    if jump == "stop":
                        return self.trace
                    if jump is not None:
                        pc = labels[jump] + 1
                        break
                elif process:
                    rc = 0  # an empty command succeeds
                if end == len(tokens) or tokens[end][0] == "#":
                    break
                process = {"&&": rc == 0, "||": rc != 0, ";": True}[tokens[end]]
                tokens = tokens[end + 1:]
        return self.trace

    def fetch(self, url: str) -> int:
        n = self.attempts[url] = self.attempts.get(url, 0) + 1
        self.trace.append(("fetch", url))
        return ERRNO if self.fails(url, n) else 0

    def execute(self, argv: list[str], labels: dict[str, int]) -> tuple[int, str | None]:
        cmd, args = argv[0], argv[1:]
        if cmd == "set":
            name = args[0].split(":")[0]
            if args[1:]:
                self.settings[name] = " ".join(args[1:])
            else:
                self.settings.pop(name, None)
        elif cmd == "inc":
            value = int(self.settings.get(args[0], "0"), 0) + (int(args[1]) if args[1:] else 1)
            self.settings[args[0]] = str(value)
        elif cmd == "iseq":
            return (0 if args[0] == args[1] else 1), None
        elif cmd == "goto":
            assert args[0] in labels, f"goto to a missing label {args[0]}"
            return 0, args[0]
        elif cmd == "sleep":
            self.trace.append(("sleep", args[0]))
        elif cmd in ("kernel", "initrd", "chain", "imgfetch"):
            url = next(a for a in args if "://" in a)
            if "/boot/failed?" in url:
                self.trace.append(("report", url))
                return 0, None
            return self.fetch(url), None
        elif cmd == "boot":
            self.trace.append(("boot", ""))
            return (1, None) if self.boot_fails else (0, "stop")
        elif cmd in ("reboot", "exit"):
            self.trace.append((cmd, ""))
            return 0, "stop"
        elif cmd == "sanboot":
            self.trace.append(("sanboot", ""))
            return 1, None  # no disk: on to the fallback
        elif cmd not in ("echo", "imgfree"):
            raise AssertionError(f"command the model does not know: {argv}")
        return 0, None


def every_ipxe_script() -> list[tuple[str, str, NodeState]]:
    cases = []
    for profile in PROFILES:
        for state in NodeState:
            view = NodeView("n7", MAC, state, profile, "T0KEN", None)
            cases.append((boot.script("ipxe", view, config()), profile, state))
    return cases


IPXE_CASES = every_ipxe_script()
IDS = [f"{p}-{s.value}" for _, p, s in IPXE_CASES]


def fetched(trace: list[tuple[str, str]]) -> list[str]:
    return [arg for what, arg in trace if what == "fetch"]


@pytest.mark.parametrize(("script", "profile", "state"), IPXE_CASES, ids=IDS)
def test_ipxe_every_fetch_retries_then_reports_and_reboots(script: str, profile: str,
                                                            state: NodeState) -> None:
    ok = Ipxe(script, lambda url, n: False).run()
    if BOOT[state] is Boot.LOCAL:
        # Nothing to fetch: the disk, or back to the firmware; never a prompt.
        assert fetched(ok) == [] and ok == [("sanboot", ""), ("exit", "")]
        return
    urls = fetched(ok)
    assert len(urls) == 2 and ok[-1] == ("boot", "")
    assert not [w for w, _ in ok if w in ("sleep", "report")]
    for url in urls:  # each fetch, failing for good
        trace = Ipxe(script, lambda u, n, bad=url: u == bad).run()
        assert fetched(trace).count(url) == 3, trace
        waits = [arg for what, arg in trace if what == "sleep"]
        assert waits == ["2", "4", "30"], waits  # backoff, then the pause before the reboot
        reports = [arg for what, arg in trace if what == "report"]
        assert len(reports) == 1
        report = parse_report(dict(parse_qsl(urlsplit(reports[0]).query)))
        assert report == BootFailure(MAC, Step.KERNEL if url == urls[0] else Step.INITRD, url, ERRNO, 3)
        assert trace[-1] == ("reboot", "") and ("boot", "") not in trace
        # A hiccup: two failures, then the fetch works and the boot goes on.
        trace = Ipxe(script, lambda u, n, bad=url: u == bad and n <= 2).run()
        assert fetched(trace).count(url) == 3 and trace[-1] == ("boot", "")
        assert not [w for w, _ in trace if w == "report"]


def test_ipxe_a_kernel_that_will_not_start_is_reported() -> None:
    view = NodeView("n7", MAC, NodeState.INSTALLING, "rocky-9", "T0KEN", None)
    script = boot.script("ipxe", view, config())
    trace = Ipxe(script, lambda u, n: False, boot_fails=True).run()
    report = next(arg for what, arg in trace if what == "report")
    failure = parse_report(dict(parse_qsl(urlsplit(report).query)))
    assert failure.step is Step.BOOT and failure.url.endswith("/images/rocky-9/vmlinuz")
    assert failure.tries == 1
    assert trace[-1] == ("reboot", "")


def test_ipxe_without_inc_gives_up_instead_of_looping() -> None:
    view = NodeView("n7", MAC, NodeState.DISCOVERING, None, "", None)
    script = boot.script("ipxe", view, config())

    class NoInc(Ipxe):
        def execute(self, argv: list[str], labels: dict[str, int]) -> tuple[int, str | None]:
            return (0x3E0D6001, None) if argv[0] == "inc" else super().execute(argv, labels)

    trace = NoInc(script, lambda u, n: True).run()
    assert len(fetched(trace)) == 1 and trace[-1] == ("reboot", "")
    report = next(arg for what, arg in trace if what == "report")
    assert parse_report(dict(parse_qsl(urlsplit(report).query))).tries == 0


# -- GRUB and pxelinux: what they allow ---------------------------------------------------

def every_script(kind: str) -> list[tuple[str, NodeState]]:
    return [(boot.script(kind, NodeView("n7", MAC, state, profile, "T0KEN", None), config()), state)
            for profile in PROFILES for state in NodeState]


def test_grub_loads_are_retried_in_a_bounded_loop_then_reboot() -> None:
    for text, state in every_script("grub"):
        assert text.count("{") == text.count("}")
        assert "set fallback=1" in text and re.search(r"menuentry firmware \{\n  exit\n\}", text)
        if BOOT[state] is Boot.LOCAL:
            assert "chainloader" in text and "linux" not in text
            continue
        lines = [line.strip() for line in text.splitlines()]
        loads = [i for i, line in enumerate(lines) if re.match(r"(if )?(linux|initrd) ", line)]
        assert len(loads) == 2
        loop = lines.index("for wait in 2 4 end; do")
        done = lines.index("done")
        for i in loads:  # each load is a condition, inside the bounded loop
            assert loop < i < done and lines[i].startswith("if ") and lines[i].endswith("; then")
        tail = lines[loop:done]
        assert 'if [ "$wait" = end ]; then' in tail and "sleep 30" in tail and "reboot" in tail
        assert "sleep $wait" in tail


def test_grub_configs_pass_grubs_own_parser(tmp_path: Path) -> None:
    """grub-script-check (Debian's grub-common, downloaded into the test cache as the
    discovery image's packages are, never installed) parses each config as GRUB does."""
    check = fetch(["grub-common"], CACHE)["grub-common"] / "usr" / "bin" / "grub-script-check"
    broken = tmp_path / "broken.cfg"
    broken.write_text("menuentry x {\n  if linux /k; then\n    boot\n}\n")
    assert subprocess.run([str(check), str(broken)], capture_output=True).returncode != 0
    for i, (text, state) in enumerate(every_script("grub")):
        path = tmp_path / f"{i}.cfg"
        path.write_text(text)
        res = subprocess.run([str(check), str(path)], capture_output=True, text=True)
        assert res.returncode == 0, f"{state.value}: {res.stdout}{res.stderr}\n{text}"


def test_pxelinux_reboots_from_its_prompt_after_a_failure() -> None:
    for text, _ in every_script("pxelinux"):
        lines = [line.strip() for line in text.splitlines()]
        assert "PROMPT 0" in lines and "DEFAULT bootd" in lines  # a good boot starts at once
        timeout = next(int(line.split()[1]) for line in lines if line.startswith("TIMEOUT "))
        assert 0 < timeout <= 600  # tenths of a second at the boot: prompt after a failure
        assert "ONTIMEOUT reboot" in lines
        label = lines.index("LABEL reboot")
        assert lines[label + 1] == "COM32 reboot.c32"


# -- the report: parsing and limits --------------------------------------------------------

def test_reports_are_parsed_cleaned_and_bounded() -> None:
    query = {"mac": "52-54-00-00-00-07", "step": "initrd", "errno": "0x2d0c613c",
             "url": "http://x/a\nb\x1b[31m" + "y" * 1000}
    failure = parse_report(query)
    assert failure.mac == MAC and failure.step is Step.INITRD and failure.errno == ERRNO
    assert len(failure.url) == MAX_URL and "\n" not in failure.url and "\x1b" not in failure.url
    assert failure.url.startswith("http://x/a?b?[31m") and failure.url.endswith("...")
    assert "error 0x2d0c613c (https://ipxe.org/err/2d0c613c)" in failure.message
    assert parse_report({"mac": MAC, "step": "kernel", "errno": "42"}).errno == 42
    assert parse_report({"mac": MAC, "step": "kernel"}).message == "kernel failed"
    assert parse_report({"mac": MAC, "step": "boot", "tries": "1"}).message == "boot failed (1 try)"
    for bad, what in (({"step": "kernel"}, "MAC"), ({"mac": "nope", "step": "kernel"}, "MAC"),
                      ({"mac": MAC, "step": "rm -rf"}, "step"), ({"mac": MAC}, "step"),
                      ({"mac": MAC, "step": "boot", "errno": "0x123456789"}, "errno"),
                      ({"mac": MAC, "step": "boot", "errno": "9999999999"}, "errno"),
                      ({"mac": MAC, "step": "boot", "errno": "-1"}, "errno"),
                      ({"mac": MAC, "step": "boot", "tries": "1000"}, "tries"),
                      ({"mac": MAC, "step": "boot", "tries": "x"}, "tries")):
        with pytest.raises(InvalidInput, match=what):
            parse_report(bad)


def test_limiter_per_mac_overall_and_bounded() -> None:
    limit = ReportLimiter(burst=3, per_mac_seconds=60.0, total_rate=10.0, total_burst=5, keys=4)
    assert [limit.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("b", 0.0) and limit.allow("c", 0.0)
    assert not limit.allow("d", 0.0)  # the overall burst (5) is spent
    assert limit.allow("d", 0.2)  # 10 a second come back
    assert not limit.allow("a", 30.0) and limit.allow("a", 61.0)  # one back per minute
    for i in range(100):  # many MACs: the table stays bounded
        limit.allow(f"m{i}", 1000.0 + i)
    assert len(limit) <= 4


# -- the endpoint -----------------------------------------------------------------------------

@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


@pytest.fixture
async def lifecycle(repo: Repository, tmp_path: Path) -> Lifecycle:
    return Lifecycle(parse_config(loopback_config(tmp_path / "state", 8080)), repo)


@pytest.fixture
async def client(repo: Repository, lifecycle: Lifecycle, tmp_path: Path) -> AsyncIterator[TestClient]:
    cfg = parse_config(loopback_config(tmp_path / "state", 8080))
    async with TestClient(TestServer(http_app(repo, TOKEN, cfg, lifecycle=lifecycle))) as c:
        yield c


KERNEL_URL = "http://127.0.0.1:8080/images/discovery/vmlinuz"


def report_url(mac: str = MAC, step: str = "kernel", errno: str = "0x2d0c613c", url: str = KERNEL_URL) -> str:
    # As iPXE sends it: ':' escaped in the query (uri.c escapes "#:@" there).
    return (f"/boot/failed?mac={quote(mac)}&step={quote(step)}&tries=3&errno={quote(errno)}"
            f"&url={quote(url, safe='/')}")


async def test_report_is_an_event_of_the_node_with_that_mac(client: TestClient, repo: Repository) -> None:
    await repo.add_node(NewNode("n7", (MAC,)), actor="test")
    resp = await client.get(report_url())  # no operator token: booting machines have none
    assert resp.status == 202 and await resp.text() == "recorded\n"
    event = [e for e in await repo.events("n7") if e.kind == "boot-failed"]
    assert len(event) == 1 and event[0].actor == "boot-script"
    assert event[0].message == (f"kernel {KERNEL_URL} failed (3 tries): "
                                "error 0x2d0c613c (https://ipxe.org/err/2d0c613c)")
    assert (await repo.get_node("n7")).state is NodeState.DISCOVERING  # a note, not a move


async def test_report_never_creates_a_node_and_refuses_bad_input(client: TestClient,
                                                                 repo: Repository) -> None:
    resp = await client.get(report_url(mac="52:54:00:00:00:99"))
    assert resp.status == 404 and await repo.list_nodes() == []
    for url, what in ((report_url(mac="zz"), "invalid MAC"), (report_url(step="chainload"), "step"),
                      (report_url(errno="0x1g"), "errno"),
                      (report_url(mac="52:54:00:00:00:07 x"), "invalid MAC"), ("/boot/failed", "MAC")):
        resp = await client.get(url)
        assert resp.status == 400, url
        assert what in (await resp.json())["error"]
    assert await repo.list_nodes() == []


async def test_hostile_text_is_cleaned_and_reports_are_rate_limited(client: TestClient,
                                                                    repo: Repository) -> None:
    await repo.add_node(NewNode("n7", (MAC,)), actor="test")
    statuses = [(await client.get(report_url(url="http://x/\r\nFAKE LOG LINE" + "a" * 5000))).status
                for _ in range(5)]
    assert statuses == [202, 202, 202, 429, 429]  # the per-MAC burst is 3
    events = [e for e in await repo.events("n7") if e.kind == "boot-failed"]
    assert len(events) == 3
    for e in events:
        assert "\n" not in e.message and "\r" not in e.message and len(e.message) < MAX_URL + 120


async def test_lifecycle_counts_outcomes(lifecycle: Lifecycle, repo: Repository) -> None:
    await repo.add_node(NewNode("n7", (MAC,)), actor="test")
    report = BootFailure(MAC, Step.KERNEL, KERNEL_URL, 1)
    assert await lifecycle.boot_failed(report, now=0.0) is Outcome.RECORDED
    stranger = BootFailure("52:54:00:00:00:99", Step.BOOT)
    assert await lifecycle.boot_failed(stranger, now=0.0) is Outcome.UNKNOWN
    for _ in range(2):
        await lifecycle.boot_failed(report, now=1.0)
    assert await lifecycle.boot_failed(report, now=2.0) is Outcome.LIMITED
    assert lifecycle.boot_report_counts == {Outcome.RECORDED: 3, Outcome.UNKNOWN: 1, Outcome.LIMITED: 1}


# -- real iPXE: a VM whose discovery kernel is missing ---------------------------------------

SERVER = "198.18.0.1"
PXELINUX = ("/usr/lib/PXELINUX/pxelinux.0", "/usr/lib/syslinux/modules/bios/ldlinux.c32",
            "/usr/lib/syslinux/modules/bios/reboot.c32", "/usr/lib/syslinux/modules/bios/libcom32.c32")


def start_lab_bootd(lab: Lab, tmp_path: Path, extra: str = "", log: Path | None = None) -> Bootd:
    """bootd in the lab with an empty TFTP root: no discovery image, so every kernel 404s.
    With `log`, at debug level into that file, which a test can read while it runs."""
    srv = lab.add_host("srv", f"{SERVER}/24")
    ipv6_on(srv)  # bootd's router advertisements: iPXE stops waiting for IPv6 (~13 s a boot)
    state = tmp_path / "state"
    (state / "tftp").mkdir(parents=True)
    conf = tmp_path / "bootd.toml"
    conf.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{SERVER}"
        interfaces = ["eth0"]
        state_dir = "{state}"
        log_level = "{'info' if log is None else 'debug'}"
        [services]
        dns = false
        [http]
        listen = "{SERVER}:8080"
        [dhcp]
        conflict_check = false
        [[subnets]]
        cidr = "198.18.0.0/24"
        dynamic_pool = "198.18.0.100-198.18.0.199"
        """) + textwrap.dedent(extra))
    if log is None:
        return Bootd(conf, srv.cmd()).start()
    return Bootd(conf, srv.cmd("sh", "-c", 'exec "$@" 2>>"$0"', str(log))).start()


def start_vm(lab: Lab, tmp_path: Path, mac: str) -> subprocess.Popen[bytes]:
    """A BIOS VM with the iPXE ROM of Debian's ipxe-qemu on its virtio NIC."""
    disk, tap = tmp_path / "disk.img", "tap1"
    disk.write_bytes(bytes(1 << 20))
    add_tap(lab.switch, tap)
    with (tmp_path / "qemu.log").open("wb") as log:  # QEMU keeps its own copy
        vm = subprocess.Popen(qemu_argv(lab.switch, mac=mac, tap=tap, disk=str(disk),
                                        serial=str(tmp_path / "vm.serial"), memory_mb=256),
                              stdout=subprocess.DEVNULL, stderr=log)
    lab.processes.append(vm)
    return vm


@pytest.mark.lab
def test_real_ipxe_retries_reports_and_reboots(lab: Lab, tmp_path: Path) -> None:
    """A VM with Debian's iPXE ROM boots from bootd whose TFTP root has no discovery
    image: iPXE tries the kernel three times, reports it, reboots, and does it again."""
    bootd = start_lab_bootd(lab, tmp_path)
    mac = "52:54:00:be:e1:01"
    started = time.monotonic()
    vm = start_vm(lab, tmp_path, mac)
    try:
        seen: list[float] = []

        def failures() -> list[dict[str, Any]]:
            listed = json.loads(bootd.cli("nodes", "list", "--json"))["nodes"]
            names = [n["name"] for n in listed if mac in [i["mac"] for i in n["interfaces"]]]
            if not names:
                return []
            events = json.loads(bootd.cli("nodes", "events", names[0], "--json"))["events"]
            return [e for e in events if e["kind"] == "boot-failed"]

        deadline = time.monotonic() + VM_WAIT
        found: list[dict[str, Any]] = []
        while len(found) < 2:  # the second report comes after the reboot
            assert vm.poll() is None, "QEMU exited"
            assert time.monotonic() < deadline, f"reports seen: {found}"
            time.sleep(2)
            found = failures()
            if len(found) > len(seen):
                seen.append(time.monotonic() - started)
        kernel = f"http://{SERVER}:8080/images/discovery/vmlinuz"
        for event in found:
            # 0x2d0c613b is iPXE's "not found" (HTTP 404)
            assert event["message"].startswith(f"kernel {kernel} failed (3 tries): error 0x2d0c613b")
            assert event["actor"] == "boot-script"
        print(f"\n{found[0]['message']}")
        print(f"real iPXE: first report {seen[0]:.0f} s after power-on, second (after the reboot) "
              f"{seen[1]:.0f} s")
    finally:
        vm.terminate()
        vm.wait(timeout=30)
        bootd.close()
    assert "Traceback" not in bootd.stderr, bootd.stderr


@pytest.mark.lab
def test_real_pxelinux_reboots_when_the_kernel_is_missing(lab: Lab, tmp_path: Path) -> None:
    """pxelinux (loaded by the iPXE ROM with ipxe_script = false, as a PXE ROM would)
    cannot load the discovery kernel, waits at its boot: prompt for TIMEOUT, loads
    reboot.c32, and the firmware starts over: pxelinux.0 is fetched again."""
    bootd = start_lab_bootd(lab, tmp_path, """\
        [boot]
        bios = "pxelinux.0"
        ipxe_script = false
        """, log=tmp_path / "bootd.log")
    for src in PXELINUX:
        (tmp_path / "state" / "tftp" / Path(src).name).write_bytes(Path(src).read_bytes())
    started = time.monotonic()
    vm = start_vm(lab, tmp_path, "52:54:00:be:e1:02")
    marks: dict[str, float] = {}

    def served(name: str) -> int:
        lines = (tmp_path / "bootd.log").read_text().splitlines()  # TFTP transfers are debug lines
        return sum(1 for line in lines if "transfer complete" in line and f"file={name} " in line)
    try:
        deadline = time.monotonic() + VM_WAIT
        while served("pxelinux.0") < 2:  # the second comes after the reboot
            assert vm.poll() is None, "QEMU exited"
            assert time.monotonic() < deadline, "pxelinux.0 was not fetched twice"
            time.sleep(1)
            for name in ("pxelinux.0", "reboot.c32"):
                if served(name) and name not in marks:
                    marks[name] = time.monotonic() - started
        marks["again"] = time.monotonic() - started
    finally:
        vm.terminate()
        vm.wait(timeout=30)
        bootd.close()
    log = (tmp_path / "bootd.log").read_text()
    assert "Traceback" not in log, log
    assert re.search(r"request refused .* file=/images/discovery/vmlinuz code=file_not_found", log)
    assert served("reboot.c32") >= 1 and served("libcom32.c32") >= 1
    print(f"\nreal pxelinux: pxelinux.0 at {marks['pxelinux.0']:.0f} s, reboot.c32 at "
          f"{marks.get('reboot.c32', 0):.0f} s, pxelinux.0 again at {marks['again']:.0f} s after power-on")
