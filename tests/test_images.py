"""The initramfs writer: newc entries the kernel (and cpio) read back, byte for byte reproducible."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

from bootd.images.build import _modinfo_aliases, _modinfo_depends
from bootd.images.cpio import archive


def test_archive_round_trips_through_cpio(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF" + bytes(range(256)) * 3)
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "init").write_text("#!/bin/sh\necho hi\n")
    one = archive(root, devices={"dev/console": (0o600, 5, 1)})
    os.utime(root / "init", (1, 1))  # mtimes on disk do not matter
    assert archive(root, devices={"dev/console": (0o600, 5, 1)}) == one
    out = tmp_path / "out"
    out.mkdir()
    listing = subprocess.run(["busybox", "cpio", "-t"], input=gzip.decompress(one), capture_output=True,
                             check=True).stdout.decode().split()
    assert listing == ["bin", "bin/busybox", "bin/sh", "init", "dev/console"]
    subprocess.run(["busybox", "cpio", "-i", "-d"], input=gzip.decompress(one), cwd=out, check=True,
                   capture_output=True)
    assert (out / "bin" / "busybox").read_bytes() == (root / "bin" / "busybox").read_bytes()
    assert os.readlink(out / "bin" / "sh") == "busybox"


def test_module_dependencies_read_from_modinfo(tmp_path: Path) -> None:
    ko = tmp_path / "virtio_net.ko"
    ko.write_bytes(b"\x7fELF...\0license=GPL\0depends=net_failover,virtio_ring\0vermagic=6.1\0")
    assert _modinfo_depends(ko) == ["net_failover", "virtio_ring"]
    ko.write_bytes(b"\0depends=\0")
    assert _modinfo_depends(ko) == []


def test_module_aliases_read_from_modinfo(tmp_path: Path) -> None:
    ko = tmp_path / "virtio_net.ko"
    ko.write_bytes(b"\x7fELF\0alias=virtio:d00000001v*\0depends=virtio_ring\0alias=pci:v00001AF4d*\0"
                   b"alias=virtio:d00000001v*\0")
    assert _modinfo_aliases(ko) == ["pci:v00001AF4d*", "virtio:d00000001v*"]  # sorted, once each
    ko.write_bytes(b"\0license=GPL\0")
    assert _modinfo_aliases(ko) == []
