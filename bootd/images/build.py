"""`bootd images build-discovery`: the discovery / hardware-install image, from Debian packages.

Kernel: the Debian kernel linux-image-amd64 points at. Userland: busybox-static,
ipmitool, dmidecode and ethtool with exactly the shared libraries they load
(found with ldd against the unpacked packages), the NIC, disk and IPMI modules a
server needs (with everything they depend on and the device aliases they claim,
read from each module's .modinfo, so the agent loads only the drivers of the
devices present), and bootd's agent as /init (bootd/images/agent.sh, package data read
with importlib.resources, so a wheel install builds the same image). Packages are fetched
with `apt-get download` into a cache and unpacked with dpkg-deb, never
installed. The initramfs is written reproducibly (bootd.images.cpio).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bootd.errors import BootdError
from bootd.images.cpio import archive

log = logging.getLogger("bootd.images")
AGENT = "agent.sh"  # package data of bootd.images
TOOLS = {"ipmitool": "usr/bin/ipmitool", "dmidecode": "usr/sbin/dmidecode", "ethtool": "sbin/ethtool"}
# Shared-library packages the tools need (Debian 12 names); ldd picks the files.
LIBRARIES = ["libc6", "libreadline8", "libtinfo6", "libssl3", "libfreeipmi17", "libgcrypt20",
             "libgpg-error0", "libmnl0"]
MODULES = [
    # NICs: virtual, then the common server families
    "virtio_pci", "virtio_net", "e1000", "e1000e", "igb", "ixgbe", "i40e", "tg3", "bnxt_en", "r8169",
    # disks
    "virtio_blk", "virtio_scsi", "sd_mod", "sr_mod", "ahci", "ata_piix", "nvme", "megaraid_sas",
    "mpt3sas",
    # the BMC from the host side (ipmitool's "open" interface)
    "ipmi_si", "ipmi_devintf", "ipmi_ssif",
]
# Loaded on every machine, whatever its devices: ipmitool's /dev/ipmi0 (no device alias
# names it) and SCSI disks (their scsi:t-0x00 devices appear after an asynchronous
# bus scan, later than the agent's coldplug passes may look).
ALWAYS = ["ipmi_devintf", "sd_mod"]
DEVICES = {"dev/console": (0o600, 5, 1), "dev/null": (0o666, 1, 3), "dev/tty": (0o666, 5, 0)}


class BuildError(BootdError):
    pass


def agent_script() -> bytes:
    """The discovery agent (/init of the image), from the installed package."""
    try:
        return resources.files("bootd.images").joinpath(AGENT).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise BuildError(f"the agent {AGENT} is missing from the bootd.images package") from None


@dataclass(frozen=True)
class Result:
    kernel: Path
    initrd: Path
    kernel_version: str
    initrd_bytes: int
    seconds: float


def _run(*cmd: str, cwd: Path | None = None) -> str:
    try:
        res = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} not found (Debian's apt and dpkg are needed)") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{' '.join(cmd)} failed: {exc.stderr.strip()[-500:]}") from None
    return res.stdout


def kernel_package() -> str:
    out = _run("apt-cache", "depends", "linux-image-amd64")
    m = re.search(r"Depends: (linux-image-\S+-amd64)\b", out)
    if m is None:
        raise BuildError("cannot tell which kernel linux-image-amd64 depends on (apt-get update?)")
    return m.group(1)


def fetch(packages: list[str], cache: Path) -> dict[str, Path]:
    """Each package unpacked under cache/x/<package>, downloading only what is missing."""
    debs, unpacked = cache / "debs", cache / "x"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        log.info("downloading", extra={"ctx": {"packages": ",".join(missing)}})
        _run("apt-get", "download", *missing, cwd=debs)
    out = {}
    for pkg in packages:
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        dest = unpacked / deb.stem
        if not dest.exists():
            tmp = unpacked / f".{deb.stem}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _run("dpkg-deb", "-x", str(deb), str(tmp))
            tmp.rename(dest)
        out[pkg] = dest
    return out


def _modinfo_depends(path: Path) -> list[str]:
    data = path.read_bytes()
    m = re.search(rb"\0depends=([^\0]*)\0", b"\0" + data)
    if m is None or not m.group(1):
        return []
    return m.group(1).decode().split(",")


def _modinfo_aliases(path: Path) -> list[str]:
    """The device patterns a module claims (modinfo's alias= entries, as depmod reads them)."""
    return sorted({m.decode() for m in re.findall(rb"\0alias=([^\0]+)", b"\0" + path.read_bytes())})


def copy_modules(kernel_root: Path, version: str, dest: Path, wanted: list[str]) -> list[str]:
    """Copy `wanted` and their dependencies; write modules.dep and modules.alias for
    busybox modprobe (the agent loads modules by the aliases of the devices present)."""
    base = kernel_root / "lib" / "modules" / version
    by_name = {p.name.removesuffix(".ko").replace("-", "_"): p
               for p in (base / "kernel").rglob("*.ko")}
    chosen: dict[str, Path] = {}
    todo = [w.replace("-", "_") for w in wanted if w.replace("-", "_") in by_name]
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        chosen[name] = by_name[name]
        todo += [d.replace("-", "_") for d in _modinfo_depends(by_name[name])
                 if d.replace("-", "_") in by_name]
    direct = {name: [d.replace("-", "_") for d in _modinfo_depends(path) if d.replace("-", "_") in chosen]
              for name, path in chosen.items()}

    def closure(name: str) -> list[str]:
        """Every module `name` needs, each before the ones it needs (modules.dep order:
        modprobe loads the list from its end)."""
        order: list[str] = []

        def visit(n: str) -> None:
            for d in direct[n]:
                if d not in order:
                    visit(d)
                    order.append(d)
        visit(name)
        return list(reversed(order))

    lines, aliases = [], []
    for name, path in sorted(chosen.items()):
        rel = path.relative_to(base)
        target = dest / "lib" / "modules" / version / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        deps = [str(chosen[d].relative_to(base)) for d in closure(name)]
        lines.append(f"{rel}: {' '.join(deps)}".rstrip())
        aliases += [f"alias {pattern} {name}" for pattern in _modinfo_aliases(path)]
    (dest / "lib" / "modules" / version / "modules.dep").write_text("\n".join(lines) + "\n")
    (dest / "lib" / "modules" / version / "modules.alias").write_text("\n".join(aliases) + "\n")
    return sorted(chosen)


def copy_binary(src: Path, dest_root: Path, rel: str, lib_dirs: list[Path]) -> None:
    target = dest_root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(str(d) for d in lib_dirs)}
    try:
        res = subprocess.run(["ldd", str(src)], capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise BuildError("ldd not found (Debian's libc-bin)") from None
    missing = [line.split()[0] for line in res.stdout.splitlines() if "not found" in line]
    if res.returncode != 0 or missing:
        raise BuildError(f"{rel}: libraries not found: {', '.join(missing) or res.stderr.strip()}")
    for line in res.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m is None:
            continue
        lib = Path(m.group(1))
        if lib.name.startswith("ld-linux"):
            where = dest_root / "lib64" / lib.name
        else:
            where = dest_root / "lib" / "x86_64-linux-gnu" / lib.name
        if not where.exists():
            where.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib.resolve(), where)


