"""Names off the wire resolved under a root; the TFTP file cache; the log throttle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootd.files import Missing, Refused, resolve
from bootd.logs import Throttle
from bootd.tftp.server import FileCache, TooLarge, netascii


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "images").mkdir(parents=True)
    (r / "images" / "k").write_bytes(b"kernel")
    (r / "out").symlink_to(tmp_path)
    (r / "loop").symlink_to("loop")
    return r


@pytest.mark.parametrize(("name", "error"), [
    ("../x", Refused), ("images/../../x", Refused), ("images\\..\\..\\x", Refused), ("./images/k", Refused),
    ("images//k", Refused), ("a\x7fb", Refused), ("", Refused), ("x" * 2000, Refused),
    ("out", Refused), ("loop", Missing), ("nope", Missing),
])
def test_resolve_refuses(root: Path, name: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve(root, name)


@pytest.mark.parametrize("name", ["images/k", "/images/k", "\\images\\k"])
def test_resolve_accepts_root_relative_names(root: Path, name: str) -> None:
    assert resolve(root, name) == (root / "images" / "k").resolve()


def test_cache_reloads_a_replaced_file_and_keeps_the_budget(root: Path) -> None:
    cache = FileCache(root, budget=100)
    assert cache.load("images/k") == b"kernel"
    path = root / "images" / "k"
    tmp = path.with_name("k.new")
    tmp.write_bytes(b"kernel 2")
    os.replace(tmp, path)
    assert cache.load("images/k") == b"kernel 2"
    (root / "a").write_bytes(b"a" * 60)
    (root / "b").write_bytes(b"b" * 60)
    cache.load("a")
    cache.load("b")
    assert cache._size <= 100
    (root / "c").write_bytes(b"c" * 101)
    with pytest.raises(TooLarge):
        cache.load("c")
    with pytest.raises(Refused):
        cache.load("images")


def test_netascii() -> None:
    assert netascii(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"


def test_throttle_logs_once_per_interval_per_key() -> None:
    t = Throttle(interval=10.0, keys=2)
    assert t(0.0, "peer", "why")
    assert not t(5.0, "peer", "why")
    assert t(5.0, "peer", "other")
    assert t(10.0, "peer", "why")
    assert t(11.0, "x", "y")  # over the key limit: forgets, never grows without bound
