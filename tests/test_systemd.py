"""bootd as a system service: the unit, the install path, the capabilities, file ownership.

What is checked, and how honestly:
- scripts/install puts a wheel-built bootd into a virtual environment at a
  temporary prefix (not /opt) and the system files under a temporary root (not /):
  the unit with ExecStart rewritten to the prefix, sysusers.d and tmpfiles.d
  files, the `bootd` user in that root's /etc/passwd (systemd-sysusers --root)
  and /etc/bootd (systemd-tmpfiles --root). `bootd --version` runs from outside
  the checkout and imports bootd from the prefix.
- `systemd-analyze verify` on that installed unit (its ExecStart exists) is
  silent, and `systemd-analyze security --offline=true` scores the shipped unit
  <= 3.0. Neither starts the unit: this machine has no systemd as PID 1, so the
  sandboxing directives themselves are not exercised here.
- The capabilities the unit grants are measured in the lab: the installed
  bootd serves DHCP and TFTP as `nobody` with exactly the unit's
  AmbientCapabilities= (and no new privileges), and with either one removed
  it fails in the way that capability explains.
- Root running the CLI or the daemon on a state directory owned by another user
  (`nobody` here, `bootd` in production) leaves every file it creates owned by
  that user, secrets 0600 (bootd/privileges.py).
Everything runs as root (users, namespaces); the installed environment sits in a
world-readable temporary directory because `nobody` must run it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bootd_proc import WAIT, Notifications, env_for
from conftest import REPO
from netlab import Lab

from bootd.privileges import SERVE_CAPABILITIES, Capability, state_owner

UNIT = REPO / "systemd" / "bootd.service"
MAX_EXPOSURE = 3.0
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="installs users and switches users: needs root")


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of `key=` in a unit file (space-separated lists split)."""
    out: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}="):
            out += line.split("=", 1)[1].split()
    return out


@dataclass(frozen=True)
class Installed:
    base: Path    # world-readable scratch directory
    prefix: Path  # the virtual environment
    root: Path    # where the system files went


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    base = Path(tempfile.mkdtemp(prefix="bootd-install-"))
    base.chmod(0o755)
    prefix, root = base / "opt-bootd", base / "root"
    try:
        res = subprocess.run([str(REPO / "scripts" / "install"), "--prefix", str(prefix),
                              "--root", str(root)], capture_output=True, text=True, timeout=600, cwd="/")
        assert res.returncode == 0, res.stderr
        yield Installed(base, prefix, root)
    finally:
        shutil.rmtree(base)


# -- the unit -----------------------------------------------------------------


