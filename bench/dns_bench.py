"""bench/dns: bootd's DNS against dnsmasq serving the same names, same lab, same client, one run.

The names: NODES nodes with admin addresses and BMCs in one /16 subnet and
domain (bootd: its inventory, written through the lifecycle service; dnsmasq:
the same names in an --addn-hosts file, with --local so it answers missing
names itself). The queries: dnsperf replays a file that is a mix of A for
nodes and BMCs, PTR for their addresses and a few missing names (NXDOMAIN),
shuffled. Each server runs alone in the server namespace pinned to one core;
dnsperf runs in the client namespace pinned to the other, `-c CLIENTS -q
OUTSTANDING` for `--seconds`, several runs per server; the table shows
the median queries/s and bootd's ratio to dnsmasq.

Because dnsperf replays its file in a loop, bootd answers most queries from
its reply cache (packed replies by query bytes, bootd/dns/server.py);
`--cold 200000` randomises the names' letter case so that nearly every query
is new, which measures the parse -> decide -> pack path.

    bench/dns [--runs 3] [--seconds 5] [--nodes 2000] [--cold LINES]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from netlab import Lab  # noqa: E402

from bootd.backend import open_backend  # noqa: E402
from bootd.config import load_config  # noqa: E402
from bootd.model.records import BmcCredentials, NewNode  # noqa: E402

SERVER, CLIENT = "198.18.0.1", "198.18.0.2"
SERVER_CORE, CLIENT_CORE = "0", "1"
DOMAIN = "rack.bench"


def addresses(n: int) -> tuple[IPv4Address, IPv4Address]:
    """Node n's admin address (198.18.1.0 up) and its BMC's (198.18.128.0 up)."""
    return IPv4Address(int(IPv4Address("198.18.1.0")) + n), IPv4Address(int(IPv4Address("198.18.128.0")) + n)


def write_config(tmp: Path) -> Path:
    path = tmp / "bootd.toml"
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{SERVER}"
        interfaces = ["eth0"]
        state_dir = "{tmp / 'state'}"
        log_level = "warning"
        [services]
        dhcp = false
        tftp = false
        http = false
        [[subnets]]
        cidr = "198.18.0.0/16"
        domain = "{DOMAIN}"
        static_range = "198.18.1.0-198.18.127.255"
        bmc_range = "198.18.128.0-198.18.255.254"
        """))
    return path


async def add_nodes(config_path: Path, nodes: int) -> None:
    config = load_config(config_path)
    async with open_backend(config) as backend:
        for n in range(nodes):
            ip, bmc = addresses(n)
            mac = f"52:54:00:{n >> 16 & 0xFF:02x}:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}"
            await backend.lifecycle.add(NewNode(f"n{n:05d}", (mac,), admin_ip=ip), actor="bench",
                                        bmc=BmcCredentials(str(bmc), "admin", "secret"))


