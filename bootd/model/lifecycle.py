"""The PXE state machine, as data: who may move a node from which state to which.

Crowbar's lineage: discovering -> discovered -> (allocated) -> hardware-installing
-> hardware-installed -> installing -> installed -> readying -> ready, with
problem, reset, reinstall and delete. Two kinds of actor move nodes:

- the node itself (its discovery agent, its installer's callbacks, its
  first-boot script), authenticated by the node's own token;
- the operator (API token, CLI), and bootd's own timers.

`apply(node, event, now, rules)` is the one function that decides a move: it
checks the event against TRANSITIONS and returns the node's changes and the
effects (event-log rows, a new token, a power cycle) as data, or raises
IllegalTransition. The lifecycle service persists what it decided in one
transaction and runs the effects; the repository only writes. BOOT says what
each state network-boots.

Tokens rotate on allocate, reinstall and reset: the node's next boot script
carries the new one, and whoever copied an old script (or an earlier install's
answer file) can no longer move the node. A machine bootd recorded from a PXE
boot (origin "booted") that never reported its inventory is deleted when its
discovering timeout runs out, rather than retried: a spoofed MAC never reports.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bootd.errors import Conflict, InvalidInput
from bootd.model.events import (
    Allocate,
    Changes,
    Decision,
    Delete,
    Effect,
    Emit,
    Event,
    MarkProblem,
    NodeReport,
    PowerCycle,
    Reinstall,
    Reset,
    RotateToken,
    Rules,
    Timeout,
)
from bootd.model.names import node_name, short_text
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState as S


class Actor(enum.StrEnum):
    NODE = "node"          # the node's own callbacks
    OPERATOR = "operator"  # API or CLI
    TIMER = "timer"        # bootd's state timeouts


class Boot(enum.StrEnum):
    DISCOVERY = "discovery"  # bootd's discovery / hardware-install image
    INSTALL = "install"      # the node's OS installer, by its profile
    LOCAL = "local"          # the node's own disk


@dataclass(frozen=True, slots=True)
class Move:
    source: S
    target: S
    actor: Actor


def _moves(actor: Actor, *pairs: tuple[tuple[S, ...], S]) -> list[Move]:
    return [Move(src, dst, actor) for sources, dst in pairs for src in sources]


ANY_LIVE = tuple(s for s in S if s is not S.DELETE)

TRANSITIONS: frozenset[Move] = frozenset([
    *_moves(
        Actor.NODE,
        ((S.DISCOVERING, S.RESET, S.DISCOVERED), S.DISCOVERED),  # inventory posted (again)
        ((S.HARDWARE_INSTALLING,), S.HARDWARE_INSTALLED),
        ((S.HARDWARE_INSTALLED, S.REINSTALL), S.INSTALLING),     # installer started
        ((S.INSTALLING,), S.INSTALLED),                          # installer finished
        ((S.INSTALLED,), S.READYING),                            # first boot from disk
        ((S.READYING,), S.READY),
        ((S.DISCOVERING, S.DISCOVERED, S.HARDWARE_INSTALLING, S.HARDWARE_INSTALLED,
          S.INSTALLING, S.INSTALLED, S.READYING, S.RESET, S.REINSTALL), S.PROBLEM),
    ),
    *_moves(
        Actor.OPERATOR,
        ((S.DISCOVERED,), S.HARDWARE_INSTALLING),                # allocate
        ((S.READY, S.INSTALLED, S.READYING, S.PROBLEM, S.INSTALLING), S.REINSTALL),
        (tuple(s for s in ANY_LIVE if s is not S.RESET), S.RESET),
        (ANY_LIVE, S.DELETE),
        (tuple(s for s in ANY_LIVE if s is not S.PROBLEM), S.PROBLEM),
    ),
    *_moves(
        Actor.TIMER,
        ((S.DISCOVERING, S.HARDWARE_INSTALLING, S.HARDWARE_INSTALLED, S.INSTALLING,
          S.INSTALLED, S.READYING, S.RESET, S.REINSTALL), S.PROBLEM),
        ((S.DISCOVERING,), S.DELETE),  # a booted machine that never reported expires
    ),
])

_ALLOWED: dict[tuple[S, S], frozenset[Actor]] = {}
for _m in TRANSITIONS:
    _ALLOWED[(_m.source, _m.target)] = _ALLOWED.get((_m.source, _m.target), frozenset()) | {_m.actor}


def allowed(source: S, target: S, actor: Actor) -> bool:
    return actor in _ALLOWED.get((source, target), frozenset())


def targets(source: S, actor: Actor) -> list[S]:
    return sorted({m.target for m in TRANSITIONS if m.source is source and m.actor is actor})


# What each state network-boots. The installer runs while hardware-installed
# (it posts `installing` as it starts) and after reinstall; the disk boots once
# the OS is on it.
BOOT: dict[S, Boot] = {
    S.DISCOVERING: Boot.DISCOVERY,
    S.DISCOVERED: Boot.DISCOVERY,
    S.HARDWARE_INSTALLING: Boot.DISCOVERY,
    S.HARDWARE_INSTALLED: Boot.INSTALL,
    S.INSTALLING: Boot.INSTALL,
    S.INSTALLED: Boot.LOCAL,
    S.READYING: Boot.LOCAL,
    S.READY: Boot.LOCAL,
    S.PROBLEM: Boot.DISCOVERY,
    S.RESET: Boot.DISCOVERY,
    S.REINSTALL: Boot.INSTALL,
    S.DELETE: Boot.DISCOVERY,  # never stored: the node is removed and rediscovered
}

# Seconds a node may stay in a state before the timer acts (config may override),
# and how often the timer retries (restarts the state's clock, power-cycling the
# node once BMC control is there) before the node goes to problem.
DEFAULT_TIMEOUTS: dict[S, int] = {
    S.DISCOVERING: 1800,
    S.HARDWARE_INSTALLING: 3600,
    S.HARDWARE_INSTALLED: 1800,
    S.INSTALLING: 7200,
    S.INSTALLED: 1800,
    S.READYING: 1800,
    S.RESET: 1800,
    S.REINSTALL: 1800,
}
DEFAULT_RETRIES = 2


class IllegalTransition(Conflict):
    """The event is not allowed from the node's current state (HTTP 409, CLI exit 1)."""


