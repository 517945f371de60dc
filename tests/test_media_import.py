"""`bootd images import`: install media in, a profile that boots out.

Media are built here with the real layouts (pycdlib writes ISOs: an Ubuntu
24.04-like live-server image, a Rocky-9-like DVD with .treeinfo; a RHEL 5-like
tree as a directory), and a real Debian 12 netboot tree and tarball come from
Debian's package debian-installer-12-netboot-amd64 (downloaded once into
.cache/media with apt-get, never installed). Each imported profile must
render boot scripts whose kernel and initrd exist under the TFTP root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pycdlib
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import REPO, free_port, loopback_config

from bootd import boot
from bootd.boot import NodeView
from bootd.cli.main import main
from bootd.config import Config, load_config, parse_config
from bootd.config.parse import imported_profile_files
from bootd.errors import ConfigError
from bootd.http.boot import SETTINGS, Settings, images
from bootd.images.media.layout import Digest, parse_sums
from bootd.images.media.progress import Progress, bar_line
from bootd.images.media.service import Request, import_media
from bootd.images.media.source import MediaError, Medium, open_medium
from bootd.images.media.transfer import MANIFEST, staging_of
from bootd.model.profiles import Family
from bootd.model.states import NodeState

MAC = "52:54:00:12:34:56"
KERNEL = b"MZ kernel " + bytes(range(256)) * 40    # ~10 KiB, distinct per position
INITRD = b"\x1f\x8b initrd " + bytes(reversed(range(256))) * 300


# --- media builders -------------------------------------------------------------------------

def build_iso(path: Path, files: dict[str, bytes], *, rock_ridge: bool = True, joliet: bool = True,
              udf: bool = False, label: str = "MEDIA") -> None:
    """An ISO holding files ("dir/name" -> bytes) under the namespaces asked for."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, vol_ident=label, rock_ridge="1.09" if rock_ridge else None,
            joliet=3 if joliet else None, udf="2.60" if udf else None)
    made: set[str] = set()

    def names(rel: str, is_dir: bool) -> dict[str, str]:
        # ISO 9660 names as mastering tools write them: upper case, files with a version.
        base = rel.rpartition("/")[2].upper()
        iso_name = "/" + (base if is_dir else (base if "." in base else base + ".") + ";1")
        parent = rel.rpartition("/")[0]
        iso_path = (iso_dirs[parent] if parent else "") + iso_name
        kw = {"iso_path": iso_path}
        if rock_ridge:
            kw["rr_name"] = rel.rpartition("/")[2]
        if joliet:
            kw["joliet_path"] = "/" + rel
        if udf:
            kw["udf_path"] = "/" + rel
        return kw

    iso_dirs: dict[str, str] = {}
    for rel in sorted(files):
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                kw = names(d, True)
                iso_dirs[d] = kw["iso_path"]
                iso.add_directory(**kw)
                made.add(d)
        data = files[rel]
        iso.add_fp(io.BytesIO(data), len(data), **names(rel, False))
    iso.write(str(path))
    iso.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # the media's own list is MD5


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ubuntu_files(kernel: bytes = KERNEL, listed_kernel: bytes = KERNEL) -> dict[str, bytes]:
    return {
        "casper/vmlinuz": kernel,
        "casper/initrd": INITRD,
        "casper/ubuntu-server-minimal.squashfs": b"hsqs" + b"\0" * 5000,
        ".disk/info": b"Ubuntu-Server 24.04.1 LTS \"Noble Numbat\" - Release amd64 (20240827.1)\n",
        "md5sum.txt": (f"{md5(listed_kernel)}  ./casper/vmlinuz\n{md5(INITRD)}  ./casper/initrd\n"
                       ).encode(),
        "boot/grub/grub.cfg": b"menuentry 'Try or Install Ubuntu Server' {}\n",
    }


