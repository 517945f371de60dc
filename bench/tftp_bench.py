"""bench/tftp: bootd's TFTP against tftpd-hpa (and optionally dnsmasq's), same lab, same client, one run.

The client is atftp (C, supports blksize and RFC 7440 windowsize) in its own
namespace; each server runs alone in the server namespace, pinned to one core,
the client to the other (tftpd-hpa forks a process per transfer: its children
inherit the pinning, so every server gets the same one core). Rows:

- one 64 MiB transfer at blksize 512 and 1468, windowsize 1 and 16 (a server
  without windowsize support leaves the option out of its OACK and the
  transfer runs lockstep);
- 20 and 50 concurrent lockstep transfers (no windowsize option: the firmware
  case, iPXE and pxelinux send none) at blksize 512 and 1468;
- 500 concurrent transfers of a small file, counting failures.

Each row runs several times; the table shows median MB/s (10^6 bytes/s of file
content received intact over the client's wall time), failed transfers over
all runs, and bootd's ratio to each reference.

tftpd-hpa is not installed as a service (it would listen on this machine's
real interfaces): its .deb and libwrap0's are unpacked into .cache/bench.

    bench/tftp [--runs 3] [--size-mb 64] [--concurrent-mb 16] [--many 500] [--many-mb 1]
               [--servers bootd,tftpd-hpa[,dnsmasq]] [--rows SUBSTRING,...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from netlab import Lab  # noqa: E402

SERVER_CORE, CLIENT_CORE = "0", "1"
CACHE = ROOT / ".cache" / "bench"
SERVERS = ("bootd", "tftpd-hpa")


@dataclass(frozen=True)
class Row:
    label: str
    name: str  # file under the root
    blksize: int
    windowsize: int  # 1: the option is not sent (lockstep)
    count: int  # transfers at once


def unpack_tftpd_hpa() -> tuple[Path, Path]:
    """in.tftpd and the directory holding its libwrap.so.0, from Debian's packages."""
    tftpd, libdir = CACHE / "root/usr/sbin/in.tftpd", CACHE / "root/usr/lib/x86_64-linux-gnu"
    if not tftpd.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "tftpd-hpa", "libwrap0"], cwd=CACHE, check=True,
                       capture_output=True)
        for deb in CACHE.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE / "root")], check=True)
    libs = list((CACHE / "root").rglob("libwrap.so.0"))
    return tftpd, libs[0].parent if libs else libdir


