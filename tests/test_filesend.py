"""HTTP file sending (bootd.http.filesend) through the /images/ and /tftp/ routes: what an
installer, iPXE or a caching proxy sees, for small files (sent with the headers) and large
ones (sendfile), and what is refused."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bootd.config import load_config
from bootd.http.boot import SETTINGS, Settings, images, tftp_root
from bootd.http.filesend import INLINE

SMALL = os.urandom(5000)
LARGE = os.urandom(INLINE * 4 + 123)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    state = tmp_path / "state"
    (state / "tftp" / "images").mkdir(parents=True)
    (state / "tftp" / "images" / "script.ipxe").write_bytes(SMALL)
    (state / "tftp" / "images" / "initrd.img").write_bytes(LARGE)
    conf = tmp_path / "bootd.toml"
    conf.write_text(f'[server]\nadmin_address = "127.0.0.1"\nstate_dir = "{state}"\n'
                    '[services]\ndhcp = false\ntftp = false\ndns = false\n')
    app = web.Application()
    app[SETTINGS] = Settings(load_config(conf))
    app.router.add_get("/images/{path:.+}", images)
    app.router.add_get("/tftp/{path:.+}", tftp_root)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize(("name", "content"), [("script.ipxe", SMALL), ("initrd.img", LARGE)])
async def test_whole_file_head_and_ranges(client: TestClient[web.Request, web.Application], name: str,
                                          content: bytes) -> None:
    url = f"/images/{name}"
    whole = await client.get(url)
    assert whole.status == 200 and await whole.read() == content
    assert whole.headers["Content-Length"] == str(len(content))
    assert whole.headers["Accept-Ranges"] == "bytes"
    head = await client.head(url)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(content))
    assert await head.read() == b""
    size = len(content)
    cases = {"bytes=100-199": (100, 200), "bytes=-300": (size - 300, size),
             f"bytes={size - 10}-": (size - 10, size), f"bytes=0-{size + 1000}": (0, size)}
    for rng, (start, stop) in cases.items():
        part = await client.get(url, headers={"Range": rng})
        assert part.status == 206, rng
        assert part.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}", rng
        assert await part.read() == content[start:stop], rng
    for bad in (f"bytes={size}-", "bytes=5-2", "pages=1-2"):
        refused = await client.get(url, headers={"Range": bad})
        assert refused.status == 416, bad
        assert refused.headers["Content-Range"] == f"bytes */{size}"


async def test_conditional_requests(client: TestClient[web.Request, web.Application]) -> None:
    first = await client.get("/images/initrd.img")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert (await client.get("/images/initrd.img", headers={"If-None-Match": etag})).status == 304
    assert (await client.get("/images/initrd.img", headers={"If-Modified-Since": modified})).status == 304
    assert (await client.get("/images/initrd.img", headers={"If-Match": '"other"'})).status == 412
    assert (await client.get("/images/initrd.img", headers={"If-Match": etag})).status == 200
    # If-Range with a date before the file changed: the whole file, not the range.
    old = await client.get("/images/initrd.img", headers={"Range": "bytes=0-9",
                                                          "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert old.status == 200 and len(await old.read()) == len(LARGE)


async def test_refusals(client: TestClient[web.Request, web.Application], tmp_path: Path) -> None:
    root = tmp_path / "state" / "tftp"
    os.mkfifo(root / "images" / "fifo")  # would block a reader forever: refused, never opened for reading
    (root / "images" / "out").symlink_to(tmp_path / "bootd.toml")
    (root / "images" / "dir").mkdir()
    for path, status in [("/images/fifo", 403), ("/images/out", 403), ("/images/dir", 403),
                         ("/images/nope", 404), ("/images/%2e%2e/%2e%2e/bootd.toml", (403, 404)),
                         ("/tftp/images/script.ipxe", 200)]:
        resp = await client.get(path)
        assert resp.status in (status if isinstance(status, tuple) else (status,)), path