def treeinfo(version: str, sums: dict[str, bytes], family: str = "Rocky Linux") -> bytes:
    lines = ["[header]", "type = productmd.treeinfo", "version = 1.2", "",
             "[release]", f"name = {family}", "short = Rocky", f"version = {version}", "",
             "[general]", f"family = {family}", f"version = {version}", "arch = x86_64", "",
             "[tree]", "arch = x86_64", "platforms = x86_64", "",
             "[images-x86_64]", "kernel = images/pxeboot/vmlinuz", "initrd = images/pxeboot/initrd.img",
             "", "[checksums]"]
    lines += [f"{path} = sha256:{sha256(data)}" for path, data in sums.items()]
    return ("\n".join(lines) + "\n").encode()


def rocky_files(kernel: bytes = KERNEL) -> dict[str, bytes]:
    files = {
        "images/pxeboot/vmlinuz": kernel,
        "images/pxeboot/initrd.img": INITRD,
        "images/install.img": b"squashfs stage2" * 100,
        "BaseOS/repodata/repomd.xml": b"<repomd/>",
        "BaseOS/Packages/b/bash-5.1.8-6.el9.x86_64.rpm": b"\xed\xab\xee\xdb rpm" * 50,
        "AppStream/repodata/repomd.xml": b"<repomd/>",
        ".discinfo": b"1700000000.0\n9.4\nx86_64\n",
    }
    files[".treeinfo"] = treeinfo("9.4", {"images/pxeboot/vmlinuz": KERNEL,
                                          "images/pxeboot/initrd.img": INITRD,
                                          "images/install.img": files["images/install.img"]})
    return files


def rhel5_tree(root: Path) -> Path:
    files = {
        "images/pxeboot/vmlinuz": KERNEL,
        "images/pxeboot/initrd.img": INITRD,
        "images/stage2.img": b"cramfs" * 100,
        "Server/repodata/repomd.xml": b"<repomd/>",
        "Server/bash-3.2-24.el5.x86_64.rpm": b"\xed\xab\xee\xdb" * 50,
        ".discinfo": b"1294165210.155000\nRed Hat Enterprise Linux Server 5.6\nx86_64\n1\n",
        ".treeinfo": textwrap.dedent("""\
            [general]
            family = Red Hat Enterprise Linux Server
            timestamp = 1294165220.11
            variant = Server
            totaldiscs = 1
            version = 5.6
            discnum = 1
            packagedir = Server
            arch = x86_64

            [images-x86_64]
            kernel = images/pxeboot/vmlinuz
            initrd = images/pxeboot/initrd.img
            """).encode(),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


DEBIAN_PACKAGE = "debian-installer-12-netboot-amd64"


@pytest.fixture(scope="session")
def debian_netboot() -> Path:
    """The text netboot tree of Debian 12's installer, from Debian's package."""
    from bootd.images.build import fetch

    if shutil.which("apt-get") is None:
        pytest.skip("needs Debian's apt-get")
    unpacked = fetch([DEBIAN_PACKAGE], REPO / ".cache" / "media")[DEBIAN_PACKAGE]
    tree = unpacked / "usr/lib/debian-installer/images/12/amd64/text"
    assert (tree / "debian-installer/amd64/linux").is_file()
    return tree


# --- the config side ------------------------------------------------------------------------

@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "bootd.toml"
    path.write_text(loopback_config(tmp_path / "state", free_port()))
    return load_config(path)


def reload(config: Config) -> Config:
    return load_config(Path(config.source))


class Quiet(io.StringIO):
    pass


def run_import(config: Config, source: Path | str, name: str, **kw: object) -> Config:
    import_media(config, Request(str(source), name, **kw), Progress(Quiet(), False))  # type: ignore[arg-type]
    return reload(config)


def assert_boots(config: Config, name: str) -> str:
    """A node in hardware-installed with the profile gets a script whose files exist."""
    view = NodeView("n1", MAC, NodeState.HARDWARE_INSTALLED, name, "T0KEN", None)
    target = boot.target(view, config)
    assert target.mode == "install"
    for rel in (target.kernel, target.initrd):
        assert (config.tftp_root / rel).is_file(), rel
    script = boot.script("ipxe", view, config)
    assert f"{config.http_base}/{target.kernel}" in script
    assert f"{config.http_base}/{target.initrd}" in script
    for kind in ("pxelinux", "grub"):
        assert target.kernel in boot.script(kind, view, config)
    return script


def test_imported_profiles_sit_between_builtins_and_the_config_file(tmp_path: Path) -> None:
    files = [(str(tmp_path / "profiles/rocky-9.toml"),
              '[profiles."rocky-9"]\nfamily = "kickstart"\nkernel = "images/rocky-9/tree/k"\n'
              'initrd = "images/rocky-9/tree/i"\ntree = "images/rocky-9/tree"\n'
              'template = "kickstart/rocky-9.ks.j2"\nextra_args = ""\n'),
             (str(tmp_path / "profiles/lab.toml"),
              '[profiles.lab]\nfamily = "preseed"\nkernel = "images/lab/linux"\n'
              'initrd = "images/lab/initrd.gz"\ntree = "http://mirror.example/debian"\n'
              'template = "preseed/ubuntu-20.04.preseed.j2"\n')]
    text = loopback_config(tmp_path, 8080, '[profiles.lab]\nextra_args = "quiet"\n')
    config = parse_config(text, "bootd.toml", lambda state_dir: files)
    rocky = config.profiles["rocky-9"]
    assert rocky.kernel == "images/rocky-9/tree/k"  # the import overrides the built-in
    assert rocky.tree_url("http://h:1") == "http://h:1/images/rocky-9/tree"
    lab = config.profiles["lab"]
    assert (lab.extra_args, lab.kernel) == ("quiet", "images/lab/linux")  # the file overrides a key
    assert lab.tree_url("http://h:1") == "http://mirror.example/debian"
    assert "ubuntu-24.04" in config.profiles


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[profiles.other]\nfamily = "kickstart"\ntemplate = "kickstart/rocky-9.ks.j2"\n',
     "profiles.lab", "exactly [profiles.lab]"),
    ('[profiles.lab]\nfamily = "kickstart"\ntemplate = "kickstart/rocky-9.ks.j2"\nnope = 1\n',
     "profiles.lab.nope", "unknown key"),
    ('[profiles.lab]\nfamily = "kickstart"\ntemplate = "kickstart/rocky-9.ks.j2"\ntree = "file:///x"\n',
     "profiles.lab.tree", "not an http"),
])
def test_a_bad_profile_file_names_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles/lab.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        parse_config(loopback_config(tmp_path, 8080), "bootd.toml", imported_profile_files)
    assert err.value.source.endswith("profiles/lab.toml")
    assert (err.value.key, problem in err.value.problem) == (key, True)


