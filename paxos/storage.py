"""What Sequence Paxos persists, as write operations, and the in-memory form of that state.

The core never calls storage. It changes its own `LogState` through `apply_op` and records the same
operations, grouped into atomic `WriteGroup`s, in its `Ready` batch; the host persists the groups in order
(each all-or-nothing, then one fsync for the batch) before it sends the batch's messages. Replaying the
groups over the state loaded at start-up therefore rebuilds exactly the core's view, and a host that loses
un-fsynced groups in a crash simply restarts from an earlier state the core has promised nothing about.

A `Storage` is anything with ``load() -> LogState`` and ``write(groups)``. `MemoryStorage` here serves
tests and the simulator; the node's durable store implements the same two calls on disk.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

from .messages import ZERO_BALLOT, Ballot, StopSign


@dataclass(frozen=True)
class SetPromise:
    """Persist the promised ballot (before any Promise or Prepare for it is sent)."""

    ballot: Ballot


@dataclass(frozen=True)
class SetAcceptedRound:
    """Persist the ballot under which the log was last synchronised."""

    ballot: Ballot


@dataclass(frozen=True)
class SetDecidedIdx:
    """Persist the decided index (before anything decided is applied)."""

    idx: int


@dataclass(frozen=True)
class AppendOnPrefix:
    """Drop every entry at or after ``from_idx``, then append ``entries`` there."""

    from_idx: int
    entries: tuple


@dataclass(frozen=True)
class SetStopSign:
    """Persist the StopSign slot (or clear it with None)."""

    stopsign: Optional[StopSign]


@dataclass(frozen=True)
class Compact:
    """Drop entries below ``idx``; ``snapshot`` covers [0, idx), or is None when they were trimmed away."""

    idx: int
    snapshot: Any = None


WriteOp = SetPromise | SetAcceptedRound | SetDecidedIdx | AppendOnPrefix | SetStopSign | Compact
WriteGroup = tuple  # of WriteOp, applied all-or-nothing


@dataclass
class LogState:
    """Everything Sequence Paxos keeps durable. ``entries`` holds the log from ``compacted_idx`` on."""

    promise: Ballot = ZERO_BALLOT
    accepted_round: Ballot = ZERO_BALLOT
    decided_idx: int = 0
    compacted_idx: int = 0
    snapshot: Any = None
    entries: list = field(default_factory=list)
    stopsign: Optional[StopSign] = None

    @property
    def log_len(self) -> int:
        """Absolute length of the entry log, StopSign excluded."""
        return self.compacted_idx + len(self.entries)

    @property
    def accepted_idx(self) -> int:
        """Absolute length of the accepted log, counting the StopSign slot."""
        return self.log_len + (1 if self.stopsign is not None else 0)

    @property
    def stopsign_decided(self) -> bool:
        return self.stopsign is not None and self.decided_idx == self.accepted_idx

    def entries_between(self, start: int, end: int) -> tuple:
        """Entries in [start, end) by absolute index; the range must not reach into the compacted part."""
        if start < self.compacted_idx:
            raise IndexError(f"entries below {self.compacted_idx} are compacted (asked from {start})")
        c = self.compacted_idx
        return tuple(self.entries[start - c:end - c])

    def clone(self) -> "LogState":
        """An independent copy (entries are immutable values, so the list is all that must be copied)."""
        clone = copy.copy(self)
        clone.entries = list(self.entries)
        return clone


def apply_op(state: LogState, op: WriteOp) -> None:
    """Apply one write operation to an in-memory state (used by the core and by MemoryStorage alike)."""
    if isinstance(op, SetPromise):
        state.promise = op.ballot
    elif isinstance(op, SetAcceptedRound):
        state.accepted_round = op.ballot
    elif isinstance(op, SetDecidedIdx):
        state.decided_idx = op.idx
    elif isinstance(op, AppendOnPrefix):
        keep = op.from_idx - state.compacted_idx
        if keep < 0 or op.from_idx > state.log_len:
            raise ValueError(f"append at {op.from_idx} outside log [{state.compacted_idx}, {state.log_len}]")
        del state.entries[keep:]
        state.entries.extend(op.entries)
    elif isinstance(op, SetStopSign):
        state.stopsign = op.stopsign
    elif isinstance(op, Compact):
        drop = op.idx - state.compacted_idx
        if drop < 0:
            raise ValueError(f"compact to {op.idx} below compacted index {state.compacted_idx}")
        del state.entries[:drop]
        state.compacted_idx = op.idx
        state.snapshot = op.snapshot
    else:
        raise TypeError(f"not a write operation: {op!r}")


class Storage(Protocol):
    """Where a host keeps a core's `LogState`: loaded once at start, then written group by group."""

    def load(self) -> LogState: ...

    def write(self, groups: Sequence[WriteGroup]) -> None: ...


class MemoryStorage:
    """Storage in memory, for tests and the simulator; each group is applied whole."""

    def __init__(self) -> None:
        self._state = LogState()
        self.groups_written = 0

    def load(self) -> LogState:
        return self._state.clone()

    @property
    def decided_idx(self) -> int:
        """The durable decided index, without copying the log."""
        return self._state.decided_idx

    def write(self, groups: Sequence[WriteGroup]) -> None:
        for group in groups:
            if len(group) == 1:  # apply_op checks before it changes anything, so one op is atomic as is
                apply_op(self._state, group[0])
            else:
                trial = self._state.clone()
                for op in group:
                    apply_op(trial, op)
                self._state = trial  # all or nothing: only a fully applied group replaces the state
            self.groups_written += 1
