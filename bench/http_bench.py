"""bench/http: bootd's /images/ route against Debian's nginx, same lab, same client, one run.

Both servers serve the same directory (bootd: the TFTP root's images/ at
/images/; nginx: that root with sendfile on). Each runs alone in the server
namespace pinned to one core; the client (curl, C, event-driven with
--parallel) runs in its own namespace on the other core and writes to
/dev/null. Rows:

- one download of a big (kernel/ISO-like) file, MB/s;
- 100 concurrent downloads of an initrd-sized file, aggregate MB/s;
- 1,000 concurrent downloads of a small image, aggregate MB/s and failures
  (a transfer that does not end with status 200 and the file's full size);
- requests/s for an iPXE-script-sized file over keep-alive connections.

curl caps --parallel-max at 300 (larger values fall back to 50), so a row of
N concurrent transfers runs ceil(N/250) curl processes side by side. Before
the timed rows, each file is fetched once and its SHA-256 compared, and one
Range request is checked, so a fast server that serves the wrong bytes fails.
MB/s is 10^6 bytes of file content over the client's wall time; the table
shows medians over --runs runs and bootd's ratio to nginx. The client is
fast enough when its core is not busy while nginx saturates the server core;
each row prints the server's CPU seconds per GB (or per 1,000 requests).

nginx is not installed as a service (Debian's nginx-common would start one on
port 80 of the real interfaces): its .deb is unpacked into .cache/bench/nginx
and run with its own config, `daemon off`, its pid file in the run's temp dir.

    bench/http [--runs 3] [--big-mb 256] [--initrd-mb 64] [--many-mb 4] [--servers bootd,nginx]
               [--bootd-tree DIR] [-v]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import re
import signal
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
CACHE = ROOT / ".cache" / "bench" / "nginx"
SERVERS = ("bootd", "nginx")
ADDRESS = "198.18.0.1"
PORTS = {"bootd": 8080, "nginx": 8081}
PER_CURL = 250  # transfers per curl process (curl allows at most 300 in parallel)


@dataclass(frozen=True)
class Row:
    label: str
    file: str
    count: int  # transfers
    parallel: int  # at once
    unit: str  # "MB/s" or "req/s"


def nginx_binary() -> Path:
    """Debian's /usr/sbin/nginx, unpacked (never installed: nginx-common would start a service)."""
    binary = CACHE / "root/usr/sbin/nginx"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "nginx"], cwd=CACHE, check=True, capture_output=True)
        for deb in CACHE.glob("nginx_*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE / "root")], check=True)
    return binary


def nginx_config(tmp: Path, root: Path) -> Path:
    temp = tmp / "nginx-temp"
    temp.mkdir(exist_ok=True)
    path = tmp / "nginx.conf"
    # One worker (one core, like bootd's one event loop); sendfile as Debian's default
    # config has it; no access log (bootd writes none per request either).
    path.write_text(textwrap.dedent(f"""\
        worker_processes 1;
        user root;
        pid {tmp}/nginx.pid;
        error_log {tmp}/nginx-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            sendfile on;
            tcp_nopush on;
            keepalive_requests 1000000;
            default_type application/octet-stream;
            client_body_temp_path {temp}/body;
            proxy_temp_path {temp}/proxy;
            fastcgi_temp_path {temp}/fastcgi;
            uwsgi_temp_path {temp}/uwsgi;
            scgi_temp_path {temp}/scgi;
            server {{
                listen {ADDRESS}:{PORTS["nginx"]} backlog=4096;
                root {root};
            }}
        }}
        """))
    return path


def bootd_config(tmp: Path, root: Path) -> Path:
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    link = state / "tftp"
    if not link.exists():
        link.symlink_to(root)
    path = tmp / "bootd.toml"
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{ADDRESS}"
        interfaces = ["eth0"]
        state_dir = "{state}"
        log_level = "warning"
        [services]
        dhcp = false
        dns = false
        tftp = false
        http = true
        [http]
        listen = "{ADDRESS}:{PORTS["bootd"]}"
        [ra]
        enabled = false
        """))
    return path


def start_server(kind: str, srv: Any, tmp: Path, root: Path, tree: Path = ROOT) -> subprocess.Popen[bytes]:
    if kind == "bootd":
        cmd = [sys.executable, "-m", "bootd", "serve", "--config", str(bootd_config(tmp, root))]
    else:
        cmd = [str(nginx_binary()), "-e", str(tmp / "nginx-error.log"), "-p", str(tmp), "-c",
               str(nginx_config(tmp, root)), "-g", "daemon off;"]
    log = (tmp / f"{kind}.log").open("wb")
    proc = srv.popen("taskset", "-c", SERVER_CORE, *cmd, cwd=tree, stdout=subprocess.DEVNULL, stderr=log,
                     start_new_session=True)
    for _ in range(100):  # until it answers (bootd: imports and migrations first)
        time.sleep(0.1)
        if proc.poll() is not None:
            raise SystemExit(f"{kind} did not start: {(tmp / f'{kind}.log').read_text()}")
        probe = srv.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        f"http://{ADDRESS}:{PORTS[kind]}/images/script.ipxe", check=False)
        if probe.stdout == "200":
            return proc
    raise SystemExit(f"{kind} did not answer: {(tmp / f'{kind}.log').read_text()}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group (ip netns exec -> taskset -> server, nginx's worker)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def fetch_script(tmp: Path, row: Row, port: int) -> str:
    """A shell script that runs the row's transfers and prints one 'code size' line per transfer, then
    the wall time in ns. Each curl process gets a config file of its URLs (each to /dev/null)."""
    url = f"http://{ADDRESS}:{port}/images/{row.file}"
    procs = max(1, math.ceil(row.parallel / PER_CURL))
    lines = []
    for p in range(procs):
        share = row.count // procs + (1 if p < row.count % procs else 0)
        conf = tmp / f"curl-{p}.conf"
        conf.write_text(f'url = "{url}"\noutput = "/dev/null"\n' * share)
        at_once = math.ceil(row.parallel / procs)
        lines.append(f"curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max {at_once} "
                     f"-w '%{{http_code}} %{{size_download}} %{{time_total}}\\n' -K {conf} > {tmp}/out-{p} &")
    return ("start=$(date +%s%N)\n" + "\n".join(lines) + "\nwait\nend=$(date +%s%N)\n"
            f"cat {tmp}/out-*\necho $((end - start))\n")


def server_cpu(pgrp: int) -> float:
    """CPU seconds (user + system, all threads) of every process in the server's process group."""
    total = 0
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgrp:  # fields after the command: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_row(client: Any, tmp: Path, row: Row, size: int, port: int, pgrp: int) -> tuple[float, int, float]:
    """(MB/s or req/s, failed transfers, server CPU seconds per GB or per 1,000 requests) of one row."""
    work = tmp / "client"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir()
    cpu = server_cpu(pgrp)
    if row.unit == "req/s":  # keep-alive: wrk (curl's command line costs more per request than nginx)
        res = client.run("taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{row.parallel}", f"-d{row.count}s",
                         f"http://{ADDRESS}:{port}/images/{row.file}", timeout=120)
        cpu = server_cpu(pgrp) - cpu
        out = res.stdout
        done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        failed += sum(int(n) for n in errors.groups()) if errors else 0
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        return rate, failed, cpu / done * 1000
    script = work / "fetch.sh"
    script.write_text(fetch_script(work, row, port))
    res = client.run("taskset", "-c", CLIENT_CORE, "sh", str(script), check=False, timeout=900)
    cpu = server_cpu(pgrp) - cpu
    lines = res.stdout.strip().splitlines()
    seconds = int(lines[-1]) / 1e9
    transfers = [line.split() for line in lines[:-1]]
    ok = sum(1 for t in transfers if t[:2] == ["200", str(size)])
    failed = row.count - ok
    if failed:
        print(f"  {failed} failed; curl said: {res.stderr.strip()[-300:]}", file=sys.stderr)
    times = sorted(float(t[2]) for t in transfers)
    if times and times[-1] > 3 * times[len(times) // 2]:  # a straggler sets the row's wall time
        print(f"  {row.label} on port {port}: transfer times median {times[len(times) // 2]:.2f} s, "
              f"slowest {times[-1]:.2f} s", file=sys.stderr)
    return ok * size / seconds / 1e6, failed, cpu / (max(ok, 1) * size / 1e9)


def check_content(client: Any, port: int, name: str, content: bytes) -> None:
    """The whole file and one Range (the middle 1000 bytes) are the right bytes."""
    url = f"http://{ADDRESS}:{port}/images/{name}"
    whole = subprocess.run(client.cmd("curl", "-sf", url), capture_output=True, check=True).stdout
    if hashlib.sha256(whole).digest() != hashlib.sha256(content).digest():
        raise SystemExit(f"{name}: served bytes differ from the file")
    mid = len(content) // 2
    part = subprocess.run(client.cmd("curl", "-sf", "-r", f"{mid}-{mid + 999}", url), capture_output=True,
                          check=True).stdout
    if part != content[mid:mid + 1000]:
        raise SystemExit(f"{name}: Range served the wrong bytes")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--big-mb", type=int, default=256)
    p.add_argument("--initrd-mb", type=int, default=64)
    p.add_argument("--many-mb", type=int, default=4)
    p.add_argument("--initrds", type=int, default=100, help="concurrent initrd downloads")
    p.add_argument("--many", type=int, default=1000, help="concurrent small-image downloads")
    p.add_argument("--seconds", type=int, default=5, help="of keep-alive requests for the small file")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--bootd-tree", type=Path, default=ROOT,
                   help="run bootd from this source tree (a `git archive` of an older commit)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each row of each run")
    args = p.parse_args()
    servers = args.servers.split(",")
    rows = [
        Row(f"1 x {args.big_mb} MiB", "big.img", 1, 1, "MB/s"),
        Row(f"{args.initrds} x {args.initrd_mb} MiB", "initrd.img", args.initrds, args.initrds, "MB/s"),
        Row(f"{args.many} x {args.many_mb} MiB", "small.img", args.many, args.many, "MB/s"),
        Row("5 KB, keep-alive, 10 conns", "script.ipxe", args.seconds, 10, "req/s"),
    ]
    results: dict[tuple[str, str], list[float]] = {}
    costs: dict[tuple[str, str], list[float]] = {}
    failures: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory(prefix="bootd-bench-") as tmpdir, Lab() as lab:
        tmp = Path(tmpdir)
        root = tmp / "root"
        (root / "images").mkdir(parents=True)
        files = {"big.img": os.urandom(args.big_mb << 20), "initrd.img": os.urandom(args.initrd_mb << 20),
                 "small.img": os.urandom(args.many_mb << 20), "script.ipxe": os.urandom(5000)}
        for name, content in files.items():
            (root / "images" / name).write_bytes(content)
        root.chmod(0o755)
        srv = lab.add_host("srv", f"{ADDRESS}/24")
        client = lab.add_host("cli", "198.18.0.2/24")
        for run in range(args.runs):
            # Both servers up at once (an idle one costs nothing), each row on one then the other,
            # the order alternating per run: the two figures of a row are minutes apart at most.
            procs = {}
            try:
                for kind in servers:
                    work = tmp / f"{kind}-{run}"
                    work.mkdir()
                    procs[kind] = start_server(kind, srv, work, root, args.bootd_tree)
                    if run == 0:
                        for name, content in files.items():
                            check_content(client, PORTS[kind], name, content)
                order = servers if run % 2 == 0 else servers[::-1]
                for row in rows:
                    for kind in order:
                        rate, failed, cost = run_row(client, tmp, row, len(files[row.file]), PORTS[kind],
                                                     procs[kind].pid)
                        results.setdefault((kind, row.label), []).append(rate)
                        costs.setdefault((kind, row.label), []).append(cost)
                        failures[(kind, row.label)] = failures.get((kind, row.label), 0) + failed
                        if args.verbose:
                            print(f"  run {run} {kind:6} {row.label:28} {rate:10.1f} {row.unit} "
                                  f"failed {failed} server cpu {cost:.3f}", flush=True)
            finally:
                for proc in procs.values():
                    stop_server(proc)
    print(f"curl/wrk client on core {CLIENT_CORE}, servers on core {SERVER_CORE}; medians of {args.runs} "
          "runs; failed: transfers without status 200 and the full size (all runs); cpu: server CPU seconds "
          "per GB sent (MB/s rows) or per 1,000 requests (req/s row), softirq not included")
    header = f"{'row':28}{'unit':>6}" + "".join(f"{s:>10}{'failed':>7}{'cpu':>7}" for s in servers)
    both = "bootd" in servers and "nginx" in servers
    if both:
        header += f"{'bootd/nginx':>13}{'cpu ratio':>11}"
    print(header)
    for row in rows:
        med = {s: statistics.median(results[(s, row.label)]) for s in servers}
        cost = {s: statistics.median(costs[(s, row.label)]) for s in servers}
        line = f"{row.label:28}{row.unit:>6}" + "".join(
            f"{med[s]:10.1f}{failures[(s, row.label)]:7d}{cost[s]:7.2f}" for s in servers)
        if both:
            line += f"{med['bootd'] / med['nginx']:12.2f}x{cost['bootd'] / max(cost['nginx'], 1e-9):10.1f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
