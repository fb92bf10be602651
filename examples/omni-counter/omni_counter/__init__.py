"""A replicated set of named counters: the smallest useful Omni plug-in state machine.

Omni applies every decided command to `CounterStateMachine.apply` on every node, in the same order, so
the counters are the same everywhere. The rules a plug-in keeps (see omni.statemachines.base): ``apply``
reads nothing but the command and the state (no clock, no randomness), refuses bad input with
`StateMachineError` before changing anything, and counts a failed entry as applied; ``snapshot`` holds
the whole state, ``applied_index`` included.

Ops: ``incr {name, by?}`` (a write; ``by`` defaults to 1) -> ``{"value"}``;
``get {name}`` (a read) -> ``{"value"}`` (0 for a counter never incremented).
"""
from __future__ import annotations

from typing import Any

import msgpack

from omni.statemachines import StateMachine, StateMachineError


class CounterStateMachine(StateMachine):
    name = "counter"

    def __init__(self, data_dir=None):
        super().__init__(data_dir)  # in memory: the log and snapshots make it durable
        self._counters: dict[str, int] = {}
        self._applied = 0

    @property
    def applied_index(self) -> int:
        return self._applied

    def is_write(self, request: dict) -> bool:
        return _op(request) == "incr"

    def apply(self, index: int, command: dict) -> Any:
        if index < self._applied:
            raise ValueError(f"entry {index} is already applied")
        try:
            result = self._incr(command) if _op(command) == "incr" else self.query(command)
        except StateMachineError:
            self._applied = index + 1  # the entry failed the same way everywhere, but it was applied
            raise
        self._applied = index + 1
        return result

    def query(self, request: dict) -> Any:
        if _op(request) != "get":
            raise StateMachineError("BAD_REQUEST", "incr is a write")
        return {"value": self._counters.get(_name(request), 0)}

    def _incr(self, command: dict) -> dict:
        name, by = _name(command), command.get("by", 1)
        if isinstance(by, bool) or not isinstance(by, int):
            raise StateMachineError("BAD_REQUEST", "'by' must be an integer")
        self._counters[name] = self._counters.get(name, 0) + by
        return {"value": self._counters[name]}

    def snapshot(self) -> bytes:
        return msgpack.packb({"counters": self._counters, "applied_index": self._applied})

    def restore(self, data: bytes) -> None:
        state = msgpack.unpackb(data)
        self._counters, self._applied = dict(state["counters"]), state["applied_index"]


def _op(request: Any) -> str:
    op = request.get("op") if isinstance(request, dict) else None
    if op not in ("incr", "get"):
        raise StateMachineError("UNKNOWN_OP", f"unknown op {op!r} (counter has incr, get)")
    return op


def _name(request: dict) -> str:
    name = request.get("name")
    if not isinstance(name, str) or not name:
        raise StateMachineError("BAD_REQUEST", "'name' must be a non-empty string")
    return name
