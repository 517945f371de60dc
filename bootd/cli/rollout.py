"""`bootd rollout ...`: install many nodes with one command and watch them.

`start` records the rollout and hands its nodes to the lifecycle (through the
power service's throttle: staggered power-ons), then watches unless --no-wait.
Watching drives the rollout too (bootd.fleet.rollout: every pass is idempotent,
safe beside the daemon's own driver), so a rollout moves on even with no
daemon's driver running. On a terminal the watch redraws a few lines in place
(per rack: a bar and the count of each outcome; nodes waiting for a slot,
elapsed time, failures against --max-failures); otherwise, or with --json, it
prints one JSON object per line per change: {"event": "node", ...} when a
node's outcome changes, {"event": "rollout", ...} when the totals or the state
do. Exit status: 0 when every node is ready, 1 otherwise (some in problem, the
rollout paused, with the reason on stderr, or cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

from bootd.backend import open_backend
from bootd.cli.output import print_json, table
from bootd.config import Config
from bootd.fleet.rollout import DEFAULT_MAX_FAILURES, Rollouts
from bootd.http.rollouts import node_json, rollout_json
from bootd.model.rollout import Outcome, Progress, RolloutSelector, RolloutState, RolloutView, by_rack

ACTOR = "cli"
INTERVAL = 1.0   # seconds between watch passes
BAR = 24
MAX_RACK_LINES = 12  # more racks than this: one line for all of them
MARK = {Outcome.READY: "#", Outcome.PROBLEM: "!", Outcome.ACTIVE: ">", Outcome.PENDING: ".",
        Outcome.CANCELLED: "-"}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    ro = sub.add_parser("rollout", parents=[common], help="install many nodes with one command")
    rsub = ro.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = rsub.add_parser("start", parents=[common], help="allocate or reinstall nodes in waves, and watch")
    start.add_argument("names", nargs="*", metavar="NAME")
    start.add_argument("--rack", action="append", default=[], help="every node in this rack (repeat)")
    start.add_argument("--all", action="store_true", help="every node")
    start.add_argument("--profile", required=True, help="OS profile to install")
    start.add_argument("--max-parallel", type=int, metavar="N",
                       help="this rollout's nodes installing at once")
    start.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES, metavar="K",
                       help=f"pause past K nodes in problem (default {DEFAULT_MAX_FAILURES})")
    start.add_argument("--no-wait", action="store_true", help="do not watch")
    start.add_argument("--json", action="store_true")
    ls = rsub.add_parser("list", parents=[common], help="rollouts, newest first")
    ls.add_argument("--json", action="store_true")
    for action, text in (("show", "one rollout and its nodes"), ("pause", "stop admitting its nodes"),
                         ("resume", "admit its nodes again"), ("cancel", "give back nodes not yet admitted"),
                         ("watch", "follow a rollout until it ends")):
        cmd = rsub.add_parser(action, parents=[common], help=text)
        cmd.add_argument("id", type=int)
        cmd.add_argument("--json", action="store_true")


async def run(args: argparse.Namespace, config: Config) -> int:
    async with open_backend(config) as b:
        rollouts = b.rollouts
        if args.action == "start":
            selector = RolloutSelector.parse(args.names, args.rack, args.all)
            view = await rollouts.start(selector, args.profile, actor=ACTOR, max_parallel=args.max_parallel,
                                        max_failures=args.max_failures)
            if args.no_wait:
                _print_view(view, args.json)
                return 0
            return await watch(rollouts, view.rollout.id, as_json=args.json)
        if args.action == "list":
            views = await rollouts.list()
            if args.json:
                print_json({"rollouts": [rollout_json(v, nodes=False) for v in views]})
            else:
                header = ["ID", "STATE", "PROFILE", "NODES", *(o.value.upper() for o in Outcome), "REASON"]
                print(table([_row(v) for v in views], header) if views else "no rollouts")
            return 0
        if args.action == "watch":
            return await watch(rollouts, args.id, as_json=args.json)
        if args.action == "show":
            view = await rollouts.view(args.id)
        elif args.action == "pause":
            view = await rollouts.pause(args.id, actor=ACTOR)
        elif args.action == "resume":
            view = await rollouts.resume(args.id, actor=ACTOR)
        else:
            view = await rollouts.cancel(args.id, actor=ACTOR)
        _print_view(view, args.json)
        return 0


def _row(v: RolloutView) -> list[str]:
    p = v.progress
    return [str(v.rollout.id), v.rollout.state.value, v.rollout.profile, str(p.total),
            *(str(p.counts.get(o, 0)) for o in Outcome), v.rollout.reason or "-"]


def _print_view(view: RolloutView, as_json: bool) -> None:
    if as_json:
        print_json(rollout_json(view))
        return
    r, p = view.rollout, view.progress
    for key, value in (("rollout", str(r.id)), ("state", r.state.value), ("profile", r.profile),
                       ("selected", r.selector.describe()), ("max parallel", str(r.max_parallel or "-")),
                       ("failures", f"{p.failures} (max {r.max_failures})"), ("reason", r.reason or "-"),
                       ("started", f"{r.created_at.isoformat(timespec='seconds')} by {r.actor}")):
        print(f"{key + ':':14}{value}")
    print(table([[n.name, n.rack or "-", n.outcome.value, n.detail] for n in view.nodes],
                ["NODE", "RACK", "OUTCOME", "DETAIL"]))


# -- watching -----------------------------------------------------------------------------


def _ended(view: RolloutView) -> bool:
    return view.rollout.state is not RolloutState.RUNNING or view.progress.finished


def exit_code(view: RolloutView) -> int:
    p = view.progress
    return 0 if p.total and p.counts.get(Outcome.READY, 0) == p.total else 1


def bar(p: Progress, width: int = BAR) -> str:
    if not p.total:
        return "[" + " " * width + "]"
    cells = ""
    for outcome in (Outcome.READY, Outcome.PROBLEM, Outcome.CANCELLED, Outcome.ACTIVE, Outcome.PENDING):
        cells += MARK[outcome] * round(width * p.counts.get(outcome, 0) / p.total)
    return "[" + cells[:width].ljust(width, MARK[Outcome.PENDING]) + "]"


def _counts(p: Progress) -> str:
    return "  ".join(f"{o.value} {p.counts.get(o, 0)}" for o in Outcome)


def lines(view: RolloutView, elapsed: float) -> list[str]:
    """The live display: a headline, then one line per rack (or one for all)."""
    r, p = view.rollout, view.progress
    minutes, seconds = divmod(int(elapsed), 60)
    clock = f"{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}"
    head = (f"rollout {r.id}  {r.profile}  {r.state.value}  {clock}  failures {p.failures}/{r.max_failures}"
            f"  waiting for a slot {p.waiting}")
    racks = by_rack(view.nodes)
    if len(racks) > MAX_RACK_LINES:
        racks = [(f"{len(racks)} racks", p)]
    width = max(len(rack) for rack, _ in racks) if racks else 0
    out = [head] + [f"  {rack.ljust(width)}  {bar(q)}  {_counts(q)}" for rack, q in racks]
    if r.state is not RolloutState.RUNNING and r.reason:
        out.append(f"  {r.state.value}: {r.reason}")
    return out


def _summary(view: RolloutView, elapsed: float) -> dict[str, Any]:
    out = rollout_json(view, nodes=False)
    out["event"] = "rollout"
    out["elapsed"] = round(elapsed, 1)
    return out


async def watch(rollouts: Rollouts, rollout_id: int, *, as_json: bool, out: TextIO | None = None,
                interval: float = INTERVAL) -> int:
    out = out if out is not None else sys.stdout
    live = not as_json and out.isatty()
    began = time.monotonic()
    seen: dict[str, tuple[Outcome, str]] = {}
    last: dict[str, Any] | None = None
    drawn = 0
    while True:
        view = await rollouts.drive(rollout_id)
        elapsed = time.monotonic() - began
        if live:
            text = lines(view, elapsed)
            out.write((f"\x1b[{drawn}F\x1b[J" if drawn else "") + "\n".join(text) + "\n")
            drawn = len(text)
        else:
            for n in view.nodes:
                if seen.get(n.name) != (n.outcome, n.detail):
                    seen[n.name] = (n.outcome, n.detail)
                    out.write(json.dumps({"event": "node", "rollout": rollout_id, **node_json(n)}) + "\n")
            summary = _summary(view, elapsed)
            unchanged = last is not None and {**last, "elapsed": 0, "updated_at": 0} == {
                **summary, "elapsed": 0, "updated_at": 0}
            if not unchanged:
                out.write(json.dumps(summary) + "\n")
                last = summary
        out.flush()
        if _ended(view):
            break
        await asyncio.sleep(interval)
    if view.rollout.state in (RolloutState.PAUSED, RolloutState.CANCELLED):
        print(f"bootd: rollout {rollout_id} {view.rollout.state.value}: {view.rollout.reason}",
              file=sys.stderr)
    return exit_code(view)
