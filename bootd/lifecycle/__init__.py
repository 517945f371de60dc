"""The lifecycle: the one service that moves nodes (service.py) and its timer (timer.py)."""

from bootd.lifecycle.service import Lifecycle, Operation, OpResult
from bootd.lifecycle.timer import LifecycleService
from bootd.model.lifecycle import overdue
from bootd.model.selector import Selector

__all__ = ["Lifecycle", "LifecycleService", "OpResult", "Operation", "Selector", "overdue"]
