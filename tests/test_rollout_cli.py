"""`bootd rollout ...` in process: start --no-wait, watch --json lines, exit codes
(0 all ready, 1 paused by the canary with the reason on stderr), list/show, errors
as one line, and the live display's lines."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from test_cli import SUBNET, run

from bootd.backend import open_backend
from bootd.cli.rollout import bar, lines, watch
from bootd.config import load_config
from bootd.model.rollout import Outcome, Progress
from bootd.model.states import NodeState as S

PATH = (S.HARDWARE_INSTALLED, S.INSTALLING, S.INSTALLED, S.READYING, S.READY)


@pytest.fixture
def cfg(write_config: Any) -> str:
    return str(write_config(extra=SUBNET))


def report(cfg: str, *moves: tuple[str, S, str]) -> None:
    """The nodes' own reports (what their agents and installers post)."""
    async def go() -> None:
        async with open_backend(load_config(Path(cfg))) as b:
            for name, target, message in moves:
                await b.lifecycle.report(name, target, message=message)
    asyncio.run(go())


def discovered(capsys: pytest.CaptureFixture[str], cfg: str, rack: str, *names: str) -> None:
    for name in names:
        assert run(capsys, "--config", cfg, "nodes", "add", name, "--rack", rack)[0] == 0
    report(cfg, *((n, S.DISCOVERED, "") for n in names))


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_start_watch_until_ready(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    discovered(capsys, cfg, "r1", "a1", "a2")
    rc, out, err = run(capsys, "--config", cfg, "rollout", "start", "--rack", "r1", "--profile", "rocky-9",
                       "--max-parallel", "1", "--no-wait", "--json")
    assert (rc, err) == (0, "")
    started = json.loads(out)
    rid = started["id"]
    assert [n["name"] for n in started["nodes"]] == ["a1", "a2"]
    report(cfg, *((n, s, "") for n in ("a1", "a2") for s in PATH))
    rc, out, err = run(capsys, "--config", cfg, "rollout", "watch", str(rid), "--json")
    assert (rc, err) == (0, "")
    events = json_lines(out)
    assert {(e["name"], e["outcome"]) for e in events if e["event"] == "node"} == {
        ("a1", "ready"), ("a2", "ready")}
    assert events[-1]["event"] == "rollout" and events[-1]["state"] == "done"
    assert events[-1]["counts"]["ready"] == 2
    rc, out, _ = run(capsys, "--config", cfg, "rollout", "list")
    assert rc == 0
    assert out.splitlines()[1].split()[:5] == [str(rid), "done", "rocky-9", "2", "0"]
    rc, out, _ = run(capsys, "--config", cfg, "rollout", "show", str(rid))
    assert "selected:     rack r1" in out and "a2    r1    ready" in out


def test_canary_pauses_and_exits_nonzero(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    discovered(capsys, cfg, "r2", "b1", "b2", "b3")
    rc, out, _ = run(capsys, "--config", cfg, "rollout", "start", "b1", "b2", "b3", "--profile", "rocky-9",
                     "--max-failures", "1", "--no-wait", "--json")
    rid = json.loads(out)["id"]
    report(cfg, ("b1", S.PROBLEM, "no disk"), ("b2", S.PROBLEM, "kernel panic"))
    rc, out, err = run(capsys, "--config", cfg, "rollout", "watch", str(rid), "--json")
    assert rc == 1
    assert err == (f"bootd: rollout {rid} paused: 2 nodes in problem (b1: no disk, b2: kernel panic), "
                   "more than --max-failures 1: paused\n")
    last = json_lines(out)[-1]
    assert (last["state"], last["failures"], last["max_failures"]) == ("paused", 2, 1)
    rc, out, _ = run(capsys, "--config", cfg, "rollout", "resume", str(rid))
    assert rc == 0 and "state:        running" in out and "failures:     2 (max 2)" in out
    rc, out, _ = run(capsys, "--config", cfg, "rollout", "cancel", str(rid), "--json")
    shown = json.loads(out)
    assert shown["state"] == "cancelled"
    assert {n["name"]: n["outcome"] for n in shown["nodes"]} == {"b1": "problem", "b2": "problem",
                                                                 "b3": "cancelled"}


@pytest.mark.parametrize(("argv", "error"), [
    (["rollout", "start", "--rack", "r1", "--profile", "nope"],
     "bootd: error: rollout: no profile named 'nope' (known: rhel-5.6, rocky-9, ubuntu-20.04, ubuntu-24.04)"),
    (["rollout", "start", "--rack", "r9", "--profile", "rocky-9"], "bootd: error: no nodes in rack r9"),
    (["rollout", "start", "--profile", "rocky-9"],
     "bootd: error: select nodes by --rack, by name, or --all"),
    (["rollout", "pause", "7"], "bootd: error: no rollout 7"),
])
def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], cfg: str, argv: list[str],
                             error: str) -> None:
    rc, _, err = run(capsys, "--config", cfg, *argv)
    assert (rc, err.splitlines()) == (1, [error])


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_display(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    discovered(capsys, cfg, "r1", "a1")
    discovered(capsys, cfg, "r2", "b1")
    rc, out, _ = run(capsys, "--config", cfg, "rollout", "start", "--rack", "r1", "--rack", "r2",
                     "--profile", "rocky-9", "--no-wait", "--json")
    rid = json.loads(out)["id"]
    report(cfg, *(("a1", s, "") for s in PATH), ("b1", S.PROBLEM, "bad disk"))

    async def go() -> tuple[int, str]:
        async with open_backend(load_config(Path(cfg))) as b:
            tty = Tty()
            return await watch(b.rollouts, rid, as_json=False, out=tty), tty.getvalue()

    rc, text = asyncio.run(go())
    assert rc == 1  # one node in problem
    shown = text.splitlines()
    assert shown[0].startswith(f"rollout {rid}  rocky-9  done  00:00:")
    assert shown[0].endswith("failures 1/2  waiting for a slot 0")
    assert shown[1] == (f"  r1  {bar(Progress({Outcome.READY: 1}))}  "
                        "pending 0  active 0  ready 1  problem 0  cancelled 0")
    assert shown[2].startswith("  r2  [!!!!") and "problem 1" in shown[2]
    assert shown[3] == "  done: 1 ready, 1 in problem, 0 cancelled"


def test_bar_and_lines_shape() -> None:
    p = Progress({Outcome.READY: 1, Outcome.ACTIVE: 1, Outcome.PENDING: 2})
    assert bar(p, 8) == "[##>>....]"
    assert bar(Progress({}), 4) == "[    ]"
    assert callable(lines)
