"""bench/dhcp: Kea's perfdhcp against bootd, Kea and dnsmasq, same lab, same flags, one run.

perfdhcp always acts as a relay (giaddr = its -l address), so this measures the
relayed path: perfdhcp sits in its own namespace at 198.19.0.2/16 with random
MACs, every server serves 198.19.0.0/16 from 198.18.0.1 in the server
namespace and keeps its leases on disk (bootd: SQLite, group commit before each
ACK; Kea 2.2: memfile CSV, one thread; dnsmasq: its lease file), and none
probes addresses before offering. Server and perfdhcp are pinned to different
cores; every run starts a fresh server with an empty lease store.

Rows, per server:
  clean     the highest offered rate with < 2.5 % drops (a doubling ladder, then
            bisection to --resolution; each probe is one run, the result is then
            measured --runs times), and the 4-way exchanges/s it completes;
  8000      a fixed 8,000 offered/s;
  2x clean  twice the server's own clean rate (overload: does it collapse?);
  flood     perfdhcp unthrottled (no -r).
Each row shows medians of --runs runs, then bootd's ratios to Kea and dnsmasq,
and how much of its clean rate bootd keeps under overload.

    bench/dhcp [--servers bootd,kea,dnsmasq] [--rows clean,8000,2x,flood] [--duration 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
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
CLEAN_DROPS = 2.5
LADDER_START = 500


# bootd's DHCP as every DHCP bench runs it (bench/dhcp_cpu.py too): perfdhcp's relayed
# clients get addresses from 198.19.0.0/16.
DHCP_SECTIONS = textwrap.dedent("""\
    [dhcp]
    conflict_check = false
    [[subnets]]
    cidr = "198.18.0.0/24"
    dynamic_pool = "198.18.0.100-198.18.0.200"
    [[subnets]]
    cidr = "198.19.0.0/16"
    router = "198.19.0.1"
    lease_time = 3600
    dynamic_pool = "198.19.1.0-198.19.255.254"
    """)


def bootd_config(tmp: Path) -> Path:
    path = tmp / "bootd.toml"
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "198.18.0.1"
        interfaces = ["eth0"]
        state_dir = "{tmp / 'state'}"
        log_level = "warning"
        [services]
        tftp = false
        dns = false
        http = false
        """) + DHCP_SECTIONS)
    return path


def kea_config(tmp: Path) -> Path:
    """Kea 2.2, memfile with a lease file, one thread, plain UDP sockets (relayed traffic)."""
    conf = {"Dhcp4": {
        "interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "udp"},
        "multi-threading": {"enable-multi-threading": False},
        "lease-database": {"type": "memfile", "persist": True, "name": str(tmp / "kea-leases4.csv"),
                           "lfc-interval": 0},
        "control-socket": {"socket-type": "unix", "socket-name": str(tmp / "kea.sock")},
        "authoritative": True,
        "valid-lifetime": 3600,
        "subnet4": [
            {"id": 1, "subnet": "198.18.0.0/24", "pools": [{"pool": "198.18.0.100 - 198.18.0.200"}]},
            {"id": 2, "subnet": "198.19.0.0/16", "pools": [{"pool": "198.19.1.0 - 198.19.255.254"}],
             "option-data": [{"name": "routers", "data": "198.19.0.1"}]},
        ],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": str(tmp / "kea.log")}]}],
    }}
    path = tmp / "kea-dhcp4.json"
    path.write_text(json.dumps(conf, indent=1))
    return path


def server_argv(kind: str, tmp: Path) -> list[str]:
    if kind == "bootd":
        return [sys.executable, "-m", "bootd", "serve", "--config", str(bootd_config(tmp))]
    if kind == "kea":
        return ["kea-dhcp4", "-c", str(kea_config(tmp))]
    return ["dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces",
            "--dhcp-range=198.19.1.0,198.19.255.254,255.255.0.0,3600",
            "--dhcp-range=198.18.0.100,198.18.0.200,255.255.255.0,3600",
            f"--dhcp-leasefile={tmp / 'dnsmasq.leases'}", "--dhcp-lease-max=200000",
            "--no-ping", "--dhcp-authoritative", "--quiet-dhcp", "--no-resolv", "--no-hosts",
            "--user=root", "--group=root", "--log-facility=/dev/null"]


