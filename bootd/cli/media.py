"""`bootd images import`: install media (ISO, netboot tarball, tree or URL) into a profile.

The work is bootd.images.media's; this edge turns the command line into a
Request, shows progress on stdout (a redrawn bar on a terminal, plain lines
otherwise) and prints what was registered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bootd.config import Config
from bootd.model.profiles import Family


def add_parser(isub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    imp = isub.add_parser("import", parents=[common],
                          help="turn install media (ISO, netboot tarball, tree, http(s) URL) into a profile")
    imp.add_argument("source", metavar="ISO|DIR|URL")
    imp.add_argument("--profile", required=True, metavar="NAME", help="the profile to register")
    imp.add_argument("--family", choices=[f.value for f in Family],
                     help="the installer family (default: guessed from the media's layout)")
    imp.add_argument("--template", help="answer-file template (default: the family's built-in one)")
    imp.add_argument("--tree", metavar="URL",
                     help="install tree or mirror URL (default: the imported tree or ISO, if any)")
    imp.add_argument("--checksums", metavar="FILE",
                     help="checksum list for the media (default: SHA256SUMS, MD5SUMS or CHECKSUM beside it)")
    imp.add_argument("--replace", action="store_true", help="import again over an imported profile")


def run(args: argparse.Namespace, config: Config) -> int:
    # Imported here: every other command starts without loading pycdlib.
    from bootd.images.media.progress import Progress
    from bootd.images.media.service import Request, import_media

    request = Request(args.source, args.profile, Family(args.family) if args.family else None,
                      args.template, args.tree, Path(args.checksums) if args.checksums else None,
                      args.replace)
    progress = Progress(sys.stdout, sys.stdout.isatty())
    done = import_media(config, request, progress)
    p = done.profile
    print(f"profile {p.name} ({p.family.value}): kernel {p.kernel}, initrd {p.initrd}, "
          f"tree {p.tree_url(config.http_base)}")
    print(f"media in {done.directory}, profile in {done.profile_file}, "
          f"{done.plan.total} bytes in {done.seconds:.1f} s{' (resumed)' if done.resumed else ''}")
    if done.plan.tree is None and not p.tree:
        print(f"note: the media holds no package tree; give the installer a mirror with --tree URL "
              f"or tree = \"URL\" in [profiles.{p.name}]")
    print("a running daemon serves the profile after `systemctl reload bootd`")
    return 0
