"""First-stage boot loaders from Debian's packages, installed under the TFTP root.

`bootd init` and `bootd images bootloaders` put each loader in LOADERS at
<tftp root>/<name>: the one copy TFTP serves, and HTTP too (UEFI HTTP boot is
handed {http_base}/tftp/<name>, served from the same root by bootd.http.boot).
Nothing is vendored: the bytes come from the installed package, or from the
.deb apt downloads when the package is not installed (bootd.images.packages).

The record of what is there is <tftp root>/loaders.json (MANIFEST): per loader
its package, version, where it came from, sha256 and size. A refresh is
idempotent and atomic per file: a loader whose bytes are already in place is
left alone (same inode, same mtime); a new one is written to a temporary file
in the same directory, fsynced and renamed over the old, then read back and its
sha256 checked again. A file whose bytes no longer match the manifest (edited
or damaged in place) is reported as repaired and replaced. The manifest itself
is replaced the same way, last.

Debian 12 packages iPXE for x86 only (no arm64 or ia32 EFI build), and arm64's
signed shim and GRUB are arm64 packages apt on an amd64 host does not fetch: so
uefi_ia32 / uefi_arm64 default to none, and a config that names one names a file
the operator provides. `bootd serve`
warns about every loader the config hands out that is missing (missing_loaders),
with the fix: `bootd images bootloaders` where a package has it, else the path
to put it at.

Secure Boot (LAB-NOTES): shim loads grubx64.efi from the directory of the BOOTP
file field, so Debian's signed network GRUB (grubnetx64.efi.signed) is
installed as grubx64.efi next to shimx64.efi.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType

from bootd.config import Config
from bootd.errors import BootdError
from bootd.images.packages import PackageError, PackageSource

MANIFEST = "loaders.json"
FIX = "bootd images bootloaders"


class LoaderError(BootdError):
    pass


@dataclass(frozen=True)
class Loader:
    name: str      # file name under the TFTP root, as the config's [boot] names it
    package: str   # Debian package that ships it
    path: str      # inside the package, no leading /
    needs: tuple[str, ...] = ()  # loaders it fetches next from the same directory


LOADERS: tuple[Loader, ...] = (
    Loader("undionly.kpxe", "ipxe", "usr/lib/ipxe/undionly.kpxe"),
    Loader("ipxe.efi", "ipxe", "usr/lib/ipxe/ipxe.efi"),
    Loader("snponly.efi", "ipxe", "usr/lib/ipxe/snponly.efi"),
    # pxelinux.cfg's fallback (a failed load waits at the prompt, then reboots) runs
    # reboot.c32, a COM32 module that needs libcom32.c32.
    Loader("pxelinux.0", "pxelinux", "usr/lib/PXELINUX/pxelinux.0",
           needs=("ldlinux.c32", "reboot.c32", "libcom32.c32")),
    Loader("ldlinux.c32", "syslinux-common", "usr/lib/syslinux/modules/bios/ldlinux.c32"),
    Loader("reboot.c32", "syslinux-common", "usr/lib/syslinux/modules/bios/reboot.c32"),
    Loader("libcom32.c32", "syslinux-common", "usr/lib/syslinux/modules/bios/libcom32.c32"),
    Loader("shimx64.efi", "shim-signed", "usr/lib/shim/shimx64.efi.signed", needs=("grubx64.efi",)),
    Loader("grubx64.efi", "grub-efi-amd64-signed", "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
)
BY_NAME = MappingProxyType({loader.name: loader for loader in LOADERS})


class Action(Enum):
    INSTALLED = "installed"  # was not there
    UPDATED = "updated"      # the package has other bytes now (a new version)
    REPAIRED = "repaired"    # the file no longer matched its recorded sha256
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Entry:
    """One line of the manifest."""

    name: str
    package: str
    version: str
    origin: str  # Origin value
    sha256: str
    size: int


@dataclass(frozen=True)
class Report:
    done: tuple[tuple[Entry, Action], ...]
    failed: tuple[tuple[str, str], ...]  # (loader name, why)
    manifest: Path


@dataclass(frozen=True)
class MissingLoader:
    key: str    # the config key that hands it out, e.g. "boot.uefi_x64"
    name: str
    path: Path
    packaged: bool
    needed_by: str | None = None  # the loader that loads this one

    @property
    def fix(self) -> str:
        if self.packaged:
            return f"run `{FIX}`"
        return f"no Debian package bootd knows ships {self.name}: put it at {self.path} or change [boot] " \
               f"{self.key.removeprefix('boot.')}"

    def fields(self) -> dict[str, object]:
        out: dict[str, object] = {"file": str(self.path), "key": self.key}
        if self.needed_by:
            out["needed_by"] = self.needed_by
        out["fix"] = self.fix
        return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(tftp_root: Path) -> dict[str, Entry]:
    """The recorded loaders; an unreadable or foreign manifest counts as none (a refresh rewrites it)."""
    try:
        doc = json.loads((tftp_root / MANIFEST).read_text())
        return {e["name"]: Entry(**e) for e in doc["loaders"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _file_sha256(path: Path) -> str | None:
    try:
        return sha256(path.read_bytes()) if path.is_file() else None
    except OSError:
        return None


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # loaders are public bytes: readable by the service whatever the umask
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LoaderError(f"cannot write {path}: {exc.strerror}") from None


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def install(tftp_root: Path, source: PackageSource, loaders: tuple[Loader, ...] = LOADERS) -> Report:
    """Put every loader in `loaders` under `tftp_root` from its package; record them in MANIFEST.
    A loader whose package cannot be had is reported in `failed`; the others are installed."""
    try:
        tftp_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoaderError(f"cannot create {tftp_root}: {exc.strerror}") from None
    recorded = read_manifest(tftp_root)
    unpacked, broken = {}, {}
    for package in dict.fromkeys(loader.package for loader in loaders):
        try:
            unpacked[package] = source.get(package)
        except PackageError as exc:
            broken[package] = str(exc)
    done: list[tuple[Entry, Action]] = []
    failed: list[tuple[str, str]] = []
    for loader in loaders:
        if loader.package in broken:
            failed.append((loader.name, broken[loader.package]))
            continue
        pkg = unpacked[loader.package]
        try:
            data = pkg.read(loader.path)
        except PackageError as exc:
            failed.append((loader.name, str(exc)))
            continue
        entry = Entry(loader.name, pkg.package, pkg.version, pkg.origin.value, sha256(data), len(data))
        target = tftp_root / loader.name
        current = _file_sha256(target)
        before = recorded.get(loader.name)
        if current == entry.sha256:
            done.append((entry, Action.UNCHANGED))
            continue
        if current is None:
            action = Action.INSTALLED
        elif before is not None and current != before.sha256:
            action = Action.REPAIRED
        else:
            action = Action.UPDATED
        _write_atomic(target, data)
        if _file_sha256(target) != entry.sha256:
            raise LoaderError(f"{target}: sha256 after writing differs from {entry.package}'s bytes")
        done.append((entry, action))
    # Loaders that failed now keep their old record if their file still matches it.
    entries = {e.name: e for e, _ in done}
    for name, _ in failed:
        old = recorded.get(name)
        if old is not None and _file_sha256(tftp_root / name) == old.sha256:
            entries[name] = old
    doc = {"format": 1, "loaders": [asdict(entries[n]) for n in sorted(entries)]}
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    manifest = tftp_root / MANIFEST
    with contextlib.suppress(OSError):
        if manifest.read_text() == text:
            _sync_dir(tftp_root)
            return Report(tuple(done), tuple(failed), manifest)
    _write_atomic(manifest, text.encode())
    _sync_dir(tftp_root)
    return Report(tuple(done), tuple(failed), manifest)


def handed_out(config: Config) -> list[tuple[str, str]]:
    """(config key, loader file) for every loader the config hands to a firmware."""
    boot = config.boot
    pairs = [("boot.bios", boot.bios), ("boot.uefi_x64", boot.uefi_x64),
             ("boot.uefi_ia32", boot.uefi_ia32), ("boot.uefi_arm64", boot.uefi_arm64)]
    return [(key, name) for key, name in pairs if name]  # "": that firmware gets no loader


def missing_loaders(config: Config) -> list[MissingLoader]:
    """Every loader the config hands out (and every loader those load next) that is not a
    file under the TFTP root. Pure apart from stat(); `bootd serve` logs each."""
    root = config.tftp_root
    out: list[MissingLoader] = []
    seen: set[str] = set()

    def check(key: str, name: str, needed_by: str | None) -> None:
        if name in seen:
            return
        seen.add(name)
        path = root / name
        if not path.is_file():
            out.append(MissingLoader(key, name, path, name in BY_NAME, needed_by))
        loader = BY_NAME.get(name)
        for nxt in loader.needs if loader else ():
            check(key, nxt, name)

    for key, name in handed_out(config):
        check(key, name, None)
    return out
