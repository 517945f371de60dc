"""Which nodes an operation is for: by name, or by exactly one of rack, state or all.

Written once for both edges (the CLI's `NAME... | --rack | --state | --all` and
the API's {"nodes": [...]} | {"rack": R} | {"state": S} | {"all": true}).
Explicit names are kept as given, unchecked: each name's own operation says
"no node named ..." for a typo, so one typo does not stop the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bootd.errors import InvalidInput
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState


@dataclass(frozen=True, slots=True)
class Selector:
    names: tuple[str, ...] = ()
    rack: str | None = None
    state: NodeState | None = None
    all: bool = False

    @classmethod
    def parse(cls, names: Sequence[str] = (), *, rack: str | None = None, state: str | None = None,
              all: bool = False) -> Selector:
        """From an edge's raw values; InvalidInput unless exactly one way is given."""
        if sum([bool(names), rack is not None, state is not None, all]) != 1:
            raise InvalidInput("select nodes by name, or by exactly one of rack, state, all")
        if state is None:
            return cls(tuple(names), rack, None, all)
        try:
            return cls(state=NodeState(state))
        except ValueError:
            raise InvalidInput(f"{state!r} is not a node state") from None

    @property
    def by_name(self) -> bool:
        return bool(self.names)

    def pick(self, nodes: Sequence[NodeRecord]) -> list[str]:
        if self.names:
            return list(self.names)
        if self.rack is not None:
            return [n.name for n in nodes if n.rack == self.rack]
        if self.state is not None:
            return [n.name for n in nodes if n.state is self.state]
        return [n.name for n in nodes] if self.all else []
