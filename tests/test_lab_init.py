"""`bootd init` on an interface in a lab namespace, and the lab itself.

Runs as root with network namespaces; everything is created by the test and
removed afterwards (see netlab.py).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from conftest import REPO
from netlab import PREFIX, Lab, namespaces

from bootd.config import load_config
from bootd.images.bootloaders import BY_NAME, LOADERS, MANIFEST, read_manifest
from bootd.images.packages import DebianPackages, Origin

pytestmark = pytest.mark.lab
BOOTD = [sys.executable, "-m", "bootd"]
CACHE = REPO / ".cache" / "images"
FETCH = ("import json,sys,urllib.request;"
         "r=urllib.request.urlopen(sys.argv[1],timeout=5);print(r.status,r.read().decode())")


@pytest.fixture(scope="module")
def loader_cache() -> Path:
    """The packages `init` downloads when they are not installed, fetched here, outside the
    lab: its namespaces have no route to Debian's archive."""
    for pkg in dict.fromkeys(x.package for x in LOADERS):
        DebianPackages(CACHE).get(pkg)
    return CACHE


def test_init_on_a_namespaced_interface(lab: Lab, tmp_path: Path, loader_cache: Path) -> None:
    srv = lab.add_host("srv", "198.18.0.1/24")
    out = tmp_path / "bootd.toml"
    res = srv.run(*BOOTD, "init", "--interface", "eth0", "--output", str(out), "--state-dir",
                  str(tmp_path / "state"), "--cache", str(loader_cache), cwd=REPO)
    assert res.stdout.startswith(f"wrote {out}: admin address 198.18.0.1, subnet 198.18.0.0/24\n")
    assert res.stderr == ""
    # The loaders the config hands out, and the others bootd knows, from Debian's packages.
    tftp = tmp_path / "state" / "tftp"
    recorded = read_manifest(tftp)
    assert set(recorded) == {x.name for x in LOADERS}
    for name, entry in recorded.items():
        loader = BY_NAME[name]
        assert f"{name}: installed ({loader.package} {entry.version}, {entry.origin}; " in res.stdout
        assert hashlib.sha256((tftp / name).read_bytes()).hexdigest() == entry.sha256
        if entry.origin == Origin.INSTALLED.value:
            assert (tftp / name).read_bytes() == (Path("/") / loader.path).read_bytes()
    assert res.stdout.endswith(f"recorded in {tftp / MANIFEST}\n")
    config = load_config(out)
    assert config.admin_address == IPv4Address("198.18.0.1")
    assert config.interfaces == ("eth0",)
    assert (config.http.host, config.http.port) == ("198.18.0.1", 8080)
    (subnet,) = config.subnets
    assert subnet.cidr == IPv4Network("198.18.0.0/24")
    assert subnet.router is None
    assert subnet.dns_servers == (IPv4Address("198.18.0.1"),)
    assert subnet.static_range is not None
    assert subnet.dynamic_pool is not None
    assert str(subnet.static_range) == "198.18.0.2-198.18.0.127"
    assert str(subnet.dynamic_pool) == "198.18.0.128-198.18.0.254"
    assert config.admin_address not in subnet.static_range
    assert config.admin_address not in subnet.dynamic_pool

    # Never overwritten without --force.
    again = srv.run(*BOOTD, "init", "--interface", "eth0", "--output", str(out), cwd=REPO, check=False)
    assert again.returncode == 1
    assert again.stderr == f"bootd: error: {out} exists; use --force to overwrite it\n"
    forced = srv.run(*BOOTD, "init", "--interface", "eth0", "--output", str(out), "--force",
                     "--state-dir", str(tmp_path / "state"), "--cache", str(loader_cache), cwd=REPO,
                     check=False)
    assert forced.returncode == 0
    assert forced.stdout.count(": unchanged (") == len(LOADERS)


