"""Names off the wire cleaned once and resolved under a root; the TFTP file cache; the log throttle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootd.files import BadName, CleanPath, Missing, NotRegular, OutsideRoot, Refused, clean_path, resolve
from bootd.logs import Throttle
from bootd.tftp.cache import FileCache, TooLarge, netascii


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "images").mkdir(parents=True)
    (r / "images" / "k").write_bytes(b"kernel")
    (r / "out").symlink_to(tmp_path)
    (r / "loop").symlink_to("loop")
    return r


@pytest.mark.parametrize(("name", "error"), [
    ("../x", BadName), ("images/../../x", BadName), ("images\\..\\..\\x", BadName), ("./images/k", BadName),
    ("images//k", BadName), ("a\x7fb", BadName), ("", BadName), ("x" * 2000, BadName),
    ("a/" + "x" * 256, BadName), ("images/k/.", BadName), ("images/k/", BadName), ("tab\there", BadName),
    ("out", OutsideRoot), ("loop", Missing), ("nope", Missing),
])
def test_resolve_refuses(root: Path, name: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve(root, name)


@pytest.mark.parametrize("name", ["images/k", "/images/k", "\\images\\k", "//images/k"])
def test_resolve_accepts_root_relative_names(root: Path, name: str) -> None:
    assert resolve(root, name) == (root / "images" / "k").resolve()


@pytest.mark.parametrize(("name", "text"), [
    ("/grub/grub.cfg", "grub/grub.cfg"), ("pxelinux.cfg\\01-aa-bb", "pxelinux.cfg/01-aa-bb"),
    ("undionly.kpxe", "undionly.kpxe"), ("a/" + "x" * 255, "a/" + "x" * 255),
])
def test_clean_path_is_the_one_normal_form(name: str, text: str) -> None:
    path = clean_path(name)
    assert path.text == str(path) == text
    assert clean_path(path.text) == path  # cleaning is idempotent: nobody needs to do it twice


def test_hostile_names_are_all_bad_names() -> None:
    for name in ("..", "a/../b", "a\\.\\b", "a\x00b", "\x1b[31m", "/", "a//b"):
        with pytest.raises(BadName):
            clean_path(name)
    assert issubclass(BadName, Refused)


def test_cache_takes_the_clean_path(root: Path) -> None:
    cache = FileCache(root, budget=100)
    assert cache.load(CleanPath(("images", "k"))) == b"kernel"
    with pytest.raises(NotRegular):
        cache.load(clean_path("images"))
    with pytest.raises(OutsideRoot):
        cache.load(clean_path("out"))


def test_cache_reloads_a_replaced_file_and_keeps_the_budget(root: Path) -> None:
    cache = FileCache(root, budget=100)
    assert cache.load(clean_path("images/k")) == b"kernel"
    path = root / "images" / "k"
    tmp = path.with_name("k.new")
    tmp.write_bytes(b"kernel 2")
    os.replace(tmp, path)
    assert cache.load(clean_path("images/k")) == b"kernel 2"
    (root / "a").write_bytes(b"a" * 60)
    (root / "b").write_bytes(b"b" * 60)
    cache.load(clean_path("a"))
    cache.load(clean_path("b"))
    assert cache.size <= 100
    (root / "c").write_bytes(b"c" * 101)
    with pytest.raises(TooLarge):
        cache.load(clean_path("c"))
    with pytest.raises(Refused):
        cache.load(clean_path("images"))


def test_netascii() -> None:
    assert netascii(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"


def test_netascii_form_is_converted_once_and_shared(root: Path) -> None:
    # Converting per transfer on the event loop stalled it 45 ms per 20 MiB file
    # (issue 11, 3.4): the cache converts once, in the caller's worker thread.
    text = b"line\n" * 1000 + b"cr\r"
    (root / "t.txt").write_bytes(text)
    cache = FileCache(root, budget=1 << 20)
    first = cache.load(clean_path("t.txt"), True)
    assert first == netascii(text) and len(first) == len(text) + 1001
    assert cache.load(clean_path("t.txt"), True) is first
    assert cache.load(clean_path("t.txt")) == text  # the octet form is its own entry
    assert cache.size == len(text) + len(first)
    (root / "t.txt").write_bytes(b"new\n")
    assert cache.load(clean_path("t.txt"), True) == b"new\r\n"


def test_netascii_form_over_the_budget_is_too_large(root: Path) -> None:
    (root / "n").write_bytes(b"\n" * 60)
    cache = FileCache(root, budget=100)
    assert cache.load(clean_path("n")) == b"\n" * 60
    with pytest.raises(TooLarge, match="netascii"):
        cache.load(clean_path("n"), True)


def test_throttle_logs_once_per_interval_per_key() -> None:
    t = Throttle(interval=10.0, keys=2)
    assert t(0.0, "peer", "why")
    assert not t(5.0, "peer", "why")
    assert t(5.0, "peer", "other")
    assert t(10.0, "peer", "why")
    assert t(11.0, "x", "y")  # over the key limit: forgets, never grows without bound
