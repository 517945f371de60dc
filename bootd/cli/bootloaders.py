"""`bootd images bootloaders` (and the last step of `bootd init`): loaders from Debian packages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bootd.config import Config
from bootd.images.bootloaders import FIX, Action, Report, install
from bootd.images.packages import DebianPackages


def refresh(tftp_root: Path, cache: Path) -> Report:
    return install(tftp_root, DebianPackages(cache.absolute()))


def show(report: Report) -> None:
    for entry, action in report.done:
        print(f"{entry.name}: {action.value} ({entry.package} {entry.version}, {entry.origin}; "
              f"{entry.size} bytes, sha256 {entry.sha256})")
    for name, why in report.failed:
        print(f"bootd: warning: {name} not installed: {why}", file=sys.stderr)
    changed = sum(1 for _, a in report.done if a is not Action.UNCHANGED)
    print(f"{len(report.done)} loader(s) in {report.manifest.parent}, {changed} changed; "
          f"recorded in {report.manifest}")


def run(args: argparse.Namespace, config: Config) -> int:
    """Install or refresh; exit 1 if any loader could not be had."""
    report = refresh(config.tftp_root, args.cache or config.state_dir / "cache")
    show(report)
    return 1 if report.failed else 0


def after_init(state_dir: Path, cache: Path | None) -> None:
    """`bootd init`'s last step. A loader that cannot be had (no network for a download)
    is a warning: the config is written, and `bootd images bootloaders` retries."""
    report = refresh(state_dir / "tftp", cache or state_dir / "cache")
    show(report)
    if report.failed:
        print(f"bootd: warning: run `{FIX}` once the packages can be had", file=sys.stderr)
