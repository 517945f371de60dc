"""Which install media this is, and the plan to turn it into a profile: pure.

Theory of operation: `recognise` looks only at the media's file list and a few
small files it reads (.treeinfo, md5sum.txt, .disk/info), and returns a `Plan`:
the family, the files to copy (each with the checksum the media promises, if
any) and where the profile's kernel, initrd and tree end up, relative to the
profile's directory <tftp root>/images/NAME/. Layouts, first match wins:

- Ubuntu live-server (20.04 and later): casper/vmlinuz + casper/initrd. casper
  fetches the whole ISO (`url=`) and loop-mounts it, so the ISO is kept as the
  tree (served by HTTP with Range) next to the kernel and initrd; md5sum.txt
  in the image checks those two.
- Red Hat family (RHEL/CentOS 5, Rocky/Alma 9): images/pxeboot/vmlinuz +
  initrd.img, or the paths .treeinfo names for the arch. anaconda installs
  from the tree (`inst.repo=`, RHEL 5 `method=`), so the whole tree is copied
  and the profile boots its pxeboot kernel; .treeinfo [checksums] (productmd
  treeinfo 1.x, "path = sha256:HEX") check what they list. A release major
  version up to 6 (.treeinfo [release] or [general] version) or, lacking one,
  an EL5 package directory (Server/, Client/, CentOS/) means kickstart-rhel5.
- d-i netboot (Debian netboot.tar.gz or its tree, Ubuntu 20.04 legacy netboot):
  <dir>/{debian,ubuntu}-installer/amd64/linux + initrd.gz, the text one when a
  gtk one is there too. Packages come from a mirror, not the media: no tree.

Checksum lists "alongside" (SHA256SUMS, MD5SUMS, CHECKSUM next to the file or
up to two directories above a tree, as on Debian's and Rocky's mirrors) name
files relative to their own directory, in GNU ("HEX  ./path", "HEX *path") or
BSD ("SHA256 (path) = HEX") form; the algorithm follows from the digest length.
"""

from __future__ import annotations

import configparser
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bootd.images.media.source import MediaError
from bootd.model.profiles import Family

ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
SUMS_FILES = ("SHA256SUMS", "SHA512SUMS", "SHA1SUMS", "MD5SUMS", "CHECKSUM")
NETBOOT = re.compile(r"^(?:(?P<prefix>.*)/)?(?P<distro>debian|ubuntu)-installer/amd64/linux$")
EL5_PACKAGE_DIRS = ("Server", "Client", "CentOS")
LOOKED_FOR = ("casper/vmlinuz + casper/initrd (Ubuntu live-server ISO), images/pxeboot/vmlinuz + "
              "initrd.img or .treeinfo (Rocky/Alma/RHEL/CentOS), {debian,ubuntu}-installer/amd64/linux "
              "+ initrd.gz (d-i netboot)")


class Layout(enum.StrEnum):
    LIVE_SERVER = "Ubuntu live-server"
    REDHAT = "Red Hat family tree"
    NETBOOT = "d-i netboot"


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str  # a hashlib name
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


@dataclass(frozen=True, slots=True)
class Copy:
    source: str | None  # path in the media; None = the image or archive file itself
    dest: str           # relative to the profile's directory
    size: int
    expect: Digest | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    layout: Layout
    family: Family
    describe: str  # "Rocky Linux 9.4 (x86_64)", for the operator
    copies: tuple[Copy, ...]
    kernel: str    # relative to the profile's directory
    initrd: str
    tree: str | None  # relative to the profile's directory; None: the media has no tree
    checked: int = 0  # how many copies carry a checksum from the media
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        return sum(c.size for c in self.copies)


def parse_sums(text: str) -> dict[str, Digest]:
    """A checksum list (GNU or BSD form) -> path (no leading ./) -> digest. Unknown lines are skipped."""
    found: dict[str, Digest] = {}
    for line in text.splitlines():
        bsd = re.match(r"^\s*[A-Za-z0-9-]+\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)\s*$", line)
        gnu = re.match(r"^\s*([0-9A-Fa-f]+)\s+\*?(.+?)\s*$", line)
        if bsd:
            path, hex_ = bsd.group(1), bsd.group(2)
        elif gnu:
            hex_, path = gnu.group(1), gnu.group(2)
        else:
            continue
        algorithm = ALGORITHMS.get(len(hex_))
        if algorithm is not None:
            found[path.removeprefix("./").lstrip("/")] = Digest(algorithm, hex_.lower())
    return found


def parse_treeinfo(text: str, source: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(text, source)
    except configparser.Error as exc:
        raise MediaError(f"{source}: not a valid .treeinfo ({' '.join(str(exc).split())[:200]})") from None
    return parser


def treeinfo_checksums(info: configparser.RawConfigParser, source: str) -> dict[str, Digest]:
    found: dict[str, Digest] = {}
    if not info.has_section("checksums"):
        return found
    for path, value in info.items("checksums"):
        algorithm, sep, hex_ = value.strip().partition(":")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]+", hex_):
            raise MediaError(f"{source}: [checksums] {path} = {value!r} is not ALGORITHM:HEX")
        found[path] = Digest(algorithm.lower(), hex_.lower())
    return found


