"""The PXE state machine, as data: who may move a node from which state to which.

Crowbar's lineage: discovering -> discovered -> (allocated) -> hardware-installing
-> hardware-installed -> installing -> installed -> readying -> ready, with
problem, reset, reinstall and delete. Two kinds of actor move nodes:

- the node itself (its discovery agent, its installer's callbacks, its
  first-boot script), authenticated by the node's own token;
- the operator (API token, CLI), and bootd's own timers.

Repository.transition is the one function that applies a move: it checks it
against TRANSITIONS, writes the state and an event row in one transaction, and
refuses anything not in the table. BOOT says what each state network-boots.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