def test_init_without_the_archive_still_writes_the_config(lab: Lab, tmp_path: Path) -> None:
    """No route to Debian's archive and an empty cache: the installed packages' loaders go
    in, the others are warned about with the command that retries."""
    srv = lab.add_host("srv", "198.18.0.1/24")
    out = tmp_path / "bootd.toml"
    res = srv.run(*BOOTD, "init", "--interface", "eth0", "--output", str(out), "--state-dir",
                  str(tmp_path / "state"), "--cache", str(tmp_path / "empty-cache"), cwd=REPO, timeout=300)
    load_config(out)
    installed = {x.name for x in LOADERS if DebianPackages(CACHE).get(x.package).origin is Origin.INSTALLED}
    assert {"undionly.kpxe", "snponly.efi", "ipxe.efi"} <= installed  # scripts/setup installs ipxe
    assert set(read_manifest(tmp_path / "state" / "tftp")) == installed
    for name in {x.name for x in LOADERS} - installed:
        assert f"bootd: warning: {name} not installed: " in res.stderr
    if installed != {x.name for x in LOADERS}:
        assert res.stderr.endswith("bootd: warning: run `bootd images bootloaders` once the packages "
                                   "can be had\n")


def test_init_takes_the_gateway_as_router_and_keeps_it_out_of_pools(lab: Lab, tmp_path: Path,
                                                                   loader_cache: Path) -> None:
    srv = lab.add_host("srv", "198.18.4.200/22")
    # A default route inside the isolated namespace: it leads nowhere outside the lab.
    srv.run("ip", "route", "add", "default", "via", "198.18.4.1")
    out = tmp_path / "bootd.toml"
    srv.run(*BOOTD, "init", "--interface", "eth0", "--output", str(out), "--state-dir", str(tmp_path / "s"),
            "--cache", str(loader_cache), cwd=REPO)
    (subnet,) = load_config(out).subnets
    assert subnet.router == IPv4Address("198.18.4.1")
    assert subnet.static_range is not None
    assert subnet.dynamic_pool is not None
    for rng in (subnet.static_range, subnet.dynamic_pool):
        assert IPv4Address("198.18.4.1") not in rng
        assert IPv4Address("198.18.4.200") not in rng
    # The longer free run, after the admin address here, is split in two.
    assert str(subnet.static_range) == "198.18.4.201-198.18.6.99"
    assert str(subnet.dynamic_pool) == "198.18.6.100-198.18.7.254"


def test_init_errors(lab: Lab, tmp_path: Path) -> None:
    bare = lab.add_host("bare")
    none_fit = "(no interface on this host has a usable IPv4 address)"
    res = bare.run(*BOOTD, "init", "--interface", "eth0", "--output", str(tmp_path / "x.toml"),
                   cwd=REPO, check=False)
    assert (res.returncode, res.stderr) == (
        1, f"bootd: error: interface eth0 has no IPv4 address; give it one first {none_fit}\n")
    res = bare.run(*BOOTD, "init", "--interface", "eth9", "--output", str(tmp_path / "x.toml"),
                   cwd=REPO, check=False)
    assert (res.returncode, res.stderr) == (
        1, f"bootd: error: no interface named 'eth9' on this host {none_fit}\n")
    # Loopback (up, with 127.0.0.1/8 in every lab namespace) is never a boot network.
    res = bare.run(*BOOTD, "init", "--interface", "lo", "--output", str(tmp_path / "x.toml"),
                   cwd=REPO, check=False)
    assert (res.returncode, res.stderr) == (
        1, f"bootd: error: interface lo is a loopback interface: no machine can boot from it {none_fit}\n")
    tiny = lab.add_host("tiny", "198.18.9.1/30")
    res = tiny.run(*BOOTD, "init", "--interface", "eth0", "--output", str(tmp_path / "x.toml"),
                   cwd=REPO, check=False)
    assert (res.returncode, res.stderr) == (
        1, "bootd: error: subnet 198.18.9.0/30 is too small (at most /29)\n")
    assert not (tmp_path / "x.toml").exists()


