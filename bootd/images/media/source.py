"""Install media as a read-only set of files: a directory, an ISO image or a tarball.

Theory of operation: `open_medium(path)` looks at what it is given and returns
a `Medium`: every regular file as a clean relative path with its size, and a
way to read one from an offset (so a resumed copy continues where it stopped).

- A directory is walked without following symlinks out of it.
- An ISO is read with pycdlib, never mounted (no root, no loop devices, and a
  corrupt image cannot reach the kernel's filesystem code). Names come from the
  richest namespace the image carries: Rock Ridge (POSIX names, symlinks
  marked), then UDF (ECMA-167, full Unicode names), then Joliet (UCS-2, at most
  64 characters), then bare ISO 9660 (upper case, ";1" versions, lowered here).
  An image is sniffed first: ECMA-119 section 8 puts the volume descriptors
  from sector 16 (byte 32768), each starting with a type byte and "CD001"
  (ECMA-167 uses "BEA01"/"NSR02"/"NSR03" there).
- A tar archive (Debian's and Ubuntu's netboot.tar.gz) is read with tarfile;
  links and devices are skipped, and names are cleaned like wire names.

Anything else, or an image pycdlib cannot parse, is one `MediaError` that
says what was looked for.
"""

from __future__ import annotations

import contextlib
import enum
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from bootd.errors import BootdError
from bootd.files import Refused, clean_path

ISO_DESCRIPTORS = 16 * 2048
ISO_MAGICS = (b"CD001", b"BEA01", b"NSR02", b"NSR03")


class MediaError(BootdError):
    """The media cannot be imported; the message says what was looked for."""


class Kind(enum.StrEnum):
    DIRECTORY = "directory"
    ISO = "ISO image"
    TAR = "tar archive"


class Medium(Protocol):
    """Regular files of install media by clean relative path, readable from an offset."""

    name: str  # for messages: the path given
    kind: Kind
    container: Path | None  # the image or archive file itself (None for a directory)

    def files(self) -> dict[str, int]:
        """Clean relative path -> size in bytes."""
        ...

    def open(self, path: str, offset: int = 0) -> contextlib.AbstractContextManager[IO[bytes]]:
        """The file, positioned at offset."""
        ...

    def close(self) -> None: ...


def _clean(name: str) -> str | None:
    try:
        return clean_path(name).text
    except Refused:
        return None


@dataclass
class DirMedium:
    root: Path
    name: str
    kind: Kind = Kind.DIRECTORY
    container: Path | None = None

    def files(self) -> dict[str, int]:
        found: dict[str, int] = {}
        real_root = self.root.resolve()
        for top, _dirs, names in os.walk(self.root):
            for n in names:
                path = Path(top) / n
                # A symlink counts when it stays inside the media (Debian's netboot
                # tree links pxelinux.0 into debian-installer/); one out of it does not.
                if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                    continue
                if not path.is_file():
                    continue
                rel = _clean(path.relative_to(self.root).as_posix())
                if rel is not None:
                    found[rel] = path.stat().st_size
        return found

    @contextlib.contextmanager
    def open(self, path: str, offset: int = 0) -> Iterator[IO[bytes]]:
        with (self.root / path).open("rb") as f:
            f.seek(offset)
            yield f

    def close(self) -> None:
        pass