# --- progress ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_on_a_terminal_and_lines_elsewhere() -> None:
    assert bar_line("import x", 512 << 20, 1 << 30, 64 << 20) == (
        "import x [###############...............]  50% 512.0 MiB / 1.0 GiB  64.0 MiB/s")
    clock, out = Clock(), io.StringIO()
    p = Progress(out, terminal=True, clock=clock)
    p.begin("import x", 100 << 20)
    for _ in range(10):
        clock.now += 1
        p.advance(10 << 20)
    p.end()
    frames = out.getvalue().split("\r")
    assert frames[-1].startswith("import x [##############################] 100% 100.0 MiB / 100.0 MiB")
    assert "10.0 MiB/s" in frames[-1] and out.getvalue().endswith("\n")

    clock, out = Clock(), io.StringIO()
    p = Progress(out, terminal=False, clock=clock)
    p.begin("import x", 1000)
    p.skip(500)  # from an earlier run: counted, but not in the rate
    for _ in range(50):
        clock.now += 0.01
        p.advance(10)
    p.end()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()
    assert lines[0] == "import x: 0 B of 1000 B (0%), 0 B/s"
    assert lines[-1] == "import x: 1000 B of 1000 B (100%), 1000 B/s"
    assert 6 <= len(lines) <= 12  # a line per tenth, not per advance


def test_checksum_lists_in_gnu_and_bsd_form() -> None:
    h = "a" * 64
    sums = parse_sums(f"{h}  ./netboot/debian-installer/amd64/linux\n{'b' * 32} *casper/initrd\n"
                      f"SHA256 (Rocky-9.4-x86_64-dvd.iso) = {h.upper()}\n# comment\nbroken line\n")
    assert sums == {"netboot/debian-installer/amd64/linux": Digest("sha256", h),
                    "casper/initrd": Digest("md5", "b" * 32),
                    "Rocky-9.4-x86_64-dvd.iso": Digest("sha256", h)}