def bootd_config(tmp: Path, root: Path, cache_mb: int) -> Path:
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    link = state / "tftp"
    if not link.exists():
        link.symlink_to(root)
    path = tmp / "bootd.toml"
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "198.18.0.1"
        interfaces = ["eth0"]
        state_dir = "{state}"
        log_level = "warning"
        [services]
        dhcp = false
        dns = false
        http = false
        [tftp]
        max_transfers = 1000
        max_per_client = 1000
        cache_mb = {cache_mb}
        """))
    return path


def base_tree(rev: str) -> Path:
    """bootd's package as of a git revision, in a scratch folder (for a before/after in one run)."""
    out = Path(tempfile.mkdtemp(prefix="bootd-base-"))
    archive = subprocess.run(["git", "archive", rev, "bootd"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def start_server(kind: str, srv: Any, tmp: Path, root: Path, cache_mb: int,
                 base: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    cwd = ROOT
    if kind in ("bootd", "bootd-base"):
        cmd = [sys.executable, "-m", "bootd", "serve", "--config", str(bootd_config(tmp, root, cache_mb))]
        if kind == "bootd-base":
            assert base is not None, "bootd-base needs --base REV"
            cwd = base  # `python -m` puts the working folder first on sys.path
    elif kind == "tftpd-hpa":
        tftpd, libdir = unpack_tftpd_hpa()
        env["LD_LIBRARY_PATH"] = str(libdir)
        cmd = [str(tftpd), "--foreground", "--secure", "--address", "198.18.0.1:69", "--user", "root",
               "--blocksize", "65464", str(root)]
    else:
        cmd = ["dnsmasq", "--no-daemon", "--port=0", "--enable-tftp", f"--tftp-root={root}",
               "--listen-address=198.18.0.1", "--bind-interfaces", "--tftp-max=1000",
               "--user=root", "--group=root", "--log-facility=/dev/null"]
    log = (tmp / f"{kind}.log").open("wb")
    proc = srv.popen("taskset", "-c", SERVER_CORE, *cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                     stderr=log)
    time.sleep(2.0 if kind.startswith("bootd") else 0.5)  # bootd: imports and migrations before it binds
    if proc.poll() is not None:
        raise SystemExit(f"{kind} did not start: {(tmp / f'{kind}.log').read_text()}")
    return proc


def fetch_script(out: Path, row: Row) -> str:
    opts = f'--option "blksize {row.blksize}"'
    if row.windowsize > 1:
        opts += f' --option "windowsize {row.windowsize}"'
    return textwrap.dedent(f"""\
        cd {out}
        start=$(date +%s%N)
        for i in $(seq 1 {row.count}); do
          atftp -g -r {row.name} -l out.$i {opts} 198.18.0.1 || echo "transfer $i failed" >&2 &
        done
        wait
        end=$(date +%s%N)
        echo $((end - start))
        """)


def core_times() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of the server's and the client's core, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name in (f"cpu{SERVER_CORE}", f"cpu{CLIENT_CORE}"):
            values = [int(v) for v in fields]
            out[name] = (sum(values) - values[3] - values[4], sum(values))  # less idle and iowait
    return out


def busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    """Each core's busy share between two core_times(): a row whose client core is at 100 %
    measures the client (atftp is one process per transfer), not the server."""
    parts = []
    for role, core in (("server", SERVER_CORE), ("client", CLIENT_CORE)):
        (b0, t0), (b1, t1) = before[f"cpu{core}"], after[f"cpu{core}"]
        parts.append(f"{role} core {100 * (b1 - b0) / max(t1 - t0, 1):3.0f} %")
    return ", ".join(parts)


def run_row(client: Any, tmp: Path, row: Row, size: int, digest: str) -> tuple[float, int, str]:
    """MB/s of intact content, how many transfers failed or delivered the wrong bytes, and
    how busy both cores were."""
    out = tmp / "client"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir()
    script = out.parent / "fetch.sh"
    script.write_text(fetch_script(out, row))
    if os.environ.get("BENCH_NSTAT"):
        client.run("nstat", "-n")
    cores = core_times()
    res = client.run("taskset", "-c", CLIENT_CORE, "sh", str(script), check=False, timeout=900)
    load = busy(cores, core_times())
    if os.environ.get("BENCH_NSTAT"):
        print(client.run("nstat", "-a", "Udp*", "Ip*Discard*", "Icmp*").stdout, file=sys.stderr)
    if res.returncode != 0:
        raise SystemExit(f"client script failed: {res.stderr}")
    good = 0
    for i in range(1, row.count + 1):
        f = out / f"out.{i}"
        if f.exists() and f.stat().st_size == size and hashlib.sha256(f.read_bytes()).hexdigest() == digest:
            good += 1
    seconds = int(res.stdout.strip().splitlines()[-1]) / 1e9
    return size * good / seconds / 1e6, row.count - good, load


def profile(pid: int, folder: Path, run: int) -> subprocess.Popen[bytes]:
    """py-spy sampling bootd from the client's core (`ip netns exec` and taskset exec: same pid)."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(["taskset", "-c", CLIENT_CORE, spy, "record", "--pid", str(pid), "--nonblocking",
                             "--rate", "500", "--format", "raw",
                             "-o", str(folder / f"bootd-{run + 1}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size-mb", type=int, default=64, help="the one-transfer rows' file")
    p.add_argument("--concurrent-mb", type=int, default=16, help="the 20 and 50 concurrent rows' file")
    p.add_argument("--many", type=int, default=500, help="transfers at once in the last row")
    p.add_argument("--many-mb", type=int, default=1)
    p.add_argument("--servers", default=",".join(SERVERS), help="bootd,tftpd-hpa,dnsmasq,bootd-base")
    p.add_argument("--base", help="git revision that bootd-base runs (a before/after in one run)")
    p.add_argument("--rows", default="", help="run only rows whose label contains one of these")
    p.add_argument("--profile", type=Path, help="py-spy bootd into this folder (one flame file per run)")
    args = p.parse_args()
    servers = args.servers.split(",")
    base = base_tree(args.base) if args.base else None
    rows = [Row(f"1 x {args.size_mb} MiB blk {b} win {w}", "big.img", b, w, 1)
            for w in (1, 16) for b in (512, 1468)]
    rows += [Row(f"{n} x {args.concurrent_mb} MiB blk {b} lockstep", "mid.img", b, 1, n)
             for n in (20, 50) for b in (512, 1468)]
    rows.append(Row(f"{args.many} x {args.many_mb} MiB blk 1468 lockstep", "small.img", 1468, 1, args.many))
    if args.rows:
        rows = [r for r in rows if any(part in r.label for part in args.rows.split(","))]
    results: dict[tuple[str, str], list[float]] = {}
    failures: dict[tuple[str, str], int] = {}
    sizes = {"big.img": args.size_mb, "mid.img": args.concurrent_mb, "small.img": args.many_mb}
    with tempfile.TemporaryDirectory(prefix="bootd-bench-") as tmpdir, Lab() as lab:
        tmp = Path(tmpdir)
        root = tmp / "root"
        root.mkdir()
        digests, lengths = {}, {}
        for name, mb in sizes.items():
            content = os.urandom(mb << 20)
            (root / name).write_bytes(content)
            digests[name], lengths[name] = hashlib.sha256(content).hexdigest(), len(content)
        root.chmod(0o755)
        cache_mb = sum(sizes.values()) + 16
        srv = lab.add_host("srv", "198.18.0.1/24")
        client = lab.add_host("cli", "198.18.0.2/24")
        for run in range(args.runs):
            for kind in servers:
                work = tmp / f"{kind}-{run}"
                work.mkdir()
                proc = start_server(kind, srv, work, root, cache_mb, base)
                spy = profile(proc.pid, args.profile, run) if args.profile and kind == "bootd" else None
                try:
                    for row in rows:
                        mbs, failed, load = run_row(client, tmp, row, lengths[row.name], digests[row.name])
                        results.setdefault((kind, row.label), []).append(mbs)
                        failures[(kind, row.label)] = failures.get((kind, row.label), 0) + failed
                        print(f"run {run + 1} {kind:10} {row.label:34} {mbs:8.1f} MB/s  ({load})"
                              + (f"  {failed} failed" if failed else ""), file=sys.stderr, flush=True)
                finally:
                    if spy is not None:
                        spy.send_signal(2)  # py-spy writes its file on SIGINT
                        spy.wait(timeout=60)
                    proc.terminate()
                    proc.wait(timeout=30)
    print(f"atftp client on core {CLIENT_CORE}, server on core {SERVER_CORE}; median MB/s of "
          f"{args.runs} runs (failed transfers over all runs in brackets)")
    refs = [s for s in servers if s != "bootd"]
    header = f"{'row':36}" + "".join(f"{s:>11}     " for s in servers)
    header += "".join(f"{'bootd/' + r:>18}" for r in refs if "bootd" in servers)
    print(header)
    for row in rows:
        med = {s: statistics.median(results[(s, row.label)]) for s in servers}
        cells = ""
        for s in servers:
            failed = failures[(s, row.label)]
            cells += f"{med[s]:11.1f}" + (f" [{failed:>2}]" if failed else "     ")
        line = f"{row.label:36}" + cells
        if "bootd" in servers:
            line += "".join(f"{med['bootd'] / med[r]:17.2f}x" for r in refs)
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
