"""Boot loaders from Debian packages: install, refresh, manifest, the serve warning, and
HTTP serving the TFTP root's copy.

Most tests use a fake package source (bootd.images.packages.PackageSource) over
files the test writes; two use the real one: the installed ipxe package, and
shim-signed / grub-efi-amd64-signed downloaded into the repository's cache (as
the VM tests' discovery image is).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from bootd_proc import Bootd
from conftest import REPO, free_port, loopback_config

from bootd.app import http_app
from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.images.bootloaders import (
    BY_NAME,
    LOADERS,
    MANIFEST,
    Action,
    LoaderError,
    install,
    missing_loaders,
    read_manifest,
)
from bootd.images.packages import DebianPackages, Origin, PackageError, Unpacked, parse_md5sums
from bootd.keys import SecretBox
from bootd.model.clients import Arch, BootClient, Firmware
from bootd.policy import Policy

CACHE = REPO / ".cache" / "images"


class FakePackages:
    """Packages as directories the test writes: version and bytes per package."""

    def __init__(self, root: Path, version: str = "1.0", broken: frozenset[str] = frozenset()) -> None:
        self.root, self.version, self.broken = root, version, broken
        self.asked: list[str] = []
        for loader in LOADERS:
            path = root / loader.package / loader.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{loader.name} {version}\n".encode() * 100)

    def get(self, package: str) -> Unpacked:
        self.asked.append(package)
        if package in self.broken:
            raise PackageError(f"{package} is not installed and cannot be downloaded (test)")
        return Unpacked(package, self.version, self.root / package, Origin.DOWNLOADED)


def config_for(state: Path, extra: str = "") -> Config:
    return parse_config(loopback_config(state, 8080, extra))


def test_install_puts_every_loader_under_the_tftp_root_with_a_manifest(tmp_path: Path) -> None:
    root = tmp_path / "state" / "tftp"
    source = FakePackages(tmp_path / "pkgs")
    report = install(root, source)
    assert report.failed == ()
    assert [(e.name, a) for e, a in report.done] == [(x.name, Action.INSTALLED) for x in LOADERS]
    # Each package is asked for once, though ipxe ships three loaders.
    assert sorted(source.asked) == sorted({x.package for x in LOADERS})
    doc = json.loads((root / MANIFEST).read_text())
    assert doc["format"] == 1
    by_name = {e["name"]: e for e in doc["loaders"]}
    assert set(by_name) == {x.name for x in LOADERS}
    for loader in LOADERS:
        data = (root / loader.name).read_bytes()
        assert data == (tmp_path / "pkgs" / loader.package / loader.path).read_bytes()
        assert by_name[loader.name] == {"name": loader.name, "package": loader.package, "version": "1.0",
                                        "origin": "downloaded", "sha256": hashlib.sha256(data).hexdigest(),
                                        "size": len(data)}
        # Public bytes: readable by a service user whatever umask the CLI ran under.
        assert (root / loader.name).stat().st_mode & 0o777 == 0o644
    # Debian's signed network GRUB goes next to shim under the name shim loads.
    assert BY_NAME["grubx64.efi"].path.endswith("grubnetx64.efi.signed")
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")]


def test_refresh_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    source = FakePackages(tmp_path / "pkgs")
    install(root, source)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()}
    again = install(root, source)
    assert {a for _, a in again.done} == {Action.UNCHANGED}
    # Nothing rewritten: same inodes, same mtimes, the manifest included.
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()} == before


def test_new_package_version_updates_and_damaged_file_is_repaired(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    install(root, FakePackages(tmp_path / "v1", "1.0"))
    (root / "ipxe.efi").write_bytes(b"edited in place")
    # A leftover temporary file of a refresh that was killed is not served and not in the way.
    (root / ".snponly.efi.99999.tmp").write_bytes(b"half")
    report = install(root, FakePackages(tmp_path / "v1", "1.0"))
    actions = {e.name: a for e, a in report.done}
    assert actions["ipxe.efi"] is Action.REPAIRED
    assert {a for n, a in actions.items() if n != "ipxe.efi"} == {Action.UNCHANGED}
    assert (root / "ipxe.efi").read_bytes() == (tmp_path / "v1/ipxe/usr/lib/ipxe/ipxe.efi").read_bytes()

    report = install(root, FakePackages(tmp_path / "v2", "2.0"))
    assert {a for _, a in report.done} == {Action.UPDATED}
    recorded = read_manifest(root)
    assert {e.version for e in recorded.values()} == {"2.0"}
    for name, entry in recorded.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == entry.sha256


def test_a_package_that_cannot_be_had_fails_alone_and_keeps_its_old_record(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    install(root, FakePackages(tmp_path / "v1"))
    old = read_manifest(root)["shimx64.efi"]
    report = install(root, FakePackages(tmp_path / "v2", "2.0", broken=frozenset({"shim-signed"})))
    assert [name for name, _ in report.failed] == ["shimx64.efi"]
    assert "shim-signed is not installed" in report.failed[0][1]
    assert {e.name for e, _ in report.done} == {x.name for x in LOADERS} - {"shimx64.efi"}
    assert read_manifest(root)["shimx64.efi"] == old  # its file still matches the old record
    # Fresh root: nothing to keep, so no record for it.
    fresh = tmp_path / "fresh"
    install(fresh, FakePackages(tmp_path / "v1", broken=frozenset({"shim-signed"})))
    assert "shimx64.efi" not in read_manifest(fresh)
    assert not (fresh / "shimx64.efi").exists()


def test_missing_file_in_a_package_is_named(tmp_path: Path) -> None:
    source = FakePackages(tmp_path / "pkgs")
    (tmp_path / "pkgs" / "ipxe" / "usr/lib/ipxe/snponly.efi").unlink()
    report = install(tmp_path / "tftp", source)
    assert report.failed == (("snponly.efi", "ipxe 1.0 has no /usr/lib/ipxe/snponly.efi"),)


def test_unwritable_root_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoaderError, match="cannot create"):
        install(tmp_path / "file" / "tftp", FakePackages(tmp_path / "pkgs"))


def test_installed_package_is_read_in_place_and_checked_against_dpkg() -> None:
    ipxe = DebianPackages(CACHE).get("ipxe")  # scripts/setup installs it
    assert ipxe.origin is Origin.INSTALLED
    assert ipxe.root == Path("/")
    # /usr/lib/ipxe/ipxe.efi is a link to /boot/ipxe.efi: dpkg records the file it leads to.
    assert ipxe.resolve("usr/lib/ipxe/ipxe.efi") == "boot/ipxe.efi"
    assert ipxe.md5sums["boot/ipxe.efi"] and ipxe.md5sums["usr/lib/ipxe/snponly.efi"]
    assert ipxe.read("usr/lib/ipxe/ipxe.efi") == Path("/usr/lib/ipxe/ipxe.efi").read_bytes()
    tampered = replace(ipxe, md5sums={**ipxe.md5sums, "usr/lib/ipxe/snponly.efi": "0" * 32})
    with pytest.raises(PackageError, match=r"differs from what package ipxe installed \(dpkg --verify"):
        tampered.read("usr/lib/ipxe/snponly.efi")
    assert parse_md5sums("0123456789abcdef0123456789abcdef  usr/lib/x\nbad line\n") == {
        "usr/lib/x": "0123456789abcdef0123456789abcdef"}


def test_signed_shim_and_grub_are_downloaded_when_not_installed(tmp_path: Path) -> None:
    """Needs Debian's archive (as the discovery image build does); the cache is shared."""
    packages = DebianPackages(CACHE)
    for name in ("shimx64.efi", "grubx64.efi"):
        loader = BY_NAME[name]
        pkg = packages.get(loader.package)
        policy = subprocess.run(["apt-cache", "policy", loader.package], capture_output=True, text=True,
                                check=True).stdout
        assert f"Candidate: {pkg.version}" in policy or f"Installed: {pkg.version}" in policy
        data = pkg.read(loader.path)
        assert data[:2] == b"MZ"  # a PE/COFF image
        if pkg.origin is Origin.DOWNLOADED:
            assert pkg.root.is_relative_to(CACHE / "x")


