"""bench/fleet: N simulated machines against a real bootd in the namespaced lab, one run.

    bench/fleet [--machines 10000] [--racks 50] [--until discovered|ready] [--loss 0.01]
                [--spread S] [--max-global N --max-per-rack N] [--json]

Lab: bootd in a server namespace at 198.18.0.1 (pinned to core 0, like
bench/dhcp), the simulator in a client namespace at 198.18.0.2 (core 1). Rack
k's relay is 198.19.k.1; bootd serves one 198.19.k.0/24 subnet per rack. The
client namespace owns all of 198.19.0.0/16 through a `local` route on lo
(AnyIP), so each machine's HTTP leaves from its leased address, and the server
namespace routes 198.19.0.0/16 through it (the relay is a router). Everything is removed afterwards.

`--until ready` is the lifecycle tier: once every machine is `discovered` the
bench rolls them out with one command (`bootd rollout start --all --profile rocky-9`;
again for stragglers when discovery stalls) and the machines walk on to `ready`
under the [waves] limits. At the end: machines per state, first DISCOVER to
all at the goal, p50/p99 time per state, bootd's peak RSS and CPU seconds, the
inventory (lost nodes, nodes in problem) and, for the lifecycle, the most
nodes ever in the heavy states at once, from the event log.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench.fleet.machine import Timing  # noqa: E402
from bootd.config.sections import DhcpConfig  # noqa: E402

SERVER_CORE, CLIENT_CORE = "0", "1"
SERVER, CLIENT = "198.18.0.1", "198.18.0.2"
PROFILE = "rocky-9"
HEAVY = ("hardware-installing", "installing")


def bootd_config(tmp: Path, args: argparse.Namespace) -> Path:
    fields = {f.name for f in dataclasses.fields(DhcpConfig)}
    # Raised registration limits where bootd has them ([dhcp] register_rate/burst, per relay).
    limits = "register_rate = 100000\nregister_burst = 1000000\n" if "register_rate" in fields else ""
    subnets = "".join(textwrap.dedent(f"""\
        [[subnets]]
        cidr = "198.19.{k}.0/24"
        router = "198.19.{k}.1"
        lease_time = 3600
        dynamic_pool = "198.19.{k}.10-198.19.{k}.254"
        rack = "r{k:02d}"
        """) for k in range(args.racks))
    path = tmp / "bootd.toml"
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{SERVER}"
        interfaces = ["eth0"]
        state_dir = "{tmp / 'state'}"
        log_level = "warning"
        [services]
        tftp = false
        dns = false
        [http]
        listen = "{SERVER}:8080"
        [install]
        root_password_hash = "$6$fleet$hash"
        [rogue]
        probe_interval = 0
        [ra]
        enabled = false
        [waves]
        max_global = {args.max_global}
        max_per_rack = {args.max_per_rack}
        max_per_daemon = {args.max_global}
        wait = {args.wave_wait}
        """) + "[dhcp]\nconflict_check = false\n" + limits + textwrap.dedent("""\
        [[subnets]]
        cidr = "198.18.0.0/24"
        dynamic_pool = "198.18.0.100-198.18.0.200"
        """) + subnets)
    return path


def timing(args: argparse.Namespace) -> Timing:
    return Timing(post=args.post, kernel=args.kernel, task=args.task, install=args.install,
                  os_boot=args.os_boot, poll=args.poll, reboot=args.reboot,
                  unknown_reboot=args.unknown_reboot, dhcp_timeout=args.dhcp_timeout,
                  dhcp_tries=args.dhcp_tries, http_timeout=args.http_timeout)


def proc_stats(pid: int) -> dict[str, float]:
    """Peak and current RSS (MB) and CPU seconds of a process, from /proc."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    return out


def bootd_cli(config: Path, *argv: str) -> str:
    res = subprocess.run([sys.executable, "-m", "bootd", *argv, "--config", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    if res.returncode:
        raise RuntimeError(f"bootd {' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def rollout(config: Path) -> int | None:
    """One command for every discovered node: `bootd rollout start --all` (a node still
    `discovering`, or already in a rollout, is skipped by the rollout itself). The
    rollout's id, or None if it could not start (reported, not fatal)."""
    try:
        out = bootd_cli(config, "rollout", "start", "--all", "--profile", PROFILE, "--no-wait", "--json")
    except RuntimeError as exc:
        print(f"  {str(exc)[:300]}", file=sys.stderr, flush=True)
        return None
    return int(json.loads(out)["id"])


