"""Shared fixtures: config files, the namespaced lab, and both database backends.

PostgreSQL: one private cluster per test session (Debian's postgresql binaries,
initdb into a temporary directory, listening on 127.0.0.1 at a free port only),
and one fresh database per test. As root, the server runs as the `postgres`
user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from netlab import Lab, cleanup_stale

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_config(state_dir: Path, port: int, extra: str = "") -> str:
    """A config serving only HTTP on loopback: safe to run anywhere."""
    return textwrap.dedent(f"""\
        [server]
        admin_address = "127.0.0.1"
        interfaces = ["lo"]
        state_dir = "{state_dir}"
        [services]
        dhcp = false
        tftp = false
        dns = false
        [http]
        listen = "127.0.0.1:{port}"
        """) + extra


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(port: int | None = None, extra: str = "", name: str = "bootd.toml") -> Path:
        path = tmp_path / name
        path.write_text(loopback_config(tmp_path / "state", port or free_port(), extra))
        return path
    return write


@pytest.fixture
def lab() -> Iterator[Lab]:
    cleanup_stale()
    with Lab() as the_lab:
        yield the_lab


# -- PostgreSQL ---------------------------------------------------------------

def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found; run scripts/setup")
    return Path(found[-1]).parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    bindir = _pg_bindir()
    data = Path(tempfile.mkdtemp(prefix="bootd-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(data, pg.pw_uid, pg.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust",
                    "-U", "postgres", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", opts, "-w",
                    "-t", "60", "-l", str(data / "log"), "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast",
                        "-w", "stop"], check=False, capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


async def _pg_admin(server: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server.replace("postgresql+asyncpg", "postgresql") + "/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'bootd.db'}"
        return
    server: str = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(server, f"CREATE DATABASE {name}"))
    try:
        yield f"{server}/{name}"
    finally:
        asyncio.run(_pg_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def move(repo: Any, name: str, target: Any, who: Any, **kw: Any) -> Any:
    """A lifecycle move by target state and actor kind, through the one lifecycle
    service (tests that walk the state table without a daemon)."""
    from bootd.config import parse_config
    from bootd.lifecycle import Lifecycle

    config = parse_config(loopback_config(Path("/nonexistent/state"), 8080))
    # The repository's clock (a test's fake one), as Repository.transition used.
    return await Lifecycle(config, repo, clock=repo._clock).move(name, target, who, **kw)


@pytest.fixture(autouse=True)
def _keep_umask() -> Iterator[None]:
    """`bootd.cli.main` sets the process umask to 077 (right for a CLI process); tests
    that call it in-process must not leave it to the tests after them."""
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)
