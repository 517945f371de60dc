"""Sending one file already resolved under the TFTP root: one open, conditional GET, Range, sendfile.

Kernels, initrds and ISOs go out by sendfile(2) through loop.sendfile, so the
bytes never pass through Python. What costs is everything around them, per
request, and aiohttp's FileResponse spends it twice: it stats and opens the
file by path again in a worker thread (a second lookup after ours, which a
swap for a FIFO could win) and closes it in another thread hop. On a loaded
core each hop waits for the GIL behind the event loop, which costs more than
the request itself (measured, bench/http: iPXE-script-sized files at ~1,100
requests/s through FileResponse against nginx's ~9,000).

Here the file is opened once, without blocking (O_NONBLOCK; the descriptor's
fstat must be a regular file, so a FIFO or device swapped in after resolve
is refused, never read), and everything after works on that descriptor.
Files up to INLINE bytes (iPXE scripts, configs, GRUB modules) are read and
sent with the headers in one write; larger ones are sent with sendfile from
the same descriptor.

HTTP semantics follow aiohttp's FileResponse, which the tests were written
against (RFC 9110): a strong ETag of mtime and size, Last-Modified;
If-Match/If-Unmodified-Since -> 412, If-None-Match/If-Modified-Since -> 304
(section 13.2.2 order); one byte range (section 14.1.2; a suffix range
"-N" is the last N bytes) -> 206 with Content-Range, an unsatisfiable or
malformed one -> 416 with "bytes */size"; If-Range with a date older than
the file -> the whole file (section 13.1.5). HEAD gets the headers only.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
from pathlib import Path
from typing import BinaryIO

from aiohttp import hdrs, web
from aiohttp.helpers import ETag

from bootd.files import NotRegular

INLINE = 64 * 1024  # at most this much goes out with the headers in one write
FALLBACK_CHUNK = 256 * 1024  # when the transport cannot sendfile (TLS)
OCTET_STREAM = "application/octet-stream"


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An open descriptor of `path` and its fstat; raises NotRegular (FIFO, device, directory)
    and OSError (gone, permission). Never blocks on a FIFO: O_NONBLOCK, then fstat."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(f"{path.name} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _wrap(fd: int) -> BinaryIO:
    """A file object over an open descriptor (loop.sendfile takes one); it does not close `fd`."""
    return open(fd, "rb", buffering=0, closefd=False)


def _etag_matches(etag: str, given: tuple[ETag, ...], *, weak: bool) -> bool:
    return any(e.value == "*" or (e.value == etag and (weak or not e.is_weak)) for e in given)


def _precondition(request: web.Request, st: os.stat_result, etag: str) -> int | None:
    """412 or 304 when a conditional header says so (RFC 9110 section 13.2.2), else None."""
    if_match = request.if_match
    if if_match is not None and not _etag_matches(etag, if_match, weak=False):
        return 412
    unmodified = request.if_unmodified_since
    if unmodified is not None and if_match is None and st.st_mtime > unmodified.timestamp():
        return 412
    none_match = request.if_none_match
    if none_match is not None and _etag_matches(etag, none_match, weak=True):
        return 304
    modified = request.if_modified_since
    if modified is not None and none_match is None and st.st_mtime <= modified.timestamp():
        return 304
    return None


def _byte_range(request: web.Request, size: int, mtime: float) -> tuple[int, int] | None:
    """(offset, count) of the one range asked for, or None for the whole file; raises
    ValueError when the range is malformed or not satisfiable."""
    if_range = request.if_range
    if if_range is not None and mtime > if_range.timestamp():
        return None  # the client's copy is older than the file: send it all
    rng = request.http_range  # ValueError for a malformed or multiple range
    start, end = rng.start, rng.stop
    if start is None:
        return None
    if start < 0 and end is None:  # "-N": the last N bytes
        start = max(start + size, 0)
        count = size - start
    else:
        count = min(end if end is not None else size, size) - start
    if start >= size:
        raise ValueError("range starts past the end")
    return start, count


async def send(request: web.Request, name: str, fd: int, st: os.stat_result) -> web.StreamResponse:
    """The response for GET/HEAD of the regular file open at `fd` (from open_regular), whose
    fstat is `st`, named `name` (its type by extension); closes `fd`."""
    try:
        return await _respond(request, name, fd, st)
    finally:
        os.close(fd)


async def _respond(request: web.Request, name: str, fd: int, st: os.stat_result) -> web.StreamResponse:
    size = st.st_size
    etag = f"{st.st_mtime_ns:x}-{size:x}"
    headers = {hdrs.ETAG: f'"{etag}"', hdrs.ACCEPT_RANGES: "bytes"}
    status = _precondition(request, st, etag)
    if status is not None:
        response = web.Response(status=status, headers=headers)
        response.last_modified = st.st_mtime
        return response
    try:
        span = _byte_range(request, size, st.st_mtime)
    except ValueError:
        return web.Response(status=416, headers={hdrs.CONTENT_RANGE: f"bytes */{size}"})
    offset, count, status = 0, size, 200
    if span is not None:
        offset, count = span
        status = 206
        headers[hdrs.CONTENT_RANGE] = f"bytes {offset}-{offset + count - 1}/{size}"
    headers[hdrs.CONTENT_TYPE] = mimetypes.guess_type(name)[0] or OCTET_STREAM
    head = request.method == hdrs.METH_HEAD
    if count <= INLINE and not head:
        response = web.Response(status=status, body=os.pread(fd, count, offset), headers=headers)
        response.last_modified = st.st_mtime
        return response
    stream = web.StreamResponse(status=status, headers=headers)
    stream.last_modified = st.st_mtime
    stream.content_length = count  # HEAD too: the length a GET would send
    await stream.prepare(request)  # the headers go out now, ahead of the file
    if head:
        await stream.write_eof()
        return stream
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    with _wrap(fd) as fobj:
        try:
            await asyncio.get_running_loop().sendfile(transport, fobj, offset, count)
        except NotImplementedError:  # no sendfile on this transport: read and write
            while count > 0:
                chunk = os.pread(fd, min(FALLBACK_CHUNK, count), offset)
                if not chunk:
                    break
                await stream.write(chunk)
                offset, count = offset + len(chunk), count - len(chunk)
    await stream.write_eof()
    return stream
