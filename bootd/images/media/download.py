"""Downloading media the operator named by URL, resuming with Range.

Theory of operation: only http:// and https:// URLs given on the command line
are fetched (nothing is looked up on its own). The file goes to
<cache>/<first 16 hex of SHA-256(URL)>/NAME.part and is renamed to NAME when
complete, so a finished download is reused by the next import of the same
URL and an interrupted one is continued: RFC 9110 section 14.2, a request with
`Range: bytes=N-` answered 206 with `Content-Range: bytes N-...` is appended;
a 200 (a server without ranges) starts over; 416 with `bytes */N` equal to
what is there means it was complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bootd import __version__
from bootd.files import Refused, clean_path
from bootd.images.media.progress import Progress
from bootd.images.media.source import MediaError

CHUNK = 1 << 20
TIMEOUT = 60.0
Opener = Callable[..., Any]  # urllib.request.urlopen's shape


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def file_name(url: str) -> str:
    tail = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])
    try:
        return clean_path(tail).text if tail and "/" not in tail else "download"
    except Refused:
        return "download"


def download(url: str, cache: Path, progress: Progress, opener: Opener = urllib.request.urlopen) -> Path:
    """The local copy of url, downloaded or resumed as needed."""
    if not is_url(url):
        raise MediaError(f"{url}: only http:// and https:// URLs are downloaded")
    where = cache / hashlib.sha256(url.encode()).hexdigest()[:16]
    final = where / file_name(url)
    if final.is_file():
        progress.note(f"{url}: already downloaded to {final}")
        return final
    where.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"bootd/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked above
    try:
        response = opener(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        total = _complete_size(exc.headers.get("Content-Range", "")) if exc.code == 416 else None
        if total is not None and total == have:
            os.replace(part, final)
            return final
        raise MediaError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise MediaError(f"{url}: cannot download ({getattr(exc, 'reason', exc)})") from None
    with response:
        status = response.status
        length = int(response.headers.get("Content-Length") or 0)
        start = 0
        if status == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != have:
                raise MediaError(f"{url}: asked for bytes from {have}, the server sent from {start}")
        elif status != 200:
            raise MediaError(f"{url}: HTTP {status}")
        if start:
            progress.note(f"{url}: resuming at {start} bytes")
        progress.begin(f"download {final.name}", start + length)
        progress.skip(start)
        with part.open("r+b" if start else "wb") as out:
            out.truncate(start)
            out.seek(start)
            try:
                while chunk := response.read1(CHUNK):  # what has arrived: progress, and on disk
                    out.write(chunk)
                    progress.advance(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise MediaError(f"{url}: download broke off after {out.tell()} bytes ({exc}); "
                                 "run the import again to resume") from None
            if length and out.tell() != start + length:
                raise MediaError(f"{url}: got {out.tell()} of {start + length} bytes; "
                                 "run the import again to resume")
            out.flush()
            os.fsync(out.fileno())
        progress.end()
    os.replace(part, final)
    return final


def _range_start(header: str) -> int:
    m = re.match(r"^\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$", header)
    return int(m.group(1)) if m else -1


def _complete_size(header: str) -> int | None:
    m = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", header)
    return int(m.group(1)) if m else None