def test_unit_scores_at_most_3_offline() -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for bootd\.service: (\d+\.\d)", res.stdout)
    assert found, res.stdout + res.stderr
    score = float(found.group(1))
    print(f"systemd-analyze security: {score}")
    assert score <= MAX_EXPOSURE, res.stdout
    # The same bound as systemd's own gate (the threshold is the score times ten).
    gate = subprocess.run(["systemd-analyze", "security", "--offline=true",
                           f"--threshold={int(MAX_EXPOSURE * 10)}", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    assert gate.returncode == 0


def test_unit_grants_exactly_the_measured_capabilities() -> None:
    want = {f"CAP_{cap.name}" for cap in SERVE_CAPABILITIES}
    assert set(unit_values(UNIT, "AmbientCapabilities")) == want
    assert set(unit_values(UNIT, "CapabilityBoundingSet")) == want
    assert unit_values(UNIT, "User") == ["bootd"]
    assert unit_values(UNIT, "StateDirectory") == ["bootd"]
    assert unit_values(UNIT, "ExecStart")[0] == "/opt/bootd/bin/bootd"
    sysusers = (REPO / "systemd" / "bootd.sysusers").read_text()
    assert re.search(r"^u bootd - .* /var/lib/bootd", sysusers, re.M)


@needs_root
def test_installed_unit_verifies_clean(installed: Installed) -> None:
    unit = installed.root / "etc/systemd/system/bootd.service"
    assert unit_values(unit, "ExecStart")[0] == f"{installed.prefix}/bin/bootd"
    # verify loads the unit as systemd would (syntax, directives, executables present).
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                         timeout=120, cwd=installed.base)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    # The copy differs from the shipped unit only in the bootd path.
    assert unit.read_text() == UNIT.read_text().replace("/opt/bootd/bin/bootd",
                                                        f"{installed.prefix}/bin/bootd")


# -- the install path ---------------------------------------------------------


@needs_root
def test_install_puts_a_working_bootd_at_the_prefix(installed: Installed) -> None:
    bootd = installed.prefix / "bin" / "bootd"
    version = subprocess.run([str(bootd), "--version"], capture_output=True, text=True, cwd="/",
                             timeout=60, check=True)
    assert version.stdout.startswith("bootd ")
    where = subprocess.run([str(installed.prefix / "bin" / "python"), "-c",
                            "import bootd; print(bootd.__file__)"], capture_output=True, text=True, cwd="/",
                           timeout=60, check=True)
    assert where.stdout.startswith(str(installed.prefix)), where.stdout  # the wheel, not the checkout
    # The service user is unprivileged: nobody can run it as well.
    as_nobody = subprocess.run(["setpriv", "--reuid=nobody", f"--regid={NOGROUP}", "--clear-groups",
                                str(bootd), "--version"], capture_output=True, text=True, cwd="/", timeout=60)
    assert as_nobody.returncode == 0, as_nobody.stderr


@needs_root
def test_install_creates_the_user_and_the_config_directory(installed: Installed) -> None:
    root = installed.root
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    user = users["bootd"]
    assert int(user[2]) < 1000  # a system user
    assert (user[5], user[6]) == ("/var/lib/bootd", "/usr/sbin/nologin")
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    st = (root / "etc/bootd").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, int(groups["bootd"][2]), 0o2750)
    for kind in ("sysusers", "tmpfiles"):
        shipped = (REPO / "systemd" / f"bootd.{kind}").read_text()
        assert (root / f"usr/lib/{kind}.d/bootd.conf").read_text() == shipped


# -- root leaves the state directory to its owner -----------------------------