# --- Ubuntu live-server ISO ---------------------------------------------------------------------

def test_ubuntu_live_server_iso_becomes_an_autoinstall_profile_serving_the_iso(
        tmp_path: Path, config: Config) -> None:
    iso = tmp_path / "ubuntu-24.04.1-live-server-amd64.iso"
    build_iso(iso, ubuntu_files(), label="Ubuntu-Server 24")
    (tmp_path / "SHA256SUMS").write_text(f"{sha256(iso.read_bytes())} *{iso.name}\n")
    config = run_import(config, iso, "noble")
    profile = config.profiles["noble"]
    assert profile.family is Family.AUTOINSTALL
    assert profile.template == "preseed/ubuntu-24.04.user-data.j2"
    served = config.tftp_root / "images/noble" / iso.name
    assert served.read_bytes() == iso.read_bytes()
    assert (config.tftp_root / profile.kernel).read_bytes() == KERNEL
    assert (config.tftp_root / profile.initrd).read_bytes() == INITRD
    script = assert_boots(config, "noble")
    assert f"url={config.http_base}/images/noble/{iso.name}" in script
    manifest = (config.tftp_root / "images/noble" / MANIFEST).read_text()
    assert f"{sha256(KERNEL)}  vmlinuz\n" in manifest
    assert not staging_of(config.tftp_root / "images/noble").exists()


