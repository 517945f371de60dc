"""Root works in the state directory as its owner.

The service runs as the `bootd` user, which owns the state directory (the
unit's StateDirectory=). An operator typing `bootd ...` as root must not leave
files there the service cannot read or write: a root-owned 0600 secret key,
database, WAL, loader or imported image stops or breaks the daemon. So when
bootd starts as root and the state directory belongs to another user, it
becomes that user before it touches the directory: its uid, the directory's
gid and the user's supplementary groups. Every file any command creates is then
the service's, with the modes the service itself would give it (0600 secrets
under the CLI's umask 077).

Why switching user rather than chowning each file after creating it: one place
covers every writer (keys, SQLite and its -wal/-shm, loaders, imported media,
the discovery image), including writers added later; a command killed halfway
leaves no root-owned file behind; and root never writes into a directory a
less privileged user controls, where a symlink planted by a compromised daemon
(`secret.key -> /etc/shadow`) would turn a root chown or write into theirs.
The price: as root, a command can only read what the service user can read
(an ISO under /root must be moved first), which is also what the service
will need at run time.

`bootd serve` keeps the capabilities the unit grants (CAP_NET_BIND_SERVICE,
CAP_NET_RAW; see systemd/bootd.service) across the switch: PR_SET_KEEPCAPS
(prctl(2)) keeps the permitted set through setresuid, then capset(2) narrows
it to those two and makes them effective, so a daemon started by hand as root
runs as the service does. A state directory owned by root, or not there yet,
changes nothing: systemd hands a root-owned StateDirectory= to the service
user (recursively) when the unit starts.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from bootd.errors import BootdError


class PrivilegeError(BootdError):
    pass


class Capability(IntEnum):
    """Capability numbers from linux/capability.h (only those bootd uses)."""

    NET_BIND_SERVICE = 10
    NET_RAW = 13


# What `bootd serve` needs, measured (README, "Installing the service"): the
# unit's AmbientCapabilities= lists the same two.
SERVE_CAPABILITIES = frozenset({Capability.NET_BIND_SERVICE, Capability.NET_RAW})

_PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    name: str  # the user name, or the number when the uid has no passwd entry
    groups: tuple[int, ...]


def state_owner(state_dir: Path) -> Owner | None:
    """The owner to become: None unless running as root and another user owns `state_dir`."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PrivilegeError(f"cannot examine the state directory {state_dir}: {exc.strerror}") from None
    if st.st_uid == 0:
        return None
    try:
        user = pwd.getpwuid(st.st_uid)
    except KeyError:
        return Owner(st.st_uid, st.st_gid, str(st.st_uid), ())
    return Owner(st.st_uid, st.st_gid, user.pw_name, tuple(os.getgrouplist(user.pw_name, st.st_gid)))


def become(owner: Owner, keep: Collection[Capability] = ()) -> None:
    """Switch this process (no threads may run yet) to `owner`, keeping only `keep`."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        if keep and libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        os.setgroups(list(owner.groups))
        os.setresgid(owner.gid, owner.gid, owner.gid)
        os.setresuid(owner.uid, owner.uid, owner.uid)
        if keep:
            _set_capabilities(libc, keep)
            libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to {owner.name}, the owner of the state directory: "
                             f"{exc.strerror}") from None


def _set_capabilities(libc: ctypes.CDLL, keep: Collection[Capability]) -> None:
    """Permitted and effective = `keep`, inheritable empty: what KEEPCAPS held, narrowed."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # version 3: two 32-bit words per set
    for cap in keep:
        word, bit = divmod(int(cap), 32)
        data[word].effective |= 1 << bit
        data[word].permitted |= 1 << bit
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def become_state_owner(state_dir: Path, config: Path, keep: Collection[Capability] = ()) -> Owner | None:
    """As root, become the owner of `state_dir` (module docstring); the owner found, if any.

    The config must stay readable after the switch (the daemon re-reads it on
    SIGHUP, and the service reads it as the same user): if it is not, say how to fix it.
    """
    owner = state_owner(state_dir)
    if owner is None:
        return None
    become(owner, keep)
    if not os.access(config, os.R_OK):
        group = _group_name(owner.gid)
        raise PrivilegeError(f"{owner.name} (the owner of {state_dir}, as whom bootd runs) cannot read "
                             f"{config}; give it to the group: chgrp {group} {config} && chmod 0640 {config}")
    return owner


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