def test_cli_installs_then_refreshes_with_nothing_to_do(tmp_path: Path) -> None:
    cfg = tmp_path / "bootd.toml"
    cfg.write_text(loopback_config(tmp_path / "state", 8080))
    cmd = [sys.executable, "-m", "bootd", "images", "bootloaders", "--config", str(cfg),
           "--cache", str(CACHE)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert first.returncode == 0, first.stderr
    root = tmp_path / "state" / "tftp"
    for loader in LOADERS:
        assert f"{loader.name}: installed ({loader.package} " in first.stdout
        data = (root / loader.name).read_bytes()
        assert f"sha256 {hashlib.sha256(data).hexdigest()})" in first.stdout
    assert first.stdout.endswith(f"{len(LOADERS)} loader(s) in {root}, {len(LOADERS)} changed; "
                                 f"recorded in {root / MANIFEST}\n")
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert second.returncode == 0
    assert second.stdout.count(": unchanged (") == len(LOADERS)
    assert ", 0 changed;" in second.stdout


def test_missing_loaders_names_each_file_and_its_fix(tmp_path: Path) -> None:
    config = config_for(tmp_path / "state", '[boot]\nbios = "pxelinux.0"\nuefi_x64 = "shimx64.efi"\n'
                        'uefi_ia32 = "ipxe-ia32.efi"\nuefi_arm64 = "ipxe-arm64.efi"\n')
    root = config.tftp_root
    found = {m.name: m for m in missing_loaders(config)}
    assert list(found) == ["pxelinux.0", "ldlinux.c32", "reboot.c32", "libcom32.c32", "shimx64.efi",
                           "grubx64.efi", "ipxe-ia32.efi", "ipxe-arm64.efi"]
    assert found["ldlinux.c32"].needed_by == "pxelinux.0"
    assert found["grubx64.efi"].key == "boot.uefi_x64"
    assert found["shimx64.efi"].fields() == {"file": str(root / "shimx64.efi"), "key": "boot.uefi_x64",
                                             "fix": "run `bootd images bootloaders`"}
    assert found["ipxe-arm64.efi"].fix == (
        f"no Debian package bootd knows ships ipxe-arm64.efi: put it at {root / 'ipxe-arm64.efi'} "
        "or change [boot] uefi_arm64")
    install(root, FakePackages(tmp_path / "pkgs"))
    assert [m.name for m in missing_loaders(config)] == ["ipxe-ia32.efi", "ipxe-arm64.efi"]
    (root / "ldlinux.c32").unlink()
    assert [(m.name, m.needed_by) for m in missing_loaders(config)] == [
        ("ldlinux.c32", "pxelinux.0"), ("ipxe-ia32.efi", None), ("ipxe-arm64.efi", None)]
    # By default no ia32/arm64 loader is handed out (Debian has none to install): no warning.
    assert missing_loaders(config_for(tmp_path / "state", "")) == []


def test_serve_warns_about_missing_loaders(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port, tftp_port = free_port(), free_port()
    cfg = tmp_path / "bootd.toml"
    cfg.write_text(loopback_config(state, port, f"[tftp]\nport = {tftp_port}\n").replace(
        "tftp = false", "tftp = true"))
    install(state / "tftp", FakePackages(tmp_path / "pkgs", broken=frozenset({"ipxe"})))
    bootd = Bootd(cfg).start()
    bootd.close()
    lines = [x for x in bootd.stderr.splitlines() if "boot loader missing" in x]
    assert len(lines) == 2, bootd.stderr  # undionly.kpxe and snponly.efi (no ia32/arm64 loader by default)
    assert any(f"file={state / 'tftp' / 'undionly.kpxe'} key=boot.bios" in x
               and 'fix="run `bootd images bootloaders`"' in x for x in lines), lines
    assert any(f"file={state / 'tftp' / 'snponly.efi'} key=boot.uefi_x64" in x for x in lines), lines


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Config]]:
    config = config_for(tmp_path / "state")
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    repo = Repository(engine, SecretBox.from_file(tmp_path / "key"))
    async with TestClient(TestServer(http_app(repo, "operator-token", config))) as client:
        yield client, config
    await engine.dispose()