class IsoMedium:
    """An ISO 9660 / UDF image read through pycdlib."""

    kind = Kind.ISO

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.container: Path | None = path
        self._iso = pycdlib.PyCdlib()
        try:
            self._iso.open(str(path))
        except (PyCdlibException, OSError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise MediaError(f"{path}: not a readable ISO 9660/UDF image ({_short(exc)})") from None
        # ECMA-119 8.4.8/8.4.12: the volume's size in logical blocks. A shorter file was
        # cut off (an interrupted download): its last files would read as garbage.
        volume = self._iso.pvd.space_size * self._iso.pvd.log_block_size
        size = path.stat().st_size
        if size < volume:
            self._iso.close()
            raise MediaError(f"{path}: truncated ISO image: the volume descriptor says {volume} bytes, "
                             f"the file has {size}")
        # (namespace keyword for pycdlib, whether to lower-case and strip ";1")
        if self._iso.has_rock_ridge():
            self._ns, self._plain = "rr_path", False
        elif self._iso.has_udf():
            self._ns, self._plain = "udf_path", False
        elif self._iso.has_joliet():
            self._ns, self._plain = "joliet_path", False
        else:
            self._ns, self._plain = "iso_path", True
        self._where: dict[str, str] = {}

    @property
    def namespace(self) -> str:
        return {"rr_path": "Rock Ridge", "udf_path": "UDF", "joliet_path": "Joliet",
                "iso_path": "ISO 9660"}[self._ns]

    def files(self) -> dict[str, int]:
        found: dict[str, int] = {}
        try:
            for top, _dirs, names in self._iso.walk(**{self._ns: "/"}):
                for n in names:
                    where = f"{top.rstrip('/')}/{n}"
                    record = self._iso.get_record(**{self._ns: where})
                    rock_ridge = getattr(record, "rock_ridge", None)
                    if rock_ridge is not None and rock_ridge.is_symlink():
                        continue
                    rel = _clean(_plain_name(where) if self._plain else where)
                    if rel is not None:
                        found[rel] = record.get_data_length()
                        self._where[rel] = where
        except (PyCdlibException, OSError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise MediaError(f"{self.name}: corrupt {self.namespace} directory ({_short(exc)})") from None
        return found

    @contextlib.contextmanager
    def open(self, path: str, offset: int = 0) -> Iterator[IO[bytes]]:
        if not self._where:
            self.files()
        try:
            with self._iso.open_file_from_iso(**{self._ns: self._where[path]}) as f:
                f.seek(offset)
                yield f
        except PyCdlibException as exc:
            raise MediaError(f"{self.name}: cannot read {path} ({_short(exc)})") from None

    def close(self) -> None:
        with contextlib.suppress(PyCdlibException):
            self._iso.close()


class TarMedium:
    kind = Kind.TAR

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.container: Path | None = path
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self._members = {}
            for m in self._tar.getmembers():
                name = m.name
                while name.startswith("./"):  # Debian's netboot.tar.gz: "./debian-installer/..."
                    name = name[2:]
                rel = _clean(name)
                if m.isreg() and rel is not None:
                    self._members[rel] = m
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise MediaError(f"{path}: corrupt tar archive ({_short(exc)})") from None

    def files(self) -> dict[str, int]:
        return {rel: m.size for rel, m in self._members.items()}

    @contextlib.contextmanager
    def open(self, path: str, offset: int = 0) -> Iterator[IO[bytes]]:
        f = self._tar.extractfile(self._members[path])
        if f is None:
            raise MediaError(f"{self.name}: {path} is not a regular file")
        with f:
            f.seek(offset)
            yield f

    def close(self) -> None:
        self._tar.close()


def _plain_name(where: str) -> str:
    """ISO 9660 level 1-3 names as a person writes them: "/CASPER/VMLINUZ.;1" -> "casper/vmlinuz"."""
    return "/".join(part.split(";")[0].rstrip(".") for part in where.split("/")).lower()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def is_iso(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(ISO_DESCRIPTORS)
        head = f.read(6)
    return len(head) == 6 and head[1:6] in ISO_MAGICS


def open_medium(path: Path) -> Medium:
    """The media at path; MediaError when it is none of the kinds bootd reads."""
    if path.is_dir():
        return DirMedium(path, str(path))
    try:
        if is_iso(path):
            return IsoMedium(path)
        if tarfile.is_tarfile(path):
            return TarMedium(path)
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise MediaError(f"{path}: cannot read ({_short(exc)})") from None
    raise MediaError(f"{path}: not install media: no ISO 9660/UDF volume descriptor at byte "
                     f"{ISO_DESCRIPTORS} and not a tar archive")