def write_dnsmasq_hosts(tmp: Path, nodes: int) -> Path:
    path = tmp / "hosts"
    lines = [f"{SERVER} bootd.{DOMAIN}"]
    for n in range(nodes):
        ip, bmc = addresses(n)
        lines += [f"{ip} n{n:05d}.{DOMAIN}", f"{bmc} n{n:05d}-bmc.{DOMAIN}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_queries(tmp: Path, nodes: int, cold: int = 0) -> Path:
    """The query mix, shuffled. `cold`: that many lines, each name in a random
    letter case (as 0x20-randomising resolvers send them), so that nearly every
    query's bytes are new and bootd's reply cache misses: its uncached path."""
    rng = random.Random(7)
    queries = []
    for n in range(nodes):
        ip, _ = addresses(n)
        queries += [f"n{n:05d}.{DOMAIN} A", f"n{n:05d}-bmc.{DOMAIN} A", f"{ip.reverse_pointer} PTR"]
    queries += [f"missing{i}.{DOMAIN} A" for i in range(nodes // 10)]
    if cold:
        queries = ["".join(c.upper() if rng.random() < 0.5 else c for c in q[:-2]) + q[-2:]
                   for q in rng.choices(queries, k=cold)]
    rng.shuffle(queries)
    path = tmp / "queries"
    path.write_text("\n".join(queries) + "\n")
    return path


def start(kind: str, srv: Any, tmp: Path, config: Path, hosts: Path) -> subprocess.Popen[bytes]:
    pin = ["taskset", "-c", SERVER_CORE]
    if kind == "bootd":
        argv = [*pin, sys.executable, "-m", "bootd", "serve", "--config", str(config)]
    else:
        argv = [*pin, "dnsmasq", "--no-daemon", "--port=53", f"--listen-address={SERVER}",
                "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
                f"--local=/{DOMAIN}/",
                "--local=/18.198.in-addr.arpa/", "--cache-size=10000", "--user=root", "--group=root",
                f"--pid-file={tmp / 'dnsmasq.pid'}", "--log-facility=-", "--quiet-dhcp"]
    proc: subprocess.Popen[bytes] = srv.popen(*argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
    return proc


def wait_ready(cli: Any, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        out = cli.run("dig", f"@{SERVER}", "+short", "+time=1", "+tries=1", f"n00000.{DOMAIN}", check=False)
        if re.search(r"^\d+\.\d+\.\d+\.\d+$", out.stdout, re.MULTILINE):  # not ";; communications error"
            return
        time.sleep(0.2)
    raise SystemExit(f"server did not answer (exit {proc.poll()})")


def dnsperf(cli: Any, queries: Path, seconds: int, clients: int, outstanding: int) -> tuple[float, str]:
    res = cli.run("taskset", "-c", CLIENT_CORE, "dnsperf", "-s", SERVER, "-d", str(queries),
                  "-l", str(seconds), "-c", str(clients), "-q", str(outstanding), "-t", "2",
                  timeout=seconds + 60, check=False)
    qps = re.search(r"Queries per second:\s+([\d.]+)", res.stdout)
    lost = re.search(r"Queries lost:\s+(\d+ \([\d.]+%\))", res.stdout)
    if qps is None:
        raise SystemExit(f"dnsperf failed: {res.stdout}{res.stderr}")
    return float(qps.group(1)), lost.group(1) if lost else "?"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--outstanding", type=int, default=100)
    parser.add_argument("--cold", type=int, default=0, metavar="LINES",
                        help="that many case-randomised queries: bootd's uncached path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bootd-dns-bench-") as tmp_name, Lab() as lab:
        tmp = Path(tmp_name)
        srv, cli = lab.add_host("srv", f"{SERVER}/16"), lab.add_host("cli", f"{CLIENT}/16")
        config = write_config(tmp)
        asyncio.run(add_nodes(config, args.nodes))
        hosts, queries = write_dnsmasq_hosts(tmp, args.nodes), write_queries(tmp, args.nodes, args.cold)
        print(f"{args.nodes} nodes, {len(queries.read_text().splitlines())} queries in the file; "
              f"dnsperf -c {args.clients} -q {args.outstanding}, {args.seconds} s x {args.runs} runs")
        medians: dict[str, float] = {}
        for kind in ("bootd", "dnsmasq"):
            proc = start(kind, srv, tmp, config, hosts)
            try:
                wait_ready(cli, proc)
                runs = [dnsperf(cli, queries, args.seconds, args.clients, args.outstanding)
                        for _ in range(args.runs)]
            finally:
                stop(proc)
            medians[kind] = statistics.median(q for q, _ in runs)
            print(f"{kind:8} median {medians[kind]:>10,.0f} queries/s   runs: "
                  + ", ".join(f"{q:,.0f} (lost {lost})" for q, lost in runs))
        print(f"bootd / dnsmasq: {medians['bootd'] / medians['dnsmasq']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