def test_a_kernel_that_does_not_match_md5sum_txt_is_refused(tmp_path: Path, config: Config,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    iso = tmp_path / "noble.iso"
    build_iso(iso, ubuntu_files(kernel=KERNEL + b"tampered"))
    code = main(["--config", config.source, "images", "import", str(iso), "--profile", "noble"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("bootd: error: ")
    assert "casper/vmlinuz has md5:" in err and f"says md5:{md5(KERNEL)}" in err
    assert "noble" not in reload(config).profiles


@pytest.mark.parametrize("namespaces", [
    {"rock_ridge": False, "joliet": True, "udf": False},
    {"rock_ridge": False, "joliet": False, "udf": True},
    {"rock_ridge": False, "joliet": False, "udf": False},
], ids=["joliet", "udf", "iso9660"])
def test_names_from_every_namespace(tmp_path: Path, namespaces: dict[str, bool]) -> None:
    iso = tmp_path / "m.iso"
    build_iso(iso, rocky_files(), **namespaces)
    medium = open_medium(iso)
    try:
        files = medium.files()
        assert files["images/pxeboot/vmlinuz"] == len(KERNEL)
        assert ".treeinfo" in files and "basos/repodata/repomd.xml" not in files
        with medium.open("images/pxeboot/initrd.img", 100) as f:
            assert f.read() == INITRD[100:]
    finally:
        medium.close()


# --- Red Hat family ------------------------------------------------------------------------------

def test_rocky_9_dvd_tree_is_copied_checked_and_boots(tmp_path: Path, config: Config) -> None:
    iso = tmp_path / "Rocky-9.4-x86_64-dvd.iso"
    build_iso(iso, rocky_files(), udf=True)
    (tmp_path / "CHECKSUM").write_text(f"SHA256 ({iso.name}) = {sha256(iso.read_bytes())}\n")
    out = io.StringIO()
    import_media(config, Request(str(iso), "rocky-9"), Progress(out, False))
    assert "Rocky Linux 9.4 (x86_64)" in out.getvalue() and "3 with checksums" in out.getvalue()
    config = reload(config)
    profile = config.profiles["rocky-9"]
    assert (profile.family, profile.tree) == (Family.KICKSTART, "images/rocky-9/tree")
    tree = config.tftp_root / "images/rocky-9/tree"
    for rel, data in rocky_files().items():
        assert (tree / rel).read_bytes() == data
    script = assert_boots(config, "rocky-9")
    assert f"inst.repo={config.http_base}/images/rocky-9/tree" in script


def test_a_treeinfo_checksum_mismatch_stops_the_import(tmp_path: Path, config: Config) -> None:
    iso = tmp_path / "rocky.iso"
    build_iso(iso, rocky_files(kernel=KERNEL[:-1] + b"!"))
    with pytest.raises(MediaError, match=r"images/pxeboot/vmlinuz has sha256:\w+, the media's list says"):
        run_import(config, iso, "rocky")
    assert "rocky" not in reload(config).profiles
    assert not (config.tftp_root / "images/rocky").exists()


def test_rhel5_tree_directory_is_a_kickstart_rhel5_profile(tmp_path: Path, config: Config) -> None:
    tree = rhel5_tree(tmp_path / "rhel-5.6-server")
    config = run_import(config, tree, "rhel5")
    profile = config.profiles["rhel5"]
    assert profile.family is Family.KICKSTART_RHEL5
    script = assert_boots(config, "rhel5")
    assert f"method={config.http_base}/images/rhel5/tree" in script
    assert (config.tftp_root / "images/rhel5/tree/Server/repodata/repomd.xml").is_file()
    # --family wins over the guess
    config = run_import(config, tree, "rhel5b", family=Family.KICKSTART)
    assert config.profiles["rhel5b"].family is Family.KICKSTART


# --- Debian netboot, the real one ---------------------------------------------------------------

def test_real_debian_netboot_tree_and_tarball(tmp_path: Path, config: Config, debian_netboot: Path) -> None:
    linux = (debian_netboot / "debian-installer/amd64/linux").read_bytes()
    initrd_sha = hashlib.sha256((debian_netboot / "debian-installer/amd64/initrd.gz").read_bytes())
    config = run_import(config, debian_netboot, "debian-12", tree="http://deb.debian.org/debian")
    profile = config.profiles["debian-12"]
    assert (profile.family, profile.kernel) == (Family.PRESEED, "images/debian-12/linux")
    assert (config.tftp_root / profile.kernel).read_bytes() == linux
    script = assert_boots(config, "debian-12")
    assert "auto=true" in script and "priority=critical" in script

    # the same as Debian's netboot.tar.gz, with the mirror's SHA256SUMS one level up
    mirror = tmp_path / "images"
    tarball = mirror / "netboot" / "netboot.tar.gz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:
        tar.add(debian_netboot, arcname=".")
    sums = (f"{sha256(tarball.read_bytes())}  ./netboot/netboot.tar.gz\n"
            f"{sha256(linux)}  ./netboot/debian-installer/amd64/linux\n"
            f"{initrd_sha.hexdigest()}  ./netboot/debian-installer/amd64/initrd.gz\n"
            f"{'0' * 64}  ./netboot/gtk/debian-installer/amd64/linux\n")
    (mirror / "SHA256SUMS").write_text(sums)
    out = io.StringIO()
    import_media(config, Request(str(tarball), "debian-12-tar"), Progress(out, False))
    assert "2 with checksums" in out.getvalue() and "verify netboot.tar.gz" in out.getvalue()
    assert_boots(reload(config), "debian-12-tar")

    (mirror / "SHA256SUMS").write_text(sums.replace(initrd_sha.hexdigest(), "1" * 64).replace(
        sha256(tarball.read_bytes()), "2" * 64))
    with pytest.raises(MediaError, match=r"netboot\.tar\.gz: sha256:"):
        run_import(config, tarball, "debian-12-bad")
    (mirror / "SHA256SUMS").write_text(sums.replace(initrd_sha.hexdigest(), "1" * 64))
    with pytest.raises(MediaError, match=r"initrd.gz has sha256:\w+, the media's list says sha256:1111"):
        run_import(config, tarball, "debian-12-bad")
    assert "debian-12-bad" not in reload(config).profiles


# --- broken media -------------------------------------------------------------------------------

def cli_error(config: Config, source: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["--config", config.source, "images", "import", str(source), "--profile", "x"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("\n") == 1 and captured.err.startswith("bootd: error: ")
    return captured.err


def test_random_truncated_and_unknown_media_are_one_line_errors(
        tmp_path: Path, config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(os.urandom(3 << 20))
    assert "not install media: no ISO 9660/UDF volume descriptor at byte 32768" in \
        cli_error(config, junk, capsys)

    iso = tmp_path / "full.iso"
    build_iso(iso, ubuntu_files())
    data = iso.read_bytes()
    for cut in (40 * 1024, len(data) - 6000):
        short = tmp_path / f"cut{cut}.iso"
        short.write_bytes(data[:cut])
        err = cli_error(config, short, capsys)
        assert "not a readable ISO 9660/UDF image" in err if cut < 64 * 1024 else \
            f"truncated ISO image: the volume descriptor says {len(data)} bytes, the file has {cut}" in err

    other = tmp_path / "other.iso"
    build_iso(other, {"README.TXT": b"hello", "EFI/BOOT/BOOTX64.EFI": b"MZ"})
    err = cli_error(config, other, capsys)
    assert "unknown install media: looked for casper/vmlinuz + casper/initrd" in err
    assert "images/pxeboot/vmlinuz" in err and "debian,ubuntu}-installer/amd64/linux" in err
    assert "x" not in reload(config).profiles


# --- interrupted and resumed ---------------------------------------------------------------------

class Interrupted(Exception):
    pass


class Flaky:
    """A Medium over a real one whose reads stop (raise) after `budget` bytes, and count."""

    def __init__(self, inner: Medium, budget: int | None) -> None:
        self.inner, self.budget, self.read_bytes = inner, budget, 0
        self.name, self.kind, self.container = inner.name, inner.kind, inner.container

    def files(self) -> dict[str, int]:
        return self.inner.files()

    @contextlib.contextmanager
    def open(self, path: str, offset: int = 0) -> Iterator[IO[bytes]]:
        with self.inner.open(path, offset) as f:
            yield self._Reader(self, f)  # type: ignore[misc]

    class _Reader:
        def __init__(self, owner: Flaky, f: IO[bytes]) -> None:
            self.owner, self.f = owner, f

        def read(self, n: int = -1) -> bytes:
            owner = self.owner
            if owner.budget is not None and owner.read_bytes >= owner.budget:
                raise Interrupted("power cut")
            chunk = self.f.read(min(n, 4096) if n > 0 else 4096)
            owner.read_bytes += len(chunk)
            return chunk

    def close(self) -> None:
        self.inner.close()


def test_an_interrupted_import_leaves_no_profile_and_resumes(tmp_path: Path, config: Config) -> None:
    iso = tmp_path / "rocky.iso"
    build_iso(iso, rocky_files())
    total = sum(len(v) for v in rocky_files().values())
    flaky: list[Flaky] = []

    def opener(budget: int | None):  # type: ignore[no-untyped-def]
        def open_(path: Path) -> Medium:
            flaky.append(Flaky(open_medium(path), budget))
            return flaky[-1]
        return open_

    with pytest.raises(Interrupted):
        import_media(config, Request(str(iso), "rocky"), Progress(Quiet(), False), opener(total // 2))
    assert "rocky" not in reload(config).profiles
    assert not (config.tftp_root / "images/rocky").exists()
    staging = staging_of(config.tftp_root / "images/rocky")
    assert list(staging.rglob("*.part"))  # a file was mid-copy

    out = io.StringIO()
    done = import_media(config, Request(str(iso), "rocky"), Progress(out, False), opener(None))
    assert done.resumed and "resuming the import" in out.getvalue()
    # nothing copied is read twice (each run reads .treeinfo once more to recognise the media)
    treeinfo_bytes = len(rocky_files()[".treeinfo"])
    assert flaky[-1].read_bytes - treeinfo_bytes == total - (flaky[0].read_bytes - treeinfo_bytes)
    assert not staging.exists()
    config = reload(config)
    for rel, data in rocky_files().items():
        assert (config.tftp_root / "images/rocky/tree" / rel).read_bytes() == data
    recorded = (config.tftp_root / "images/rocky" / MANIFEST).read_text()
    assert f"{sha256(KERNEL)}  tree/images/pxeboot/vmlinuz\n" in recorded
    assert_boots(config, "rocky")
    with pytest.raises(MediaError, match="give --replace"):
        run_import(config, iso, "rocky")
    run_import(config, iso, "rocky", replace=True)


# --- URLs and Range -----------------------------------------------------------------------------

async def test_url_download_resumes_with_range(tmp_path: Path, config: Config) -> None:
    iso = tmp_path / "noble.iso"
    build_iso(iso, ubuntu_files())
    data = iso.read_bytes()
    ranges: list[str | None] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:  # the first answer breaks off half-way
            resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            request.transport.close()  # type: ignore[union-attr]
            return resp
        return web.FileResponse(iso)

    app = web.Application()
    app.router.add_get("/releases/noble.iso", serve)
    async with TestServer(app, host="127.0.0.1") as server:
        url = f"http://127.0.0.1:{server.port}/releases/noble.iso"
        with pytest.raises(MediaError, match="run the import again to resume"):
            await asyncio.to_thread(run_import, config, url, "noble")
        config = await asyncio.to_thread(run_import, config, url, "noble")
    assert ranges == [None, f"bytes={len(data) // 2}-"]
    assert not list((config.state_dir / "cache" / "media").rglob("noble.iso*"))  # imported: no 2nd copy
    assert (config.tftp_root / "images/noble/noble.iso").read_bytes() == data
    assert_boots(config, "noble")


async def test_the_imported_iso_is_served_with_range(tmp_path: Path, config: Config) -> None:
    iso = tmp_path / "noble.iso"
    build_iso(iso, ubuntu_files())
    config = run_import(config, iso, "noble")
    data = iso.read_bytes()
    app = web.Application()
    app[SETTINGS] = Settings(config)
    app.router.add_get("/images/{path:.+}", images)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/images/noble/noble.iso", headers={"Range": "bytes=32768-32773"})
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 32768-32773/{len(data)}"
        assert await resp.read() == data[32768:32774]
        whole = await client.get("/images/noble/noble.iso")
        assert whole.status == 200 and await whole.read() == data


def test_cli_prints_the_profile_and_progress_lines(tmp_path: Path, config: Config,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tree = rhel5_tree(tmp_path / "tree")
    code = main(["--config", config.source, "images", "import", str(tree), "--profile", "el5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "import el5: 0 B of" in out and "(100%)" in out
    assert "profile el5 (kickstart-rhel5): kernel images/el5/tree/images/pxeboot/vmlinuz" in out
    listed = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=config.tftp_root / "images/el5",
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stdout + listed.stderr


def test_a_killed_download_leaves_no_profile_and_the_next_run_resumes(tmp_path: Path, config: Config) -> None:
    """A real `bootd images import URL` process, killed (SIGKILL) mid-download."""
    import http.server
    import signal
    import sys
    import threading
    import time

    iso = tmp_path / "noble.iso"
    build_iso(iso, ubuntu_files())
    data = iso.read_bytes()
    half = len(data) // 2
    release = threading.Event()
    ranges: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ranges.append(self.headers.get("Range"))
            if len(ranges) == 1:  # half the file, then nothing until the test is done
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:half])
                self.wfile.flush()
                release.wait(60)
                return
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/noble.iso"
    command = [sys.executable, "-m", "bootd", "--config", config.source, "images", "import", url,
               "--profile", "noble"]
    try:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = config.state_dir / "cache" / "media"
        try:
            # Bounded wait for the first half to land on disk (not a timed assertion).
            for _ in range(600):
                parts = list(cache.rglob("noble.iso.part"))
                if parts and parts[0].stat().st_size >= half:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the download never reached half-way")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            release.set()
        assert "noble" not in reload(config).profiles
        assert not (config.tftp_root / "images/noble").exists()
        again = subprocess.run(command, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert f"resuming at {half} bytes" in again.stdout
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert ranges == [None, f"bytes={half}-"]
    config = reload(config)
    assert (config.tftp_root / "images/noble/noble.iso").read_bytes() == data
    assert_boots(config, "noble")


def test_two_imports_of_one_profile_at_once_are_refused(tmp_path: Path, config: Config) -> None:
    import fcntl

    tree = rhel5_tree(tmp_path / "tree")
    images_dir = config.tftp_root / "images"
    images_dir.mkdir(parents=True)
    with (images_dir / ".el5.lock").open("a") as held:  # as a running import holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(MediaError, match="another import of profile el5 is running"):
            run_import(config, tree, "el5")
    assert "el5" in run_import(config, tree, "el5").profiles
