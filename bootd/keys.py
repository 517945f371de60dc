"""Secrets kept in the state directory: the key that encrypts BMC passwords at
rest, and the operator API token.

Both are created on first use with mode 0600 by an exclusive create (O_EXCL),
so two processes starting together (daemon and CLI) end with one file, and a
half-written file is never read: the content goes to a temporary name first.

An operator may write the API token file themselves, so what is read is checked:
an empty or whitespace file would be an empty token, and an empty token would
open the whole API; a short one can be guessed. The daemon refuses to start
with a token under MIN_API_TOKEN characters (ours are 43: 32 random bytes,
base64url), or with characters a Bearer header cannot carry (RFC 6750 section
2.1: b64token, here any visible ASCII).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from bootd.errors import BootdError


class SecretError(BootdError):
    pass


def read_or_create(path: Path, make: bytes) -> bytes:
    """The file's content, or `make` written to it if it does not exist yet."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(make + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process won the race
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot create {path}: {exc.strerror}") from None


class SecretBox:
    """Symmetric encryption of small secrets (Fernet: AES-128-CBC + HMAC-SHA256)."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError:
            raise SecretError("the secret key file is corrupt (not a Fernet key)") from None

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        return cls(read_or_create(path, Fernet.generate_key()))

    def seal(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            raise SecretError("a stored secret does not decrypt with this key") from None


MIN_API_TOKEN = 32


def api_token(path: Path) -> str:
    """The operator token from `path`, created if missing; SecretError if it is unusable."""
    raw = read_or_create(path, secrets.token_urlsafe(32).encode())
    if not all(0x21 <= b <= 0x7E for b in raw):
        raise SecretError(f"the API token in {path} holds spaces, control or non-ASCII characters; "
                          f"write at least {MIN_API_TOKEN} visible ASCII characters, "
                          "or delete the file and a new token is made")
    if len(raw) < MIN_API_TOKEN:
        what = "is empty" if not raw else f"has {len(raw)} characters"
        raise SecretError(f"the API token in {path} {what}; at least {MIN_API_TOKEN} are needed "
                          "(delete the file and a new token is made)")
    return raw.decode("ascii")


def new_node_token() -> str:
    return secrets.token_urlsafe(32)