def rollouts_summary(config: Path) -> list[dict[str, Any]]:
    """Each rollout's end: state, reason, nodes per outcome (after the run)."""
    views = json.loads(bootd_cli(config, "rollout", "list", "--json"))["rollouts"]
    return [{k: v.get(k) for k in ("id", "state", "reason", "counts")} for v in views]


def heavy_peak(db: Path) -> dict[str, int]:
    """Most install slots held at once, in all and per heavy state and in one rack,
    replaying the event log in id order (the order of commits on SQLite): a slot starts
    at the node's `admitted` event (message slot=STATE) and ends at its next move out of
    that state, as tests/waves_check.py reads it. (A node allocated but not yet admitted
    is in its heavy state without a slot: it boots the wait script.) Read-only, after
    the run. Also the most nodes at once in the heavy states, slot or not."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT e.node_id, e.kind, e.from_state, e.to_state, e.message, n.rack "
                           "FROM events e LEFT JOIN nodes n ON n.id = e.node_id "
                           "WHERE e.kind IN ('admitted', 'transition', 'timeout') ORDER BY e.id").fetchall()
    finally:
        con.close()
    held: dict[int, tuple[str, str | None]] = {}  # node id -> (slot state, rack)
    in_state: dict[int, str] = {}
    peaks = {"slots_peak": 0, "rack_slots_peak": 0, "in_heavy_states_peak": 0,
             **{f"{state}_slots_peak": 0 for state in HEAVY}}
    transitions = 0
    for node_id, kind, from_state, to_state, message, rack in rows:
        if kind == "admitted":
            if node_id not in held:
                held[node_id] = (str(message).removeprefix("slot="), rack)
        else:
            transitions += kind == "transition"
            slot = held.get(node_id)
            if slot is not None and from_state == slot[0] and (
                    (to_state is not None and to_state != slot[0]) or kind == "timeout"):
                del held[node_id]
            if to_state in HEAVY:
                in_state[node_id] = to_state
            elif to_state is not None:
                in_state.pop(node_id, None)
        peaks["slots_peak"] = max(peaks["slots_peak"], len(held))
        peaks["in_heavy_states_peak"] = max(peaks["in_heavy_states_peak"], len(in_state))
        for state in HEAVY:
            n = sum(1 for s, _ in held.values() if s == state)
            peaks[f"{state}_slots_peak"] = max(peaks[f"{state}_slots_peak"], n)
        per_rack: dict[str | None, int] = {}
        for _, r in held.values():
            if r is not None:
                per_rack[r] = per_rack.get(r, 0) + 1
        peaks["rack_slots_peak"] = max([peaks["rack_slots_peak"], *per_rack.values()])
    return {**peaks, "transitions": transitions}


async def run_sim(client_ns: str, plan: dict[str, Any], config: Path, until: str) -> dict[str, Any]:
    """The simulator in the client namespace; allocates once all are discovered (lifecycle)."""
    cmd = ["ip", "netns", "exec", client_ns, "taskset", "-c", CLIENT_CORE, sys.executable, "-m",
           "bench.fleet.sim", json.dumps(plan)]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=subprocess.PIPE, limit=1 << 24)
    assert proc.stdout is not None
    allocated, result, last = 0, None, 0.0
    stalled_since, last_discovered = time.monotonic(), -1
    async for raw in proc.stdout:
        line = json.loads(raw)
        if "result" in line:
            result = line["result"]
            continue
        census = line["progress"]
        discovered = census.get("discovered", 0)
        if time.monotonic() - last >= 5:
            print(f"  t={line['t']:7.1f}s " + " ".join(f"{k}={v}" for k, v in census.items()),
                  file=sys.stderr, flush=True)
            last = time.monotonic()
        if discovered != last_discovered:
            stalled_since, last_discovered = time.monotonic(), discovered
        # Allocate once all are discovered, or whatever is discovered when discovery stalls
        # (machines bootd has not recorded yet are still rebooting), and again later.
        if until == "ready" and discovered > allocated and (
                discovered == plan["machines"] or time.monotonic() - stalled_since > 30):
            allocated = discovered
            print(f"  bootd rollout start --all --profile {PROFILE} ({discovered} discovered)",
                  file=sys.stderr, flush=True)
            rid = await asyncio.to_thread(rollout, config)
            print(f"  rollout {rid} started", file=sys.stderr, flush=True)
    await proc.wait()
    if result is None:
        raise RuntimeError(f"the simulator failed (exit {proc.returncode})")
    return dict(result)


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling bootd (non-blocking: it does not stop bootd to read its stacks)."""
    return subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                             "--rate", "50", "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes], out: Path, top: int = 15) -> dict[str, Any]:
    """Where bootd spent its samples: the functions most often on the stack (inclusive)
    and at its top (self), from py-spy's collapsed stacks."""
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in {f for f in frames if "bootd/" in f}:  # bootd's own frames, not the loop's
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count

    def best(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(frame, round(100 * n / total, 1)) for frame, n in ranked]
    return {"samples": total, "inclusive": best(inclusive), "self": best(own)}


