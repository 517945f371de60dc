"""Debian packages as a source of boot files, never installed by bootd.

A package that is installed is read in place (its files under /), and each file
is checked against dpkg's own record of it (the package's md5sums control file,
the same check `dpkg --verify` makes), so a loader edited or damaged on the host
is not copied on. A package that is not installed is fetched with
`apt-get download` (apt checks the .deb against the signed archive index) into
a cache and unpacked there with dpkg-deb, as the discovery image build does
(bootd.images.build.fetch). The cache keeps the candidate version apt knows of
now: a refresh after `apt-get update` picks up a new shim or GRUB.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

from bootd.errors import BootdError
from bootd.images.build import fetch

# A host with a route that leads nowhere (an isolated admin network with a stale default
# route) makes apt wait minutes per mirror address; `bootd init` should say so sooner.
APT_TIMEOUTS = ("-o", "Acquire::http::Timeout=20", "-o", "Acquire::https::Timeout=20",
                "-o", "Acquire::Retries=0")


class PackageError(BootdError):
    """A package (or a file in it) cannot be had."""


class Origin(Enum):
    INSTALLED = "installed"    # read from the host's installed package
    DOWNLOADED = "downloaded"  # apt-get download + dpkg-deb -x into the cache


@dataclass(frozen=True)
class Unpacked:
    """One package's files under `root` (/ for an installed package)."""

    package: str
    version: str
    root: Path
    origin: Origin
    # dpkg's md5 per path (relative, no leading /) of an installed package
    md5sums: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, path: str) -> str:
        """`path` with symlinks followed inside the package: ipxe's /usr/lib/ipxe/ipxe.efi is a
        link to /boot/ipxe.efi, which in an unpacked .deb must not mean the host's /boot."""
        for _ in range(16):
            where = self.root / path
            if not where.is_symlink():
                return path
            target = os.readlink(where)
            path = posixpath.normpath(target.lstrip("/") if target.startswith("/")
                                      else posixpath.join(posixpath.dirname(path), target))
            if path.startswith("../") or path == "..":
                raise PackageError(f"a link in {self.package} leads outside it: {target}")
        raise PackageError(f"too many links in {self.package} from /{path}")

    def read(self, path: str) -> bytes:
        """The bytes of `path` (relative to the package root), checked against dpkg's record."""
        path = self.resolve(path)
        where = self.root / path
        try:
            data = where.read_bytes()
        except FileNotFoundError:
            raise PackageError(f"{self.package} {self.version} has no /{path}") from None
        except OSError as exc:
            raise PackageError(f"cannot read {where}: {exc.strerror}") from None
        expected = self.md5sums.get(path)
        if expected is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != expected:
            raise PackageError(f"/{path} differs from what package {self.package} installed "
                               f"(dpkg --verify {self.package}); reinstall it")
        return data


class PackageSource(Protocol):
    def get(self, package: str) -> Unpacked: ...


def _run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise PackageError(f"{cmd[0]} not found (Debian's apt and dpkg are needed)") from None


def deb_version(deb: Path) -> str:
    """The version in an `apt-get download` file name: package_version_arch.deb (':' as %3a)."""
    parts = deb.name.removesuffix(".deb").split("_")
    if len(parts) != 3:
        raise PackageError(f"{deb.name} is not named package_version_arch.deb")
    return unquote(parts[1])


def parse_md5sums(text: str) -> dict[str, str]:
    """dpkg's md5sums control file: "<md5>  <path without leading />" per line."""
    out = {}
    for line in text.splitlines():
        md5, _, path = line.partition("  ")
        if re.fullmatch(r"[0-9a-f]{32}", md5) and path:
            out[path] = md5
    return out


class DebianPackages:
    """Installed packages in place; the others downloaded into `cache` and unpacked there."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def get(self, package: str) -> Unpacked:
        res = _run("dpkg-query", "-W", "-f=${db:Status-Status}\t${Version}", package)
        status, _, version = res.stdout.partition("\t")
        if res.returncode == 0 and status == "installed":
            return Unpacked(package, version, Path("/"), Origin.INSTALLED, self._md5sums(package))
        return self._download(package)

    @staticmethod
    def _md5sums(package: str) -> dict[str, str]:
        res = _run("dpkg-query", "--control-path", package, "md5sums")
        path = res.stdout.strip()
        if res.returncode != 0 or not path:
            return {}
        try:
            return parse_md5sums(Path(path).read_text(errors="replace"))
        except OSError:
            return {}

    def _download(self, package: str) -> Unpacked:
        debs = self.cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        policy = _run("apt-cache", "policy", package)
        m = re.search(r"Candidate: (\S+)", policy.stdout)
        candidate = m.group(1) if m and m.group(1) != "(none)" else None
        cached = sorted(debs.glob(f"{package}_*.deb"))
        if candidate is not None and not any(deb_version(d) == candidate for d in cached):
            res = _run("apt-get", *APT_TIMEOUTS, "download", package, cwd=debs)
            if res.returncode != 0:
                raise PackageError(f"{package} is not installed and `apt-get download {package}` failed: "
                                   f"{res.stderr.strip()[-300:]}")
            for old in cached:  # only the candidate stays: fetch() takes the one it finds
                old.unlink(missing_ok=True)
        elif candidate is None and not cached:
            raise PackageError(f"{package} is not installed and apt knows no version of it "
                               "(apt-get update, or a sources.list with Debian main)")
        try:
            root = fetch([package], self.cache)[package]
        except BootdError as exc:
            raise PackageError(f"{package}: {exc}") from None
        return Unpacked(package, deb_version(Path(root.name + ".deb")), root, Origin.DOWNLOADED)