# The state each operator event moves a node to.
OPERATOR_TARGET: dict[type[Event], S] = {
    Allocate: S.HARDWARE_INSTALLING, Reinstall: S.REINSTALL, Reset: S.RESET, Delete: S.DELETE,
    MarkProblem: S.PROBLEM,
}


def _check(node: NodeRecord, target: S, who: Actor) -> None:
    source = node.state
    if source is target:
        raise IllegalTransition(f"node {node.name} is already {target.value}")
    if not allowed(source, target, who):
        can = ", ".join(x.value for x in targets(source, who)) or "nothing"
        raise IllegalTransition(f"{who.value} cannot move node {node.name} from {source.value} to "
                                f"{target.value} (allowed from {source.value}: {can})")


def known_profile(profile: str, profiles: frozenset[str], doing: str = "") -> str:
    """`profile` if the config defines it; else InvalidInput naming the ones it does."""
    profile = short_text(profile, "profile", 64)
    if profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise InvalidInput(f"{doing}no profile named {profile!r} (known: {known})")
    return profile


def _message(text: str) -> str:
    return short_text(text, "message", 2000) if text else ""


def _power(node: NodeRecord, rules: Rules) -> tuple[Effect, ...]:
    """A fresh network boot, when bootd has the node's BMC and the config lets it."""
    return (PowerCycle(),) if node.bmc is not None and rules.power else ()


def _move(node: NodeRecord, target: S, now: datetime, message: str, *, profile: str | None = None,
          allocated: bool | None = None, name: str | None = None, inventory: str | None = None) -> Decision:
    changes = Changes(at=now, state=target, retries=0, profile=profile, allocated=allocated, name=name,
                      inventory=inventory)
    return Decision(changes, (Emit("transition", message, node.state, target),))


NO_RULES = Rules()  # frozen: no profiles known, no power


