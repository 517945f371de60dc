"""Every path that comes off the wire is resolved under a root, or refused.

One function, clean_path, turns a wire name into a CleanPath: a relative,
'/'-separated path whose parts are plain names. A name is split on "/" (and
"\\", which Windows-lineage PXE clients send), and its parts must be plain
names: no "..", no ".", no empty part in the middle, no control characters,
no part longer than NAME_MAX and no name longer than MAX_NAME. A leading "/"
means the root itself (GRUB asks for "/grub/grub.cfg"; tftpd-hpa -s treats
names the same way), so "/etc/passwd" is looked up as <root>/etc/passwd and is
simply not there. Protocols clean a name once and pass the CleanPath on: to
the policy (as its text) and to resolve_clean, which does not clean again.

The resolved real path (symlinks followed) must still lie under the root's
real path, and must be a regular file: a FIFO or device would hang or leak.
Opening uses O_NONBLOCK and checks the opened descriptor, so a file swapped
for a FIFO between check and open cannot block the event loop.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bootd.errors import BootdError

MAX_NAME = 255 * 4
NAME_MAX = 255  # one path component, as Linux allows


class Refused(BootdError):
    """The name may not be served (it tries to leave the root, or is not a plain file name)."""


class BadName(Refused):
    """The name itself is hostile or broken: control characters, '..', '.', empty parts, too long."""


class OutsideRoot(Refused):
    """The name resolves (through a symlink) to a place outside the root."""


class NotRegular(Refused):
    """The name is a directory, FIFO, device or socket."""


class Missing(BootdError):
    """Nothing servable under the root by that name."""


@dataclass(frozen=True, slots=True)
class CleanPath:
    """A relative path of plain names; made by clean_path only."""

    parts: tuple[str, ...]

    @property
    def text(self) -> str:
        """'/'-joined, no leading '/': what the policy matches ("pxelinux.cfg/01-..", "grub/grub.cfg")."""
        return "/".join(self.parts)

    def __str__(self) -> str:
        return self.text


def clean_path(name: str) -> CleanPath:
    """The clean relative path a wire name stands for; raises BadName."""
    if not name or len(name) > MAX_NAME:
        raise BadName(f"file name of length {len(name)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadName("control characters in the file name")
    parts = name.replace("\\", "/").lstrip("/").split("/")
    if any(part in ("..", ".") for part in parts):
        raise BadName("'.' or '..' in the file name")
    if any(part == "" for part in parts):
        raise BadName("empty path component in the file name")
    if any(len(part) > NAME_MAX for part in parts):
        raise BadName(f"a path component longer than {NAME_MAX} characters")
    return CleanPath(tuple(parts))


def real_path(path: str) -> str:
    """`path` with every symlink followed, as the kernel resolves it: opened O_PATH (which
    neither reads nor blocks, even on a FIFO), then the link /proc/self/fd/N names. One
    lookup in C instead of os.path.realpath's lstat per component in Python, which cost a
    third of an HTTP request for a small file (measured, bench/http). Raises OSError as the
    lookup does (missing, loop, permission)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc mounted: the slow way
            return os.path.realpath(path, strict=True)
    finally:
        os.close(fd)


def resolve_clean(root: Path, path: CleanPath) -> Path:
    """The real path of an already clean `path` under `root`: an existing regular file or directory."""
    try:
        real_root = real_path(str(root))
        real = real_path(os.path.join(real_root, *path.parts))
    except FileNotFoundError:
        raise Missing("not found") from None
    except OSError as exc:  # loops, permission
        raise Missing(exc.strerror or str(exc)) from None
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise OutsideRoot("leads outside the root")
    return Path(real)


def resolve(root: Path, name: str) -> Path:
    """The real path of wire name `name` under `root` (clean_path, then resolve_clean)."""
    return resolve_clean(root, clean_path(name))


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The content of a regular file, read without ever blocking on a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise Missing(f"{path.name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(f"{path.name} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise Refused(f"{path.name} is larger than {limit} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
