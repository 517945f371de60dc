"""bench/tftp: bootd's TFTP against tftpd-hpa and dnsmasq's TFTP, same lab, same client, one run.

The client is atftp (C, supports blksize and RFC 7440 windowsize) in its own
namespace; each server runs alone in the server namespace, pinned to one core,
the client to the other. Rows: one 64 MiB transfer at blksize 512 and 1468,
windowsize 1 and 16 (a server without windowsize support leaves the option out
of its OACK and the transfer runs lockstep), and 50 concurrent 8 MiB transfers.
Each row runs several times; the table shows median MB/s (10^6 bytes/s of file
content over the client's wall time) and bootd's ratio to each reference.

tftpd-hpa is not installed as a service (it would listen on this machine's
real interfaces): its .deb and libwrap0's are unpacked into .cache/bench.

    bench/tftp [--runs 3] [--size-mb 64] [--concurrent 50]
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from netlab import Lab  # noqa: E402

SERVER_CORE, CLIENT_CORE = "0", "1"
CACHE = ROOT / ".cache" / "bench"
SERVERS = ("bootd", "tftpd-hpa", "dnsmasq")


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


def bootd_config(tmp: Path, root: Path) -> Path:
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
        """))
    return path


def start_server(kind: str, srv: Any, tmp: Path, root: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if kind == "bootd":
        cmd = [sys.executable, "-m", "bootd", "serve", "--config", str(bootd_config(tmp, root))]
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
    proc = srv.popen("taskset", "-c", SERVER_CORE, *cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                     stderr=log)
    time.sleep(2.0 if kind == "bootd" else 0.5)  # bootd: imports and migrations before it binds
    if proc.poll() is not None:
        raise SystemExit(f"{kind} did not start: {(tmp / f'{kind}.log').read_text()}")
    return proc


def fetch_script(out: Path, name: str, blksize: int, windowsize: int, count: int) -> str:
    opts = f'--option "blksize {blksize}"'
    if windowsize > 1:
        opts += f' --option "windowsize {windowsize}"'
    return textwrap.dedent(f"""\
        cd {out}
        start=$(date +%s%N)
        for i in $(seq 1 {count}); do
          atftp -g -r {name} -l out.$i {opts} 198.18.0.1 || echo "transfer $i failed" >&2 &
        done
        wait
        end=$(date +%s%N)
        echo $((end - start))
        """)


def run_row(client: Any, tmp: Path, name: str, size: int, digest: str, blksize: int, windowsize: int,
            count: int) -> float:
    out = tmp / "client"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir()
    script = out.parent / "fetch.sh"
    script.write_text(fetch_script(out, name, blksize, windowsize, count))
    res = client.run("taskset", "-c", CLIENT_CORE, "sh", str(script), check=False, timeout=600)
    if res.returncode != 0 or "failed" in res.stderr:
        raise SystemExit(f"client failed: {res.stderr}")
    for f in out.glob("out.*"):
        if f.stat().st_size != size or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            raise SystemExit(f"{f} is not the file")
    seconds = int(res.stdout.strip().splitlines()[-1]) / 1e9
    return size * count / seconds / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size-mb", type=int, default=64)
    p.add_argument("--concurrent", type=int, default=50)
    p.add_argument("--concurrent-mb", type=int, default=8)
    p.add_argument("--servers", default=",".join(SERVERS))
    args = p.parse_args()
    servers = args.servers.split(",")
    rows = [(f"{args.size_mb} MiB blk {b} win {w}", "big.img", b, w, 1)
            for b in (512, 1468) for w in (1, 16)]
    rows.append((f"{args.concurrent} x {args.concurrent_mb} MiB blk 1468", "small.img", 1468, 1,
                 args.concurrent))
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bootd-bench-") as tmpdir, Lab() as lab:
        tmp = Path(tmpdir)
        root = tmp / "root"
        root.mkdir()
        files = {"big.img": os.urandom(args.size_mb << 20), "small.img": os.urandom(args.concurrent_mb << 20)}
        for name, content in files.items():
            (root / name).write_bytes(content)
        digests = {n: hashlib.sha256(c).hexdigest() for n, c in files.items()}
        root.chmod(0o755)
        srv = lab.add_host("srv", "198.18.0.1/24")
        client = lab.add_host("cli", "198.18.0.2/24")
        for run in range(args.runs):
            for kind in servers:
                work = tmp / f"{kind}-{run}"
                work.mkdir()
                proc = start_server(kind, srv, work, root)
                try:
                    for label, name, blksize, windowsize, count in rows:
                        mbs = run_row(client, tmp, name, len(files[name]), digests[name], blksize,
                                      windowsize, count)
                        results.setdefault((kind, label), []).append(mbs)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    print(f"atftp client on core {CLIENT_CORE}, server on core {SERVER_CORE}; median MB/s of "
          f"{args.runs} runs")
    refs = [s for s in servers if s != "bootd"]
    header = f"{'row':28}" + "".join(f"{s:>11}" for s in servers)
    header += "".join(f"{'bootd/' + r:>18}" for r in refs if "bootd" in servers)
    print(header)
    for label, *_ in rows:
        med = {s: statistics.median(results[(s, label)]) for s in servers}
        line = f"{label:28}" + "".join(f"{med[s]:11.1f}" for s in servers)
        if "bootd" in servers:
            line += "".join(f"{med['bootd'] / med[r]:17.2f}x" for r in refs)
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