def apply(node: NodeRecord, event: Event, now: datetime, rules: Rules = NO_RULES) -> Decision:
    """What `event` does to `node` at `now`: (changes, effects), or IllegalTransition
    (a Conflict) naming what is allowed from the node's state; InvalidInput for a
    bad argument (an unknown profile, a bad new name)."""
    match event:
        case NodeReport(target=target, expect=expect, inventory=inventory, message=text):
            if expect is not None and node.state is not expect:
                raise IllegalTransition(f"node {node.name} is {node.state.value}, not {expect.value} "
                                        f"(stale or replayed request)")
            _check(node, target, Actor.NODE)
            return _move(node, target, now, _message(text), inventory=inventory)
        case Timeout(limit_seconds=limit, budget=budget):
            return _timeout(node, limit, budget, now, rules)
        case Allocate(profile=profile, rename=rename, message=text):
            # The arguments first (400), then whether the node can move (409).
            chosen = profile if profile is not None else node.profile
            if chosen:
                chosen = known_profile(chosen, rules.profiles, f"allocating node {node.name}: ")
            new = None if rename is None or node_name(rename) == node.name else node_name(rename)
            _check(node, S.HARDWARE_INSTALLING, Actor.OPERATOR)
            if not chosen:
                raise InvalidInput(f"allocating node {node.name} needs a profile")
            text = _message(text)
            move = _move(node, S.HARDWARE_INSTALLING, now,
                         (text + " " if text else "") + f"allocated profile={chosen}",
                         profile=chosen, allocated=True, name=new)
            renamed: tuple[Effect, ...] = () if new is None else (Emit("renamed", f"new name {new}"),)
            return Decision(move.changes, (*renamed, *move.effects, RotateToken()))
        case Reinstall(message=text):
            _check(node, S.REINSTALL, Actor.OPERATOR)
            if not node.profile:
                raise InvalidInput(f"reinstalling node {node.name} needs a profile (allocate it first)")
            known_profile(node.profile, rules.profiles, f"reinstalling node {node.name}: ")
            move = _move(node, S.REINSTALL, now, _message(text))
            return Decision(move.changes, (*move.effects, RotateToken(), *_power(node, rules)))
        case Reset(message=text):
            _check(node, S.RESET, Actor.OPERATOR)
            move = _move(node, S.RESET, now, _message(text), allocated=False)
            return Decision(move.changes, (*move.effects, RotateToken(), *_power(node, rules)))
        case Delete(message=text):
            _check(node, S.DELETE, Actor.OPERATOR)
            return Decision(Changes(at=now, delete=True),
                            (Emit("deleted", _message(text), node.state, None),))
        case MarkProblem(reason=reason):
            _check(node, S.PROBLEM, Actor.OPERATOR)
            return _move(node, S.PROBLEM, now, _message(reason))
    raise TypeError(f"not a lifecycle event: {event!r}")


def _timeout(node: NodeRecord, limit: int, budget: int, now: datetime, rules: Rules) -> Decision:
    """Expire a booted machine that never reported; else spend a retry (a fresh
    network boot of the state's image); else problem."""
    _check(node, S.PROBLEM, Actor.TIMER)  # the timer acts only where the table lets it
    if node.state is S.DISCOVERING and node.origin == "booted" and node.inventory is None:
        _check(node, S.DELETE, Actor.TIMER)
        return Decision(Changes(at=now, delete=True),
                        (Emit("expired", f"expired: never reported after {limit} s", node.state, None),))
    reason = f"no progress in {node.state.value} for {limit} s"
    if node.retries < budget:
        spent = node.retries + 1
        return Decision(Changes(at=now, retries=spent),
                        (Emit("timeout", f"{reason}; retry {spent} of {budget}", node.state, node.state),
                         *_power(node, rules)))
    return _move(node, S.PROBLEM, now, f"{reason}; no retries left")


def event_for(target: S, who: Actor, *, expect: S | None = None, profile: str | None = None,
              rename: str | None = None, inventory: str | None = None, message: str = "") -> Event:
    """The event an old-style (target, actor) move means; for callers that predate
    typed events (Repository.transition). The timer has no such move: it times out."""
    if who is Actor.NODE:
        return NodeReport(target, expect, inventory, message)
    if who is Actor.OPERATOR and expect is None and inventory is None:
        if target is S.HARDWARE_INSTALLING:
            return Allocate(profile, rename, message)
        by_target: dict[S, Event] = {S.REINSTALL: Reinstall(message), S.RESET: Reset(message),
                                     S.DELETE: Delete(message), S.PROBLEM: MarkProblem(message)}
        if target in by_target:
            return by_target[target]
    raise InvalidInput(f"no {who.value} event moves a node to {target.value}")


# States whose coming boots need the node's profile: hardware-install hands over
# to the installer, the install states boot it. A node here whose profile left
# the config would be served an error at its next boot.
NEEDS_PROFILE = frozenset({S.HARDWARE_INSTALLING, S.HARDWARE_INSTALLED, S.INSTALLING, S.REINSTALL})


def profile_gone(node: NodeRecord, profiles: frozenset[str]) -> MarkProblem | None:
    """The event for a node whose profile is no longer in the config, if it needs it."""
    if node.state in NEEDS_PROFILE and node.profile and node.profile not in profiles:
        return MarkProblem(f"profile {node.profile} no longer in the config")
    return None


def overdue(nodes: Sequence[NodeRecord], now: datetime, timeouts: dict[S, int],
            clocks: Mapping[str, datetime | None] | None = None) -> list[tuple[NodeRecord, int]]:
    """Nodes past their state's timeout, each with that timeout in seconds. `clocks`:
    nodes in the install waves (model.admission.clock_starts): a node waiting for its
    slot and still asking is not late (None); an admitted one's clock starts at its
    admission."""
    out = []
    for node in nodes:
        limit = timeouts.get(node.state, 0)
        start = node.state_changed_at
        if clocks is not None and node.name in clocks:
            since = clocks[node.name]
            if since is None:
                continue
            start = max(start, since)
        if limit > 0 and now - start >= timedelta(seconds=limit):
            out.append((node, limit))
    return out
