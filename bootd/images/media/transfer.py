"""Copying a plan into place: resumable, checked, atomic.

Theory of operation: everything is copied into a staging directory next to
the target (<tftp root>/images/.NAME.partial, same filesystem, so the final
rename is atomic), never into the target itself. The target appears in one
rename, after every file is complete, checked and fsynced, and the profile
file is written only after that (service.py): a half import is never a
profile, and never half of a served tree.

Resume: a file is copied into "PATH.part" and renamed to PATH when complete
and checked; the staging journal then gets "SHA256 SIZE PATH" (fsynced), so a
re-run skips journalled files that still have their size, and continues a
".part" from its length (the bytes already there are hashed again, not
re-read from the media). `.bootd-source` names the media the staging came
from; staging from other media is thrown away. The journal's SHA-256 sums end
up in the profile directory as bootd-media.sha256 (`sha256sum -c` reads it):
the recorded checksums of what bootd serves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bootd.images.media.layout import Copy, Digest, Plan
from bootd.images.media.progress import Progress
from bootd.images.media.source import MediaError, Medium

CHUNK = 1 << 20
PART = ".part"
JOURNAL = ".bootd-journal"
SOURCE = ".bootd-source"
MANIFEST = "bootd-media.sha256"


def staging_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial")


def prepare(target: Path, identity: str) -> tuple[Path, bool]:
    """The staging directory for target, and whether an earlier run left work in it."""
    staging = staging_of(target)
    mark = staging / SOURCE
    if staging.exists() and (not mark.is_file() or mark.read_text() != identity):
        shutil.rmtree(staging)
    resumed = staging.exists()
    staging.mkdir(parents=True, exist_ok=True)
    if not resumed:
        mark.write_text(identity)
        _fsync_file(mark)
    return staging, resumed


def _journal(staging: Path) -> dict[str, tuple[str, int]]:
    done: dict[str, tuple[str, int]] = {}
    path = staging / JOURNAL
    if path.is_file():
        for line in path.read_text().splitlines():
            sha, size, dest = ([*line.split(" ", 2), "", ""])[:3]
            if len(sha) == 64 and size.isdigit() and dest:
                done[dest] = (sha, int(size))
    return done


@contextlib.contextmanager
def _source(medium: Medium, item: Copy, offset: int) -> Iterator[IO[bytes]]:
    if item.source is not None:
        with medium.open(item.source, offset) as f:
            yield f
        return
    assert medium.container is not None  # a plan copies the container only for an image
    with medium.container.open("rb") as f:
        f.seek(offset)
        yield f


def _copy(medium: Medium, item: Copy, staging: Path, progress: Progress) -> str:
    dest = staging / item.dest
    part = dest.with_name(dest.name + PART)
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if offset > item.size:
        offset = 0
    record = hashlib.sha256()
    check = hashlib.new(item.expect.algorithm) if item.expect is not None else None
    with part.open("r+b" if offset else "wb") as out:
        out.truncate(offset)
        while out.tell() < offset:  # bytes from an earlier run: hash them again from disk
            chunk = out.read(min(CHUNK, offset - out.tell()))
            record.update(chunk)
            if check is not None:
                check.update(chunk)
        progress.skip(offset)
        with _source(medium, item, offset) as src:
            remaining = item.size - offset
            while remaining:
                chunk = src.read(min(CHUNK, remaining))
                if not chunk:
                    raise MediaError(f"{medium.name}: {item.source or 'the image'} ends after "
                                     f"{item.size - remaining} of its {item.size} bytes (truncated media)")
                out.write(chunk)
                record.update(chunk)
                if check is not None:
                    check.update(chunk)
                progress.advance(len(chunk))
                remaining -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if check is not None and item.expect is not None and check.hexdigest() != item.expect.hex:
        part.unlink()  # a re-run fetches it again rather than trusting it
        raise MediaError(f"{medium.name}: {item.source or Path(medium.name).name} has "
                         f"{Digest(item.expect.algorithm, check.hexdigest())}, the media's list says "
                         f"{item.expect}")
    os.replace(part, dest)
    return record.hexdigest()


def copy_plan(plan: Plan, medium: Medium, staging: Path, progress: Progress) -> dict[str, str]:
    """Every copy of the plan in staging (skipping those done before): dest -> SHA-256."""
    done = _journal(staging)
    recorded: dict[str, str] = {}
    with (staging / JOURNAL).open("a") as journal:
        for item in plan.copies:
            previous = done.get(item.dest)
            dest = staging / item.dest
            if previous is not None and previous[1] == item.size and dest.is_file() \
                    and dest.stat().st_size == item.size:
                progress.skip(item.size)
                recorded[item.dest] = previous[0]
                continue
            recorded[item.dest] = _copy(medium, item, staging, progress)
            journal.write(f"{recorded[item.dest]} {item.size} {item.dest}\n")
            journal.flush()
            os.fsync(journal.fileno())
    return recorded


def verify(path: Path, expect: Digest, progress: Progress) -> None:
    """Media whose own checksum is listed alongside: read once before trusting its contents."""
    digest = hashlib.new(expect.algorithm)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            progress.advance(len(chunk))
    if digest.hexdigest() != expect.hex:
        raise MediaError(f"{path}: {Digest(expect.algorithm, digest.hexdigest())}, the checksum list "
                         f"says {expect}")


def commit(staging: Path, target: Path, recorded: dict[str, str], owner: tuple[int, int] | None) -> None:
    """Staging becomes target in one rename; files world-readable (they are served to
    anyone on the admin network anyway), owned by `owner` when given."""
    manifest = staging / MANIFEST
    manifest.write_text("".join(f"{sha}  {dest}\n" for dest, sha in sorted(recorded.items())))
    _fsync_file(manifest)
    for name in (JOURNAL, SOURCE):
        (staging / name).unlink(missing_ok=True)
    for top, dirs, files in os.walk(staging, topdown=False):
        for n in files:
            _settle(Path(top) / n, 0o644, owner)
        for n in dirs:
            _settle(Path(top) / n, 0o755, owner)
        _fsync_dir(Path(top))
    _settle(staging, 0o755, owner)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _settle(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    if path.is_symlink():
        return
    path.chmod(mode)
    if owner is not None:
        os.chown(path, *owner)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
