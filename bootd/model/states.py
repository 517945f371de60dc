"""Node states.

The lineage is Crowbar's PXE state machine: a node is discovered, allocated,
has its hardware configured, gets an OS and becomes ready. The transition and
timeout tables that drive it live beside this enum (node lifecycle issue); the
database stores the enum's value.
"""

from __future__ import annotations

import enum


class NodeState(enum.StrEnum):
    DISCOVERING = "discovering"
    DISCOVERED = "discovered"
    HARDWARE_INSTALLING = "hardware-installing"
    HARDWARE_INSTALLED = "hardware-installed"
    INSTALLING = "installing"
    INSTALLED = "installed"
    READYING = "readying"
    READY = "ready"
    PROBLEM = "problem"
    RESET = "reset"
    REINSTALL = "reinstall"
    DELETE = "delete"