def start_server(kind: str, srv: Any, tmp: Path) -> subprocess.Popen[bytes]:
    log = (tmp / "server.log").open("wb")
    env = {"KEA_PIDFILE_DIR": str(tmp), "KEA_LOCKFILE_DIR": str(tmp)} if kind == "kea" else {}
    proc = srv.popen("taskset", "-c", SERVER_CORE, *server_argv(kind, tmp), cwd=ROOT,
                     stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **env})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # bound to port 67: ready
        if proc.poll() is not None:
            raise SystemExit(f"{kind} did not start: {(tmp / 'server.log').read_text()[-2000:]}")
        if ":67 " in srv.run("ss", "-Huln", check=False).stdout:
            time.sleep(0.3)
            return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{kind} did not bind port 67 in 30 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def parse_perfdhcp(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    rate = re.search(r"Rate: ([\d.]+) 4-way exchanges/second", text)
    out["rate"] = float(rate.group(1)) if rate else 0.0
    sections = re.split(r"\*\*\*Statistics for: ", text)
    for section in sections[1:]:
        name = "do" if section.startswith("DISCOVER-OFFER") else "ra"
        for key, pattern in (("sent", r"sent packets: (\d+)"), ("received", r"received packets: (\d+)"),
                             ("avg_ms", r"avg delay: ([\d.]+) ms"), ("max_ms", r"max delay: ([\d.]+) ms")):
            m = re.search(pattern, section)
            out[f"{name}_{key}"] = float(m.group(1)) if m else float("nan")
    sent = out.get("do_sent", 0.0)
    acked = out.get("ra_received", 0.0)
    out["drops_pct"] = 100.0 * (1 - acked / sent) if sent else 100.0
    return out


@dataclass
class Bench:
    srv: Any
    client: Any
    tmp: Path
    macs: Path
    duration: int
    runs: int
    show_log: bool
    profile: Path | None = None
    counter: int = 0

    def once(self, kind: str, rate: int | None) -> dict[str, float]:
        """One run: fresh server, perfdhcp at `rate` (None: unthrottled) for --duration s."""
        self.counter += 1
        work = self.tmp / f"{kind}-{rate}-{self.counter}"
        work.mkdir()
        proc = start_server(kind, self.srv, work)
        spy = None
        if self.profile is not None and kind == "bootd":  # py-spy's collapsed stacks, one file per run
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                    str(proc.pid), "--format", "raw", "--rate", "250", "--output",
                                    str(self.profile.with_suffix(f".{self.counter}.txt"))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            argv = ["taskset", "-c", CLIENT_CORE, "perfdhcp", "-4", "-l", "198.19.0.2",
                    "-p", str(self.duration), "-M", str(self.macs), "-R", "1000000", "-W", "1"]
            if rate is not None:
                argv += ["-r", str(rate)]
            res = self.client.run(*argv, "198.18.0.1", check=False, timeout=self.duration + 60)
            out = parse_perfdhcp(res.stdout)
        finally:
            stop_server(proc)
            if spy is not None:
                spy.wait(timeout=30)
        if self.show_log and kind == "bootd":
            print((work / "server.log").read_text()[-2000:])
        print(f"  {kind:8} offered {rate or 'flood'!s:>6}: {out['rate']:8.0f}/s, "
              f"drops {out['drops_pct']:5.1f} %", file=sys.stderr, flush=True)
        return out

    def median(self, kind: str, rate: int | None, first: dict[str, float] | None = None
               ) -> dict[str, float]:
        runs = [first] if first is not None else []
        runs += [self.once(kind, rate) for _ in range(self.runs - len(runs))]
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    def clean_rate(self, kind: str, resolution: int) -> tuple[int, dict[str, float]]:
        """Doubling ladder, then bisection: the highest offered rate with < 2.5 % drops."""
        good, bad = 0, 0
        good_run: dict[str, float] | None = None
        rate = LADDER_START
        while True:
            out = self.once(kind, rate)
            if out["drops_pct"] < CLEAN_DROPS:
                good, good_run = rate, out
                rate *= 2
            else:
                bad = rate
                break
        while bad - good > resolution:
            mid = (good + bad) // 2 // 100 * 100 or (good + bad) // 2
            out = self.once(kind, mid)
            if out["drops_pct"] < CLEAN_DROPS:
                good, good_run = mid, out
            else:
                bad = mid
        if good == 0:  # not clean even at the ladder's start
            return LADDER_START, self.median(kind, LADDER_START)
        return good, self.median(kind, good, good_run)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default="bootd,kea,dnsmasq")
    p.add_argument("--rows", default="clean,8000,2x,flood")
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--resolution", type=int, default=500, help="bisection step of the clean-rate search")
    p.add_argument("--clients", type=int, default=20000)
    p.add_argument("--show-log", action="store_true", help="print the tail of bootd's log after each run")
    p.add_argument("--profile", type=Path, help="py-spy bootd into PROFILE.N.txt (collapsed stacks)")
    args = p.parse_args()
    servers, rows = args.servers.split(","), args.rows.split(",")
    table: dict[tuple[str, str], tuple[int | None, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bootd-bench-") as tmpdir, Lab() as lab:
        tmp = Path(tmpdir)
        srv = lab.add_host("srv", "198.18.0.1/24")
        client = lab.add_host("perf", "198.19.0.2/16")
        srv.run("ip", "route", "add", "198.19.0.0/16", "dev", "eth0")
        client.run("ip", "route", "add", "198.18.0.0/24", "dev", "eth0")
        macs = tmp / "macs.txt"
        rng = random.Random(42)
        macs.write_text("".join("52:54:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(4)) + "\n"
                                for _ in range(args.clients)))
        bench = Bench(srv, client, tmp, macs, args.duration, args.runs, args.show_log, args.profile)
        for kind in servers:
            clean: int | None = None
            for row in rows:
                if row == "clean" or (row == "2x" and clean is None):
                    clean, m = bench.clean_rate(kind, args.resolution)
                    if row == "clean":
                        table[(kind, "clean")] = (clean, m)
                        continue
                if row == "2x":
                    assert clean is not None
                    table[(kind, "2x")] = (2 * clean, bench.median(kind, 2 * clean))
                elif row == "flood":
                    table[(kind, "flood")] = (None, bench.median(kind, None))
                else:
                    table[(kind, row)] = (int(row), bench.median(kind, int(row)))
    print(f"\nperfdhcp -p {args.duration}, relayed, {args.clients} random MACs, -W 1; median of "
          f"{args.runs} runs; server on core {SERVER_CORE}, perfdhcp on core {CLIENT_CORE}")
    print(f"{'row':8} {'server':8} {'offered/s':>9} {'4-way/s':>9} {'drops %':>8} {'DO avg ms':>10} "
          f"{'RA avg ms':>10} {'RA max ms':>10}")
    for row in rows:
        for kind in servers:
            if (kind, row) not in table:
                continue
            offered, m = table[(kind, row)]
            print(f"{row:8} {kind:8} {offered or 'flood'!s:>9} {m['rate']:9.0f} {m['drops_pct']:8.2f} "
                  f"{m['do_avg_ms']:10.2f} {m['ra_avg_ms']:10.2f} {m['ra_max_ms']:10.2f}")
    if "bootd" in servers:
        print("\nratios of bootd's 4-way exchanges/s:")
        for row in rows:
            b = table[("bootd", row)][1]["rate"]
            parts = []
            for ref in ("kea", "dnsmasq"):
                if (ref, row) in table:
                    r = table[(ref, row)][1]["rate"]
                    parts.append(f"/{ref} {b:.0f}/{r:.0f} = {b / r if r else float('inf'):.2f}x")
            print(f"  {row:8} " + "   ".join(parts))
        if ("bootd", "clean") in table:
            peak = table[("bootd", "clean")][1]["rate"]
            for row in ("2x", "flood", "8000"):
                if ("bootd", row) in table and peak:
                    print(f"  bootd {row} / its clean rate: {table[('bootd', row)][1]['rate'] / peak:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