async def test_http_boot_loads_the_copy_tftp_serves(http: tuple[TestClient, Config], tmp_path: Path) -> None:
    client, config = http
    install(config.tftp_root, FakePackages(tmp_path / "pkgs"))
    answer = Policy(config).boot(BootClient("52:54:00:00:00:01", Firmware.HTTP, Arch.EFI_X64_HTTP))
    assert answer is not None
    assert answer.filename == f"{config.http_base}/tftp/snponly.efi"
    assert answer.vendor_class == b"HTTPClient"
    res = await client.get("/tftp/snponly.efi")
    assert res.status == 200
    assert await res.read() == (config.tftp_root / "snponly.efi").read_bytes()
    # Range, as for images (shim then loads grubx64.efi from the same directory).
    res = await client.get("/tftp/grubx64.efi", headers={"Range": "bytes=0-3"})
    assert (res.status, await res.read()) == (206, (config.tftp_root / "grubx64.efi").read_bytes()[:4])
    assert (await client.get("/tftp/nothing.efi")).status == 404
    # Resolved as TFTP resolves names: nothing outside the root, by name or by symlink.
    (config.tftp_root / "out").symlink_to(tmp_path / "key")
    assert (await client.get("/tftp/out")).status == 403
    assert (await client.get("/tftp/%2e%2e/key")).status in (403, 404)
    (config.tftp_root / "images").mkdir()
    assert (await client.get("/tftp/images")).status == 403


def test_links_inside_an_unpacked_package_stay_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "ipxe"
    (root / "boot").mkdir(parents=True)
    (root / "usr/lib/ipxe").mkdir(parents=True)
    (root / "boot/ipxe.efi").write_bytes(b"the package's ipxe.efi")
    (root / "usr/lib/ipxe/ipxe.efi").symlink_to("/boot/ipxe.efi")  # as in Debian's ipxe
    (root / "usr/lib/ipxe/up").symlink_to("../../../../etc/passwd")
    pkg = Unpacked("ipxe", "1", root, Origin.DOWNLOADED)
    assert pkg.read("usr/lib/ipxe/ipxe.efi") == b"the package's ipxe.efi"
    with pytest.raises(PackageError, match="leads outside it"):
        pkg.read("usr/lib/ipxe/up")