def inventory(config: Path) -> dict[str, Any]:
    nodes = json.loads(bootd_cli(config, "nodes", "list", "--json"))["nodes"]
    states: dict[str, int] = {}
    for n in nodes:
        states[n["state"]] = states.get(n["state"], 0) + 1
    return {"nodes": len(nodes), "states": states}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bootd_proc import Notifications, env_for  # type: ignore[import-not-found]
    from netlab import Lab  # type: ignore[import-not-found]

    plan = {"machines": args.machines, "racks": args.racks, "server": SERVER,
            "timing": dataclasses.asdict(timing(args)), "until": args.until, "loss": args.loss,
            "spread": args.spread, "http_concurrency": args.http_concurrency, "deadline": args.deadline,
            "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="bootd-fleet-") as tmpdir, Lab() as lab:
        tmp = Path(tmpdir)
        srv = lab.add_host("srv", f"{SERVER}/24")
        client = lab.add_host("fleet", f"{CLIENT}/24")
        # Routed through the client, as racks behind a relay are: bootd then has no ARP
        # entry for a machine's address (it checks ARP only on directly attached links).
        srv.run("ip", "route", "add", "198.19.0.0/16", "via", CLIENT)
        # AnyIP: every relay and leased address is this namespace's own.
        client.run("ip", "route", "add", "local", "198.19.0.0/16", "dev", "lo")
        for key in ("net.core.somaxconn=4096", "net.ipv4.ip_local_port_range=10000 65000"):
            client.run("sysctl", "-qw", key, check=False)
        srv.run("sysctl", "-qw", "net.core.somaxconn=4096", check=False)
        config = bootd_config(tmp, args)
        notify = Notifications(tmp / "notify.sock")
        log = (tmp / "bootd.log").open("wb")
        # stderr to a file: a pipe nobody reads would block bootd once it fills.
        proc = srv.popen("taskset", "-c", SERVER_CORE, sys.executable, "-m", "bootd", "serve", "--config",
                         str(config), cwd=ROOT, env=env_for(notify), stdout=subprocess.DEVNULL, stderr=log)
        try:
            notify.wait_for("READY", "1")
            before = proc_stats(proc.pid)
            spy = start_profile(proc.pid, tmp / "profile.txt") if args.profile else None
            result = asyncio.run(run_sim(client.ns, plan, config, args.until))
            if spy is not None:
                result["profile"] = stop_profile(spy, tmp / "profile.txt")
            result["bootd"] = {k: round(v - before.get(k, 0.0) if k == "cpu_s" else v, 1)
                               for k, v in proc_stats(proc.pid).items()}
            result["inventory"] = inventory(config)
            result["events"] = heavy_peak(tmp / "state" / "bootd.db")
            if args.until == "ready":
                result["rollouts"] = rollouts_summary(config)
        finally:
            proc.terminate()
            code = proc.wait(timeout=60)
            notify.close()
            log.close()
        result["bootd_log_tail"] = (tmp / "bootd.log").read_text(errors="replace")[-3000:]
        result["bootd_exit"] = code
    return result


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    n = r["machines"]
    print(f"fleet: {n} machines, {args.racks} racks, until {r['until']}, loss {args.loss:.1%}, "
          f"spread {args.spread}s; bootd on core {SERVER_CORE}, simulator on core {CLIENT_CORE}")
    print("reached: " + ", ".join(f"{k} {v}" for k, v in r["reached"].items()))
    print(f"first DISCOVER to all {r['until']}: {r['first_discover_to_all']} s "
          f"(to the last that got there: {r['first_discover_to_last']} s) "
          f"per machine p50 {r['to_goal_p50']} s, p99 {r['to_goal_p99']} s; wall {r['wall']} s")
    print(f"{'state':20} {'n':>6} {'p50 s':>8} {'p99 s':>8} {'mean s':>8}")
    for state, s in r["per_state"].items():
        print(f"{state:20} {s['n']:6d} {s['p50']:8.2f} {s['p99']:8.2f} {s['mean']:8.2f}")
    b = r["bootd"]
    print(f"bootd: peak RSS {b.get('VmHWM', 0):.0f} MB (now {b.get('VmRSS', 0):.0f} MB), "
          f"CPU {b.get('cpu_s', 0):.1f} s; simulator CPU {r['sim_cpu']} s, "
          f"{r['http_requests']} HTTP requests")
    inv = r["inventory"]
    # A machine that reached `discovered` is in the inventory unless bootd lost it; one
    # that never did may simply not have been recorded yet (it keeps rebooting).
    lost = max(r["reached"].get("discovered", 0) - inv["nodes"], 0)
    print(f"inventory: {inv['nodes']} nodes ({', '.join(f'{k} {v}' for k, v in inv['states'].items())}); "
          f"lost {lost}, never recorded {max(n - inv['nodes'], 0)}, "
          f"in problem {inv['states'].get('problem', 0)}")
    if r["until"] == "ready":
        e = r["events"]
        print(f"install slots held at once, peak (event log): {e['slots_peak']} (hardware-installing "
              f"{e['hardware-installing_slots_peak']}, installing {e['installing_slots_peak']}), in one "
              f"rack {e['rack_slots_peak']}; [waves] max_global {args.max_global}, max_per_rack "
              f"{args.max_per_rack}; nodes in the heavy states at once (admitted or waiting) "
              f"{e['in_heavy_states_peak']}")
        for ro in r.get("rollouts", []):
            print(f"rollout {ro['id']}: {ro['state']} ({ro['reason'] or '-'}); {ro['counts']}")
    print("machine counters: " + ", ".join(f"{k} {v}" for k, v in r["counts"].items()))
    print("transport: " + (", ".join(f"{k} {v}" for k, v in r["transport"].items()) or "clean"))
    if "profile" in r:
        p = r["profile"]
        print(f"bootd profile (py-spy, {p['samples']} samples); self %:")
        for frame, pct in p["self"]:
            print(f"  {pct:5.1f}  {frame}")
        print("inclusive %:")
        for frame, pct in p["inclusive"]:
            print(f"  {pct:5.1f}  {frame}")
    print(f"outcomes: {r['outcomes']}, unfinished {r['unfinished']}; bootd exit {r['bootd_exit']}")


def parser() -> argparse.ArgumentParser:
    d = Timing()
    p = argparse.ArgumentParser(prog="bench/fleet", description=__doc__.splitlines()[0])
    p.add_argument("--machines", type=int, default=10000)
    p.add_argument("--racks", type=int, help="default: one per 200 machines (a /24 per rack)")
    p.add_argument("--until", choices=["discovered", "ready"], default="discovered")
    p.add_argument("--loss", type=float, default=0.0, help="fraction of datagrams dropped each way")
    p.add_argument("--spread", type=float, default=0.0, help="seconds over which machines power on")
    p.add_argument("--http-concurrency", type=int, default=256)
    p.add_argument("--deadline", type=float, default=900.0, help="seconds before the simulator gives up")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-global", type=int, default=8, help="[waves] max_global")
    p.add_argument("--max-per-rack", type=int, default=4, help="[waves] max_per_rack")
    p.add_argument("--wave-wait", type=int, default=15, help="[waves] wait")
    for name in ("post", "kernel", "task", "install", "os_boot", "poll", "reboot", "unknown_reboot",
                 "dhcp_timeout", "http_timeout"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name),
                       help="firmware/software timing, seconds")
    p.add_argument("--dhcp-tries", type=int, default=d.dhcp_tries)
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    p.add_argument("--profile", action="store_true", help="sample bootd with py-spy during the run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGTERM (e.g. timeout(1)) unwinds like ^C, so the lab's namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.racks is None:
        args.racks = max(1, -(-args.machines // 200))
    if args.machines > args.racks * 245 or args.racks > 256:
        raise SystemExit("at most 245 machines per rack (a /24 each) and 256 racks")
    result = run(args)
    report(result, args)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