def state_dir_of(base: Path, name: str) -> tuple[Path, Path]:
    """A state directory owned by nobody and a config for it that nobody can read."""
    work = base / name
    state = work / "state"
    state.mkdir(parents=True)
    work.chmod(0o755)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    config = work / "bootd.toml"
    config.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "198.18.0.1"
        interfaces = ["eth0"]
        state_dir = "{state}"
        [services]
        dns = false
        [http]
        listen = "198.18.0.1:8080"
        [[subnets]]
        cidr = "198.18.0.0/24"
        lease_time = 600
        static_range = "198.18.0.10-198.18.0.49"
        dynamic_pool = "198.18.0.100-198.18.0.199"
        """))
    config.chmod(0o644)
    return state, config


def owners(state: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for path in [state, *state.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(state))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return out


def test_state_owner_is_found_only_for_root_and_another_user(tmp_path: Path) -> None:
    assert state_owner(tmp_path / "missing") is None  # nothing there yet: systemd will hand it over
    if os.geteuid() != 0:
        assert state_owner(tmp_path) is None
        return
    assert state_owner(tmp_path) is None  # root's own directory
    os.chown(tmp_path, NOBODY.pw_uid, NOBODY.pw_gid)
    owner = state_owner(tmp_path)
    assert owner is not None
    assert (owner.uid, owner.gid, owner.name) == (NOBODY.pw_uid, NOBODY.pw_gid, "nobody")


@needs_root
def test_root_cli_leaves_files_to_the_state_owner(installed: Installed) -> None:
    """Fails on a bootd without privileges.py: secret.key and bootd.db come out root-owned."""
    state, config = state_dir_of(installed.base, "cli")
    bootd = str(installed.prefix / "bin" / "bootd")
    run = subprocess.run([bootd, "nodes", "add", "n1", "--mac", "52:54:00:00:00:01", "--config", str(config)],
                         capture_output=True, text=True, cwd="/", timeout=120)
    assert run.returncode == 0, run.stderr
    listed = subprocess.run([bootd, "nodes", "list", "--json", "--config", str(config)],
                            capture_output=True, text=True, cwd="/", timeout=120, check=True)
    assert [n["name"] for n in json.loads(listed.stdout)["nodes"]] == ["n1"]
    found = owners(state)
    assert {"secret.key", "bootd.db"} <= found.keys(), found
    for name, (uid, gid, _mode) in found.items():
        assert (uid, gid) == (NOBODY.pw_uid, NOBODY.pw_gid), (name, found)
    assert found["secret.key"][2] == 0o600
    assert found["bootd.db"][2] == 0o600


@needs_root
def test_root_cli_says_when_the_owner_cannot_read_the_config(installed: Installed) -> None:
    state, config = state_dir_of(installed.base, "unreadable")
    config.chmod(0o600)  # root's only: the service user could not read it either
    res = subprocess.run([str(installed.prefix / "bin" / "bootd"), "nodes", "list", "--config", str(config)],
                         capture_output=True, text=True, cwd="/", timeout=120)
    assert res.returncode == 1
    assert res.stderr == (f"bootd: error: nobody (the owner of {state}, as whom bootd runs) cannot read "
                          f"{config}; give it to the group: chgrp {NOGROUP} {config} && "
                          f"chmod 0640 {config}\n")
    assert owners(state) == {".": (NOBODY.pw_uid, NOBODY.pw_gid, 0o755)}  # nothing was created


# -- the capabilities, measured in the lab ------------------------------------

UDHCPC_SCRIPT = """#!/bin/sh
env | sort > "{dir}/$1.env"
case "$1" in bound) ip addr flush dev "$interface"; ip addr add "$ip/${{mask:-24}}" dev "$interface";; esac
"""


class Serving:
    """The installed `bootd serve` in the server namespace, under a given identity."""

    def __init__(self, lab: Lab, installed: Installed, config: Path, wrapper: list[str]) -> None:
        self.notify = Notifications(config.with_name("notify.sock"))
        self.notify.path.chmod(0o666)  # a datagram socket is written to: nobody must be allowed
        self.proc = subprocess.Popen(
            [*lab.hosts["srv"].cmd(), *wrapper, str(installed.prefix / "bin" / "bootd"), "serve",
             "--config", str(config)], cwd="/", env=env_for(self.notify),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stderr = ""

    def ready(self) -> bool:
        try:
            self.notify.wait_for("READY", "1")
        except (AssertionError, TimeoutError):
            return False
        return True

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=WAIT)
        self.notify.close()
        self.stderr += err
        return self.stderr


def setpriv_as_nobody(caps: frozenset[Capability]) -> list[str]:
    names = ",".join(f"+{c.name.lower()}" for c in sorted(caps))
    argv = ["setpriv", "--reuid=nobody", f"--regid={NOGROUP}", "--clear-groups", "--no-new-privs"]
    if caps:
        return [*argv, f"--inh-caps=-all,{names}", f"--ambient-caps={names}", f"--bounding-set=-all,{names}"]
    return [*argv, "--inh-caps=-all", "--bounding-set=-all"]


def lease_and_fetch(lab: Lab, state: Path, work: Path) -> tuple[str, bytes]:
    """udhcpc's address and a TFTP download, from a client while 198.18.0.100 is taken by another host."""
    (state / "tftp").mkdir(exist_ok=True)
    (state / "tftp" / "hello.txt").write_bytes(b"served\n")
    os.chown(state / "tftp", NOBODY.pw_uid, NOBODY.pw_gid)
    client = lab.hosts["c1"]
    script = work / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT.format(dir=work))
    script.chmod(0o755)
    client.run("busybox", "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", str(script), "-t", "20", "-T", "1",
               "-A", "1", timeout=WAIT * 2)
    env = dict(line.split("=", 1) for line in (work / "bound.env").read_text().splitlines() if "=" in line)
    client.run("busybox", "tftp", "-g", "-r", "hello.txt", "-l", str(work / "got"), "198.18.0.1",
               timeout=WAIT)
    return env["ip"], (work / "got").read_bytes()


