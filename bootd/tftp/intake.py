"""What to do with a datagram that arrived on port 69, pure: accept, refuse, or ignore.

RFC 1350 section 4: only RRQ and WRQ open a transfer; a stray DATA or ACK on
the request port is ignored. This server is read-only (WRQ refused), serves
modes octet and netascii (mail is obsolete, RFC 1350), and cleans the file
name once here (files.clean_path): the listener passes the CleanPath to the
policy and to the file cache, which never clean it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from bootd.files import BadName, CleanPath, clean_path
from bootd.tftp import packet as p
from bootd.tftp.refusals import Reason

MODES = ("octet", "netascii")


@dataclass(frozen=True, slots=True)
class Accept:
    request: p.Request
    path: CleanPath

    @property
    def netascii(self) -> bool:
        return self.request.mode == "netascii"


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: Reason
    message: str  # sent to the client in the ERROR packet, and logged
    name: str = "-"  # the name as asked, for the log


def examine(data: bytes) -> Accept | Refuse | None:
    """The listener's decision for one datagram on the request port (None: ignore it)."""
    try:
        req = p.parse(data)
    except p.MalformedPacket as exc:
        return Refuse(Reason.MALFORMED, str(exc))
    if not isinstance(req, p.Request):
        return None
    if req.opcode is p.Opcode.WRQ:
        return Refuse(Reason.READ_ONLY, "this server is read-only", req.filename)
    if req.mode not in MODES:
        return Refuse(Reason.BAD_MODE, f"mode {req.mode!r} not supported", req.filename)
    try:
        path = clean_path(req.filename)
    except BadName as exc:
        return Refuse(Reason.BAD_NAME, str(exc), req.filename)
    return Accept(req, path)