def test_init_refusals_name_the_interfaces_that_fit(lab: Lab, tmp_path: Path) -> None:
    srv = lab.add_host("srv", "198.18.0.1/24")
    lab.link(srv, "br0", None)  # eth1: no address
    lab.link(srv, "br0", None)  # eth2: link-local only
    srv.run("ip", "addr", "add", "169.254.7.7/16", "dev", "eth2")
    fits = "(interfaces that fit: eth0 (198.18.0.1/24))"
    for interface, why in (("lo", "is a loopback interface: no machine can boot from it"),
                           ("eth1", "has no IPv4 address; give it one first"),
                           ("eth2", "has only a loopback or link-local IPv4 address; give it one first")):
        res = srv.run(*BOOTD, "init", "--interface", interface, "--output", str(tmp_path / "x.toml"),
                      cwd=REPO, check=False)
        assert (res.returncode, res.stderr) == (1, f"bootd: error: interface {interface} {why} {fits}\n")
    res = srv.run(*BOOTD, "init", "--interface", "eth3", "--output", str(tmp_path / "x.toml"),
                  cwd=REPO, check=False)
    assert res.stderr == f"bootd: error: no interface named 'eth3' on this host {fits}\n"
    assert not (tmp_path / "x.toml").exists()


def test_served_in_the_lab_reachable_from_a_client_not_from_the_host(lab: Lab, tmp_path: Path,
                                                                    loader_cache: Path) -> None:
    srv = lab.add_host("srv", "198.18.0.1/24")
    client = lab.add_host("c1", "198.18.0.50/24")
    cfg = tmp_path / "bootd.toml"
    srv.run(*BOOTD, "init", "--interface", "eth0", "--output", str(cfg), "--state-dir",
            str(tmp_path / "state"), "--cache", str(loader_cache), cwd=REPO)
    proc = srv.popen(*BOOTD, "serve", "--config", str(cfg), cwd=REPO, stderr=subprocess.PIPE,
                     text=True)
    url = "http://198.18.0.1:8080/healthz"
    for _ in range(300):
        res = client.run(sys.executable, "-c", FETCH, url, check=False)
        if res.returncode == 0 or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert res.returncode == 0, res.stderr
    status, body = res.stdout.split(" ", 1)
    assert status == "200"
    assert json.loads(body)["status"] == "ok"
    # HTTP serves the TFTP root's copy of each loader.
    res = client.run("sh", "-c", "curl -fsS http://198.18.0.1:8080/tftp/ipxe.efi | sha256sum")
    assert res.stdout.split()[0] == read_manifest(tmp_path / "state" / "tftp")["ipxe.efi"].sha256
    # DNS (on in the config init writes) answers the admin node's name in init's domain.
    res = client.run("dig", "+short", "+time=2", "+tries=3", "@198.18.0.1", "bootd.bootd.internal")
    assert res.stdout.split() == ["198.18.0.1"], res
    # The host's own namespace has no route into the lab.
    host = subprocess.run([sys.executable, "-c", FETCH, url], capture_output=True, timeout=30)
    assert host.returncode != 0
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "not part of this version yet" not in stderr
    assert "Traceback" not in stderr
    # init installed everything the config hands out (BIOS and x64 UEFI; Debian 12 has
    # no ia32/arm64 iPXE, and the default config hands none out): no warning at start.
    missing = [x for x in stderr.splitlines() if "boot loader missing" in x]
    assert missing == []


def test_lab_teardown_removes_every_namespace(tmp_path: Path) -> None:
    with Lab() as lab:
        lab.add_host("a", "198.18.0.1/24")
        lab.add_host("b")
        mine = [ns for ns in namespaces() if ns.startswith(f"{PREFIX}{lab.tag}-")]
        assert len(mine) == 3
    assert not [ns for ns in namespaces() if ns.startswith(f"{PREFIX}{lab.tag}-")]


def test_lab_script_for_humans() -> None:
    script = [sys.executable, str(REPO / "tests" / "netlab.py")]
    tag = f"t{abs(hash(str(time.time()))) % 10**6}"
    up = subprocess.run([*script, "up", "--tag", tag, "--clients", "1"], capture_output=True,
                        text=True, check=True, timeout=60)
    try:
        assert f"server {PREFIX}{tag}-srv eth0 198.18.0.1/24" in up.stdout
        assert {f"{PREFIX}{tag}-{r}" for r in ("sw", "srv", "c1")} <= set(namespaces())
    finally:
        down = subprocess.run([*script, "down", "--tag", tag], capture_output=True, text=True,
                              check=True, timeout=60)
    assert "removed" in down.stdout
    assert not [ns for ns in namespaces() if ns.startswith(f"{PREFIX}{tag}-")]