def build_discovery(output: Path, cache: Path) -> Result:
    started = time.monotonic()
    kpkg = kernel_package()
    unpacked = fetch([kpkg, "busybox-static", *TOOLS, *LIBRARIES], cache)
    kroot = unpacked[kpkg]
    version = kpkg.removeprefix("linux-image-")
    vmlinuz = kroot / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.exists():
        raise BuildError(f"{kpkg} holds no boot/vmlinuz-{version}")
    agent = agent_script()
    with tempfile.TemporaryDirectory(prefix="bootd-image-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc",
                  "var/log", "root", "mnt"):
            (root / d).mkdir(parents=True, exist_ok=True)
        busybox = unpacked["busybox-static"] / "bin" / "busybox"
        shutil.copy2(busybox, root / "bin" / "busybox")
        applets = _run(str(busybox), "--list-full").split()
        for applet in applets:
            link = root / applet
            if applet.endswith("/busybox") or link.exists():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            depth = applet.count("/")
            link.symlink_to("../" * depth + "bin/busybox" if depth else "bin/busybox")
        lib_dirs = [p for pkg in LIBRARIES for p in (unpacked[pkg] / "lib" / "x86_64-linux-gnu",
                                                      unpacked[pkg] / "usr" / "lib" / "x86_64-linux-gnu")
                    if p.is_dir()]
        for tool, rel in TOOLS.items():
            src = unpacked[tool] / rel
            if not src.exists():
                found = list(unpacked[tool].rglob(tool))
                if not found:
                    raise BuildError(f"{tool} not found in its package")
                src = found[0]
            copy_binary(src, root, f"usr/bin/{tool}", lib_dirs)
        modules = copy_modules(kroot, version, root, MODULES)
        init = root / "init"
        init.write_bytes(agent)
        init.chmod(0o755)
        (root / "etc" / "bootd-image").write_text(
            f"kernel={version}\nmodules={' '.join(modules)}\n"
            f"always={' '.join(m for m in ALWAYS if m in modules)}\n")
        image = archive(root, mtime=0, devices=DEVICES)
    output.mkdir(parents=True, exist_ok=True)
    kernel_out, initrd_out = output / "vmlinuz", output / "initrd.img"
    for data, path in ((vmlinuz.read_bytes(), kernel_out), (image, initrd_out)):
        tmp_path = path.with_name(f".{path.name}.tmp")
        tmp_path.write_bytes(data)
        tmp_path.chmod(0o644)
        os.replace(tmp_path, path)
    return Result(kernel_out, initrd_out, version, len(image), time.monotonic() - started)