def _version(info: configparser.RawConfigParser) -> str:
    for section in ("release", "general"):
        if info.has_option(section, "version"):
            return info.get(section, "version").strip()
    return ""


def _name(info: configparser.RawConfigParser) -> str:
    for section, key in (("release", "name"), ("general", "family")):
        if info.has_option(section, key):
            return info.get(section, key).strip()
    return "Red Hat family"


def _arch(info: configparser.RawConfigParser) -> str:
    for section in ("tree", "general"):
        if info.has_option(section, "arch"):
            return info.get(section, "arch").strip()
    return "x86_64"


def _redhat(files: Mapping[str, int], read: Callable[[str], bytes], source: str,
            outside: Mapping[str, Digest]) -> Plan | None:
    info = None
    if ".treeinfo" in files:
        info = parse_treeinfo(read(".treeinfo").decode("utf-8", "replace"), f"{source}/.treeinfo")
    kernel, initrd = "images/pxeboot/vmlinuz", "images/pxeboot/initrd.img"
    if info is not None:
        section = f"images-{_arch(info)}"
        if info.has_option(section, "kernel") and info.has_option(section, "initrd"):
            kernel, initrd = info.get(section, "kernel").strip(), info.get(section, "initrd").strip()
    if kernel not in files or initrd not in files:
        if info is not None:
            raise MediaError(f"{source}: .treeinfo names {kernel} and {initrd}, which are not both there")
        return None
    sums = treeinfo_checksums(info, f"{source}/.treeinfo") if info is not None else {}
    version = _version(info) if info is not None else ""
    major = version.split(".")[0]
    if major.isdigit():
        el5 = int(major) <= 6
    else:
        el5 = any(f"{d}/repodata/repomd.xml" in files or any(p.startswith(f"{d}/") and p.endswith(".rpm")
                                                            for p in files) for d in EL5_PACKAGE_DIRS)
    describe = f"{_name(info) if info is not None else 'Red Hat family'} {version or '(no .treeinfo)'}"
    copies = tuple(Copy(path, f"tree/{path}", size, sums.get(path) or outside.get(path))
                   for path, size in sorted(files.items()))
    return Plan(Layout.REDHAT, Family.KICKSTART_RHEL5 if el5 else Family.KICKSTART,
                f"{describe.strip()} ({_arch(info) if info is not None else 'x86_64'})", copies,
                f"tree/{kernel}", f"tree/{initrd}", "tree", sum(c.expect is not None for c in copies))


def _live_server(files: Mapping[str, int], read: Callable[[str], bytes], source: str,
                 image: tuple[str, int] | None, outside: Mapping[str, Digest]) -> Plan | None:
    if "casper/vmlinuz" not in files or "casper/initrd" not in files:
        return None
    if image is None:
        raise MediaError(f"{source}: an unpacked Ubuntu live-server tree: casper's url= needs the ISO "
                         "itself; import the .iso file")
    sums = parse_sums(read("md5sum.txt").decode("utf-8", "replace")) if "md5sum.txt" in files else {}
    describe = "Ubuntu live-server"
    if ".disk/info" in files:
        describe = read(".disk/info").decode("utf-8", "replace").splitlines()[0].strip() or describe
    name, size = image
    copies = (Copy("casper/vmlinuz", "vmlinuz", files["casper/vmlinuz"], sums.get("casper/vmlinuz")),
              Copy("casper/initrd", "initrd", files["casper/initrd"], sums.get("casper/initrd")),
              Copy(None, name, size, outside.get(name)))
    return Plan(Layout.LIVE_SERVER, Family.AUTOINSTALL, describe, copies, "vmlinuz", "initrd", name,
                sum(c.expect is not None for c in copies))


def _netboot(files: Mapping[str, int], outside: Mapping[str, Digest]) -> Plan | None:
    found = sorted((m for m in map(NETBOOT.match, files) if m is not None),
                   key=lambda m: (m.group("prefix") is not None and "gtk" in m.group("prefix").split("/"),
                                  len(m.group(0))))
    for m in found:
        base = m.group(0).removesuffix("/linux")
        if f"{base}/initrd.gz" in files:
            kernel, initrd = f"{base}/linux", f"{base}/initrd.gz"
            copies = (Copy(kernel, "linux", files[kernel], outside.get(kernel)),
                      Copy(initrd, "initrd.gz", files[initrd], outside.get(initrd)))
            distro = m.group("distro").capitalize()
            return Plan(Layout.NETBOOT, Family.PRESEED, f"{distro} installer netboot (amd64)", copies,
                        "linux", "initrd.gz", None, sum(c.expect is not None for c in copies))
    return None


def recognise(files: Mapping[str, int], read: Callable[[str], bytes], source: str,
              image: tuple[str, int] | None = None, outside: Mapping[str, Digest] | None = None) -> Plan:
    """The plan for media with these files. `image`: (file name, size) of the ISO the
    files come from, if they do; `outside`: checksums found alongside, by media path."""
    outside = outside or {}
    plan = (_live_server(files, read, source, image, outside) or _redhat(files, read, source, outside)
            or _netboot(files, outside))
    if plan is None:
        raise MediaError(f"{source}: unknown install media: looked for {LOOKED_FOR}")
    return plan
