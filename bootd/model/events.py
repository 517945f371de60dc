"""What can happen to a node, and what the lifecycle decides about it, as plain data.

Events are what the operator, the node or bootd's timer ask for; `apply` in
model/lifecycle.py turns one event on one node into `Changes` (the node's new
fields, written by the repository in one transaction) and effects: `Emit` (an
event-log row, written in the same transaction), `RotateToken` (a new node
token, same transaction) and `PowerCycle` (next boot from the network, then a
power cycle through the node's BMC: run by the lifecycle service after the
commit, never inside it, since a BMC may take seconds to answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from bootd.model.states import NodeState

# -- events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocate:
    """Operator: a discovered node gets a profile (default: its own) and maybe a new name."""

    profile: str | None = None
    rename: str | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Reinstall:
    """Operator: install the node's profile again."""

    message: str = ""


@dataclass(frozen=True, slots=True)
class Reset:
    """Operator: forget the node's allocation and install; back to discovery."""

    message: str = ""


@dataclass(frozen=True, slots=True)
class Delete:
    """Operator: remove the node (its events stay; its next boot is a new discovery)."""

    message: str = ""


@dataclass(frozen=True, slots=True)
class MarkProblem:
    """Operator, or bootd itself (a profile gone from the config): park the node in problem."""

    reason: str


@dataclass(frozen=True, slots=True)
class Timeout:
    """Timer: the node has been in its state `limit_seconds`; `budget` retries per state."""

    limit_seconds: int
    budget: int


@dataclass(frozen=True, slots=True)
class NodeReport:
    """The node itself (agent, installer, first boot) reports it reached `target`.
    `expect` is where it believes it is: a replayed or stale report is refused."""

    target: NodeState
    expect: NodeState | None = None
    inventory: str | None = None  # JSON text from the discovery agent
    message: str = ""


Event = Allocate | Reinstall | Reset | Delete | MarkProblem | Timeout | NodeReport
OPERATOR_EVENTS: tuple[type[Event], ...] = (Allocate, Reinstall, Reset, Delete, MarkProblem)

# -- decisions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rules:
    """What apply needs from the config: the profile names it knows (allocate and
    reinstall refuse others) and whether bootd power-cycles nodes it moves
    (bmc.lifecycle_power)."""

    profiles: frozenset[str] = frozenset()
    power: bool = False


@dataclass(frozen=True, slots=True)
class Changes:
    """The node's fields after the event; None leaves a field as it is.

    A new `state` restarts the state's clock and resets the retry budget; `retries`
    alone (a timeout retry) restarts the clock in the same state.
    """

    at: datetime
    state: NodeState | None = None
    retries: int | None = None
    profile: str | None = None
    allocated: bool | None = None
    name: str | None = None
    inventory: str | None = None
    delete: bool = False


@dataclass(frozen=True, slots=True)
class Emit:
    """One row of the node's event log, written with the change."""

    kind: str  # transition, timeout, renamed, deleted, expired
    message: str
    from_state: NodeState | None = None
    to_state: NodeState | None = None


@dataclass(frozen=True, slots=True)
class RotateToken:
    """A new node token: whoever held the old one (an earlier install, a copied
    boot script) can no longer read answer files or move the node."""


@dataclass(frozen=True, slots=True)
class PowerCycle:
    """Next boot from the network, then a power cycle, through the node's BMC."""


Effect = Emit | RotateToken | PowerCycle


class Decision(NamedTuple):
    """apply's answer: `changes, effects = apply(...)`."""

    changes: Changes
    effects: tuple[Effect, ...]

    @property
    def emits(self) -> tuple[Emit, ...]:
        return tuple(e for e in self.effects if isinstance(e, Emit))

    @property
    def rotates_token(self) -> bool:
        return any(isinstance(e, RotateToken) for e in self.effects)

    @property
    def power_cycles(self) -> bool:
        return any(isinstance(e, PowerCycle) for e in self.effects)
