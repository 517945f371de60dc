"""What the CLI prints: aligned tables, JSON, a node's page."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bootd.model.records import EventRecord, NodeRecord


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = [header, *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def node_row(n: NodeRecord) -> list[str]:
    return [n.name, n.state.value, "yes" if n.allocated else "no", n.profile or "-",
            str(n.admin_ip or "-"), n.rack or "-", ",".join(i.mac for i in n.interfaces) or "-"]


NODE_HEADER = ["NAME", "STATE", "ALLOCATED", "PROFILE", "IP", "RACK", "MACS"]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def inventory_lines(text: str | None) -> list[str]:
    """A few readable lines from the agent's inventory (the JSON has it all)."""
    if not text:
        return []
    try:
        inv = json.loads(text)
        system = inv.get("system") or {}
        lines = [" ".join(str(system.get(k) or "") for k in ("vendor", "product", "serial")).strip()
                 or "unknown system",
                 f"{inv.get('cpus', '?')} CPU ({inv.get('cpu_model') or '?'}), "
                 f"{int(inv.get('memory_kb') or 0) // 1024} MiB memory"]
        lines += [f"disk {d.get('name')} {int(d.get('size_bytes') or 0) // 2**20} MiB "
                  f"{d.get('model') or ''} {d.get('serial') or ''}".rstrip() for d in inv.get("disks") or []]
        lines += [f"nic {n.get('name')} {n.get('mac')} {n.get('driver') or '?'} "
                  f"{'link up' if n.get('link') else 'no link'}" for n in inv.get("nics") or []]
        if inv.get("bmc"):
            lines.append(f"bmc {inv['bmc'].get('ip')} {inv['bmc'].get('mac')}")
        return lines
    except (ValueError, TypeError, AttributeError):
        return ["(unreadable; see --json)"]


def event_rows(events: Sequence[EventRecord], *, with_id: bool) -> list[list[str]]:
    return [([str(e.id)] if with_id else []) + [e.at.isoformat(timespec="seconds"), e.kind,
                                               f"{e.from_state or '-'} -> {e.to_state or '-'}", e.actor,
                                               e.message] for e in events]


def print_node(node: NodeRecord, events: Sequence[EventRecord]) -> None:
    fields = [("name", node.name), ("state", node.state.value),
              ("allocated", "yes" if node.allocated else "no"), ("profile", node.profile or "-"),
              ("admin ip", str(node.admin_ip or "-")), ("rack", node.rack or "-"),
              ("location", node.location or "-"),
              ("bmc", f"{node.bmc.address} (user {node.bmc.username})" if node.bmc else "-"),
              ("created", node.created_at.isoformat(timespec="seconds")),
              ("state since", node.state_changed_at.isoformat(timespec="seconds"))]
    for key, value in fields:
        print(f"{key + ':':13}{value}")
    for iface in node.interfaces:
        print(f"{'interface:':13}{iface.mac}{' (boot)' if iface.is_boot else ''}")
    for line in inventory_lines(node.inventory):
        print(f"{'inventory:':13}{line}")
    if events:
        print("events:")
        text = table(event_rows(events, with_id=False), ["AT", "KIND", "STATE", "BY", "MESSAGE"])
        print("\n".join("  " + line for line in text.splitlines()))
