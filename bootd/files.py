"""Every path that comes off the wire is resolved under a root, or refused.

A name is split on "/" (and "\\", which Windows-lineage PXE clients send), and
its parts must be plain names: no "..", no empty part in the middle, no
control characters. A leading "/" means the root itself (GRUB asks for
"/grub/grub.cfg"; tftpd-hpa -s treats names the same way), so "/etc/passwd"
is looked up as <root>/etc/passwd and is simply not there. The resolved real
path (symlinks followed) must still lie under the root's real path, and must
be a regular file: a FIFO or device would hang or leak.

Opening uses O_NONBLOCK and checks the opened descriptor, so a file swapped
for a FIFO between check and open cannot block the event loop.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bootd.errors import BootdError

MAX_NAME = 255 * 4


class Refused(BootdError):
    """The name may not be served (it tries to leave the root, or is not a plain file name)."""


class Missing(BootdError):
    """Nothing servable under the root by that name."""


def clean_parts(name: str) -> list[str]:
    if not name or len(name) > MAX_NAME:
        raise Refused(f"file name of length {len(name)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise Refused("control characters in the file name")
    parts = name.replace("\\", "/").lstrip("/").split("/")
    if any(part in ("..", ".") for part in parts):
        raise Refused("'.' or '..' in the file name")
    if any(part == "" for part in parts):
        raise Refused("empty path component in the file name")
    return parts


def resolve(root: Path, name: str) -> Path:
    """The real path of `name` under `root`, which must exist and be a regular file."""
    parts = clean_parts(name)
    real_root = root.resolve()
    candidate = real_root.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise Missing("not found") from None
    except (OSError, RuntimeError) as exc:  # loops, permission
        raise Missing(str(getattr(exc, "strerror", None) or exc)) from None
    if real != real_root and real_root not in real.parents:
        raise Refused("leads outside the root")
    return real


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The content of a regular file, read without ever blocking on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise Missing(f"{path.name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path.name} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise Refused(f"{path.name} is larger than {limit} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
