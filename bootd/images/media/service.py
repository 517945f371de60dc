"""`bootd images import`: install media in, a registered profile out.

Theory of operation, in order; each step can fail with one MediaError line and
leaves nothing registered:
1. the profile name is checked, and the profile it would write (family,
   template, tree) is validated by the config's own parser before any byte is
   copied;
2. a URL is downloaded (download.py, resumable) into <state_dir>/cache/media,
   and removed there once imported (the profile's directory holds the media);
3. the media is opened (source.py) and recognised (layout.py); checksum lists
   next to it (or --checksums) are matched to its files, and the image or
   archive itself is verified when one lists it;
4. the plan is copied into staging and renamed into <tftp root>/images/NAME
   (transfer.py: resumable, checked, atomic);
5. only then <state_dir>/profiles/NAME.toml is written (temporary file, fsync,
   rename). The config reads it after the built-ins and before its own
   [profiles.*] tables; a running daemon sees it on its next reload.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bootd.config import Config
from bootd.config.defaults import IMPORTED_PROFILES
from bootd.config.parse import profile_file
from bootd.errors import ConfigError
from bootd.files import Refused, clean_path
from bootd.images.media.download import download, is_url
from bootd.images.media.layout import SUMS_FILES, Digest, Layout, Plan, parse_sums, recognise
from bootd.images.media.progress import Progress
from bootd.images.media.source import Kind, MediaError, Medium, open_medium
from bootd.images.media.transfer import commit, copy_plan, prepare, verify
from bootd.model.profiles import BUILTIN, Family, Profile, valid_name


@dataclass(frozen=True, slots=True)
class Request:
    source: str  # a path (ISO, tarball, directory) or an http(s) URL
    name: str
    family: Family | None = None
    template: str | None = None
    tree: str | None = None       # overrides the tree the media gives (a mirror URL for netboot)
    checksums: Path | None = None  # a checksum list to use instead of looking next to the media
    replace: bool = False


@dataclass(frozen=True, slots=True)
class Imported:
    profile: Profile
    plan: Plan
    directory: Path
    profile_file: Path
    resumed: bool
    seconds: float


def default_template(family: Family) -> str:
    """The built-in answer file of the family (the first built-in profile of it)."""
    return next(p.template for p in BUILTIN.values() if p.family is family)


def profile_text(profile: Profile, source: str, describe: str) -> str:
    """The profile file: a TOML table the config parser reads back (strings as JSON are TOML)."""
    keys = {"family": profile.family.value, "kernel": profile.kernel, "initrd": profile.initrd,
            "tree": profile.tree, "template": profile.template, "extra_args": profile.extra_args}
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    comment = " ".join(f"{describe} from {source}".split())
    return (f"# Written by `bootd images import`: {comment}\n"
            f"# Change keys in [profiles.{profile.name}] of the config file, not here.\n"
            f"[profiles.{profile.name}]\n{body}")


def sums_alongside(media: Path, kind: Kind, given: Path | None) -> dict[str, Digest]:
    """Checksums that lists next to the media (or the one given) hold for it, by media
    path; the image or archive itself under its file name."""
    base = media if kind is Kind.DIRECTORY else media.parent
    if given is not None:
        lists = [given]
    else:
        lists = [d / n for d in (base, base.parent, base.parent.parent) for n in SUMS_FILES]
    found: dict[str, Digest] = {}
    for path in lists:
        if not path.is_file():
            if path == given:
                raise MediaError(f"{given}: no such checksum list")
            continue
        try:
            prefix = base.resolve().relative_to(path.parent.resolve()).as_posix()
        except ValueError:
            prefix = ""
        prefix = "" if prefix == "." else prefix + "/" if prefix else ""
        for entry, digest in parse_sums(path.read_text(encoding="utf-8", errors="replace")).items():
            if kind is not Kind.DIRECTORY and entry in (f"{prefix}{media.name}", media.name):
                found[media.name] = digest
            elif kind is not Kind.ISO and entry.startswith(prefix):
                found.setdefault(entry[len(prefix):], digest)
    return found


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise MediaError(f"{name!r} is not a profile name (lower-case letters, digits, '-', '_' and '.')")


def _profile(request: Request, plan: Plan | None, family: Family) -> Profile:
    name = request.name
    here = f"images/{name}"
    tree = request.tree if request.tree is not None else \
        f"{here}/{plan.tree}" if plan is not None and plan.tree else ""
    kernel = f"{here}/{plan.kernel}" if plan is not None else f"{here}/vmlinuz"
    initrd = f"{here}/{plan.initrd}" if plan is not None else f"{here}/initrd.img"
    profile = Profile(name, family, kernel, initrd, tree, request.template or default_template(family))
    try:  # the config's parser is the judge of what a profile file may say
        return profile_file(f"{name}.toml", profile_text(profile, request.source, ""))
    except ConfigError as exc:
        raise MediaError(f"profile {name}: {exc.key}: {exc.problem}") from None


def import_media(config: Config, request: Request, progress: Progress,
                 open_media: Callable[[Path], Medium] = open_medium) -> Imported:
    started = time.monotonic()
    _check_name(request.name)
    profiles_dir = config.state_dir / IMPORTED_PROFILES
    profile_path = profiles_dir / f"{request.name}.toml"
    if profile_path.exists() and not request.replace:
        raise MediaError(f"profile {request.name} was imported before ({profile_path}); "
                         "give --replace to import it again")
    if request.family is not None:
        _profile(request, None, request.family)  # a bad --template or --tree fails before any copy
    local = download(request.source, config.state_dir / "cache" / "media", progress) \
        if is_url(request.source) else Path(request.source)
    medium = open_media(local)
    try:
        done = _run(config, request, progress, local, medium, profile_path, started)
    finally:
        medium.close()
    if is_url(request.source):
        # The media now lives in the profile's directory; a second copy of a DVD is waste.
        local.unlink()
        with contextlib.suppress(OSError):
            local.parent.rmdir()
    return done


def _run(config: Config, request: Request, progress: Progress, local: Path, medium: Medium,
         profile_path: Path, started: float) -> Imported:
    files = medium.files()
    outside = sums_alongside(local, medium.kind, request.checksums)
    image = None
    if medium.kind is Kind.ISO:
        image = (_image_name(local, request.name), local.stat().st_size)
        if image[0] != local.name and local.name in outside:
            outside[image[0]] = outside[local.name]

    def read(path: str) -> bytes:
        if files.get(path, 0) > 1 << 20:
            raise MediaError(f"{local}: {path} is larger than 1 MiB; not a metadata file")
        with medium.open(path) as f:
            return f.read()

    plan = recognise(files, read, str(local), image, outside)
    family = request.family or plan.family
    profile = _profile(request, plan, family)
    progress.note(f"{local}: {plan.describe} ({plan.layout.value}, {medium.kind.value}"
                  f"{', ' + getattr(medium, 'namespace', '') if medium.kind is Kind.ISO else ''}), "
                  f"family {family.value}, {len(plan.copies)} file(s), {plan.checked} with checksums")
    container_sum = outside.get(local.name)
    if container_sum is not None and plan.layout is not Layout.LIVE_SERVER and medium.container:
        progress.begin(f"verify {local.name}", local.stat().st_size)
        verify(local, container_sum, progress)
        progress.end()
    target = config.tftp_root / "images" / request.name
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
        target.parent.chmod(0o755)  # served to anyone by TFTP and HTTP; the CLI's umask is 077
    stat = local.stat()
    identity = json.dumps({"source": str(local.resolve()), "size": stat.st_size,
                           "mtime_ns": stat.st_mtime_ns, "layout": plan.layout.value})
    owner = _owner(config.state_dir)
    with _only_import_of(target):
        staging, resumed = prepare(target, identity)
        if resumed:
            progress.note(f"resuming the import in {staging}")
        progress.begin(f"import {request.name}", plan.total)
        recorded = copy_plan(plan, medium, staging, progress)
        progress.end()
        commit(staging, target, recorded, owner)
        _write_profile(profile_path, profile_text(profile, request.source, plan.describe), owner)
    return Imported(profile, plan, target, profile_path, resumed, time.monotonic() - started)


@contextlib.contextmanager
def _only_import_of(target: Path) -> Iterator[None]:
    """Two imports of one profile at once would write one staging directory."""
    with target.with_name(f".{target.name}.lock").open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MediaError(f"another import of profile {target.name} is running") from None
        yield


def _image_name(local: Path, name: str) -> str:
    """What the kept ISO is called: its own name if it is a plain *.iso name (casper
    takes the file name from url=), else NAME.iso."""
    try:
        clean = clean_path(local.name).text
    except Refused:
        clean = ""
    return clean if clean.endswith(".iso") and " " not in clean else f"{name}.iso"


def _owner(state_dir: Path) -> tuple[int, int] | None:
    """Run as root for a state directory owned by the service's user: files are theirs."""
    if os.geteuid() != 0 or not state_dir.exists():
        return None
    st = state_dir.stat()
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def _write_profile(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.chmod(0o644)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