@pytest.fixture
def capability_lab(lab: Lab) -> Lab:
    lab.add_host("srv", "198.18.0.1/24")
    lab.add_host("c1")
    lab.add_host("taken", "198.18.0.100/24")  # the pool's first address, in use: only an ARP probe sees it
    return lab


@pytest.mark.lab
@needs_root
def test_nobody_with_the_units_capabilities_serves_dhcp_and_tftp(capability_lab: Lab,
                                                                  installed: Installed) -> None:
    state, config = state_dir_of(installed.base, "caps")
    serving = Serving(capability_lab, installed, config, setpriv_as_nobody(SERVE_CAPABILITIES))
    try:
        assert serving.ready(), serving.stop()
        ip, got = lease_and_fetch(capability_lab, state, config.parent)
    finally:
        log = serving.stop()
    assert got == b"served\n"
    assert ip != "198.18.0.100", log  # CAP_NET_RAW: the ARP conflict check saw the taken address
    assert "address in use by a host we did not give it to; skipped ip=198.18.0.100" in log
    assert "conflict check failed" not in log
    assert "Traceback" not in log


@pytest.mark.lab
@needs_root
def test_without_net_raw_the_conflict_check_fails(capability_lab: Lab, installed: Installed) -> None:
    # SO_BINDTODEVICE needs no capability (Linux >= 5.7): DHCP still binds and serves;
    # only the ARP probe is refused, and the taken address is handed out.
    state, config = state_dir_of(installed.base, "noraw")
    serving = Serving(capability_lab, installed, config,
                      setpriv_as_nobody(SERVE_CAPABILITIES - {Capability.NET_RAW}))
    try:
        assert serving.ready(), serving.stop()
        ip, _ = lease_and_fetch(capability_lab, state, config.parent)
    finally:
        log = serving.stop()
    assert ("conflict check failed; offering without it subnet=198.18.0.0/24 "
            'reason="Operation not permitted"') in log
    assert ip == "198.18.0.100"  # a duplicate address: why the unit grants CAP_NET_RAW


@pytest.mark.lab
@needs_root
def test_without_net_bind_service_dhcp_cannot_listen(capability_lab: Lab, installed: Installed) -> None:
    _, config = state_dir_of(installed.base, "nobind")
    serving = Serving(capability_lab, installed, config,
                      setpriv_as_nobody(SERVE_CAPABILITIES - {Capability.NET_BIND_SERVICE}))
    assert serving.proc.wait(timeout=WAIT) == 1
    assert "cannot start: DHCP cannot listen on eth0 port 67: Permission denied" in serving.stop()


@pytest.mark.lab
@needs_root
def test_root_serve_runs_as_the_state_owner_with_the_units_capabilities(capability_lab: Lab,
                                                                        installed: Installed) -> None:
    """`bootd serve` started by root on nobody's state directory: becomes nobody, keeps only
    CAP_NET_BIND_SERVICE and CAP_NET_RAW, serves, and every file it creates is nobody's."""
    state, config = state_dir_of(installed.base, "rootserve")
    serving = Serving(capability_lab, installed, config, [])
    try:
        assert serving.ready(), serving.stop()
        status = dict(line.split(":\t", 1) for line in
                      Path(f"/proc/{serving.proc.pid}/status").read_text().splitlines() if ":\t" in line)
        ip, got = lease_and_fetch(capability_lab, state, config.parent)
        found = owners(state)
    finally:
        log = serving.stop()
    assert status["Uid"].split() == [str(NOBODY.pw_uid)] * 4
    assert status["Gid"].split() == [str(NOBODY.pw_gid)] * 4
    want = sum(1 << int(c) for c in SERVE_CAPABILITIES)
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == want
    assert (ip != "198.18.0.100", got) == (True, b"served\n")  # CAP_NET_RAW kept: the probe saw it
    assert {"secret.key", "bootd.db", "api-token"} <= found.keys(), found
    for name, (uid, _gid, _mode) in found.items():
        if name != "tftp/hello.txt":  # written by this test
            assert uid == NOBODY.pw_uid, (name, found)
    assert found["secret.key"][2] == 0o600
    assert "Traceback" not in log
