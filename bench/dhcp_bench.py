"""bench/dhcp: Kea's perfdhcp against bootd and against dnsmasq, same lab, same flags, one run.

perfdhcp always acts as a relay (giaddr = its -l address), so this measures the
relayed path: perfdhcp sits in its own namespace at 198.19.0.2/16, both servers
serve 198.19.0.0/16 from 198.18.0.1 in the server namespace, both keep their
leases on disk (bootd: SQLite, group commit before each ACK; dnsmasq: its lease
file), and neither probes addresses before offering (bootd conflict_check =
false, dnsmasq --no-ping), so both do the same work. Server and perfdhcp are
pinned to different cores. Each (server, rate) pair runs several times; the
table shows medians, then bootd/dnsmasq ratios.

    bench/dhcp [--rates 500,2000,5000] [--duration 5] [--runs 3] [--clients 20000]
"""

from __future__ import annotations

import argparse
import random
import re
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
        """))
    return path


def start_server(kind: str, srv: Any, tmp: Path) -> subprocess.Popen[bytes]:
    if kind == "bootd":
        cmd = [sys.executable, "-m", "bootd", "serve", "--config", str(bootd_config(tmp))]
    else:
        cmd = ["dnsmasq", "--no-daemon", "--port=0", "--interface=eth0", "--bind-interfaces",
               "--dhcp-range=198.19.1.0,198.19.255.254,255.255.0.0,3600",
               "--dhcp-range=198.18.0.100,198.18.0.200,255.255.255.0,3600",
               f"--dhcp-leasefile={tmp / 'dnsmasq.leases'}", "--dhcp-lease-max=200000",
               "--no-ping", "--dhcp-authoritative", "--quiet-dhcp", "--no-resolv", "--no-hosts",
               "--user=root", "--group=root", "--log-facility=/dev/null"]
    log = (tmp / "server.log").open("wb")
    proc = srv.popen("taskset", "-c", SERVER_CORE, *cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    time.sleep(2.0 if kind == "bootd" else 0.5)  # bootd: imports and migrations before it binds
    if proc.poll() is not None:
        raise SystemExit(f"{kind} did not start: {(tmp / 'server.log').read_text()}")
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def perfdhcp(client: Any, rate: int, duration: int, macs: Path) -> dict[str, float]:
    res = client.run("taskset", "-c", CLIENT_CORE, "perfdhcp", "-4", "-l", "198.19.0.2", "-r", str(rate),
                     "-p", str(duration), "-M", str(macs), "-R", "1000000", "-W", "1",
                     "198.18.0.1", check=False, timeout=duration + 60)
    return parse_perfdhcp(res.stdout)


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="500,2000,5000")
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, default=20000)
    p.add_argument("--show-log", action="store_true", help="print the tail of bootd's log after each run")
    args = p.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
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
        for run in range(args.runs):
            for rate in rates:
                for kind in ("bootd", "dnsmasq"):
                    work = tmp / f"{kind}-{rate}-{run}"
                    work.mkdir()
                    proc = start_server(kind, srv, work)
                    try:
                        results.setdefault((kind, rate), []).append(
                            perfdhcp(client, rate, args.duration, macs))
                    finally:
                        stop_server(proc)
                    if kind == "bootd" and args.show_log:
                        print((work / "server.log").read_text()[-2000:])
    print(f"perfdhcp -r RATE -p {args.duration}, relayed, {args.clients} random MACs; "
          f"median of {args.runs} runs; server on core {SERVER_CORE}, perfdhcp on core {CLIENT_CORE}")
    print(f"{'server':8} {'offered/s':>9} {'4-way/s':>9} {'drops %':>8} {'DO avg ms':>10} "
          f"{'RA avg ms':>10} {'RA max ms':>10}")
    med: dict[tuple[str, int], dict[str, float]] = {}
    for (kind, rate), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        med[(kind, rate)] = m
        print(f"{kind:8} {rate:9d} {m['rate']:9.0f} {m['drops_pct']:8.1f} {m['do_avg_ms']:10.2f} "
              f"{m['ra_avg_ms']:10.2f} {m['ra_max_ms']:10.2f}")
    print("\nratio bootd/dnsmasq (4-way exchanges/s):")
    for rate in rates:
        b, d = med[("bootd", rate)]["rate"], med[("dnsmasq", rate)]["rate"]
        print(f"  offered {rate:6d}/s: {b:8.0f} / {d:8.0f} = {b / d if d else float('inf'):5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
