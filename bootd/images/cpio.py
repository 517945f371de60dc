"""A reproducible initramfs: cpio "newc" (what the kernel unpacks, see the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst), gzip-compressed.

Entries are sorted, owned by root, stamped with one fixed time, and the gzip
header carries no name or time, so the same tree gives the same bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path

TRAILER = "TRAILER!!!"


def _header(name: str, mode: int, size: int, ino: int, mtime: int, nlink: int = 1,
            rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    head = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    return _pad(head + name.encode() + b"\0")


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def archive(root: Path, mtime: int = 0, devices: dict[str, tuple[int, int, int]] | None = None) -> bytes:
    """The tree under `root` as gzip'd newc; `devices` adds character devices
    (path -> (mode, major, minor)) that an unprivileged build could not mknod."""
    out = io.BytesIO()
    ino = 1
    paths = sorted(p for p in root.rglob("*"))
    for path in paths:
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            target = os.readlink(path).encode()
            out.write(_header(rel, mode, len(target), ino, mtime) + _pad(target))
        elif stat.S_ISDIR(mode):
            out.write(_header(rel, mode, 0, ino, mtime, nlink=2))
        elif stat.S_ISREG(mode):
            data = path.read_bytes()
            out.write(_header(rel, mode, len(data), ino, mtime) + _pad(data))
        ino += 1
    for rel, (perm, major, minor) in sorted((devices or {}).items()):
        out.write(_header(rel, stat.S_IFCHR | perm, 0, ino, mtime, rdev=(major, minor)))
        ino += 1
    out.write(_header(TRAILER, 0, 0, 0, 0))
    raw = out.getvalue()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(raw)
    return buf.getvalue()
