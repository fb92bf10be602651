"""The sequence-consensus invariants, checked every time a simulated node applies something decided.

Each node applies its decided log in order (a contiguous list per configuration). The checker keeps, per
configuration, the log chosen so far (the first value any node applied at each index) and raises
`Violation` the moment a node:
- applies a different entry at an index than another node did (uniform agreement: decided logs of any two
  nodes are prefix-comparable);
- changes or skips an entry it had already applied, or its durable decided index goes back (integrity: a
  node's decided log only grows);
- applies an entry nobody proposed (validity);
- applies the same proposal at two indices (no entry is decided twice).
"""
from __future__ import annotations

from typing import Any

from omni.paxos import DecidedEntries, DecidedSnapshot


class Violation(AssertionError):
    """A safety invariant broke; the message says which, where and at which node."""


class Checker:
    def __init__(self) -> None:
        self.chosen: dict[int, list] = {}
        self.proposals: dict[int, set] = {}
        self.positions: dict[tuple[int, Any], int] = {}
        self.decided_count = 0

    def proposed(self, config_id: int, entry: Any) -> None:
        self.proposals.setdefault(config_id, set()).add(entry)

    def decided(self, pid: int, config_id: int, applied: list, item: DecidedEntries) -> None:
        """Node ``pid`` applies ``item``; ``applied`` is its log so far and is extended here."""
        if item.start > len(applied):
            raise Violation(f"node {pid} config {config_id}: gap, applied {len(applied)} entries but was "
                            f"given entries from index {item.start}")
        for offset, entry in enumerate(item.entries):
            idx = item.start + offset
            if idx < len(applied):
                if applied[idx] != entry:
                    raise Violation(f"node {pid} config {config_id}: decided entry {idx} changed from "
                                    f"{applied[idx]!r} to {entry!r}")
                continue
            self._choose(pid, config_id, idx, entry)
            applied.append(entry)

    def snapshot_installed(self, pid: int, config_id: int, applied: list, item: DecidedSnapshot) -> None:
        if item.snapshot is None:
            if len(applied) < item.idx:
                raise Violation(f"node {pid} config {config_id}: entries below {item.idx} were trimmed before "
                                f"it applied them (it has {len(applied)})")
            return
        if len(item.snapshot) != item.idx:
            raise Violation(f"node {pid} config {config_id}: snapshot claims {item.idx} entries, holds "
                            f"{len(item.snapshot)}")
        self.decided(pid, config_id, applied, DecidedEntries(0, tuple(item.snapshot)))

    def durable_decided(self, pid: int, config_id: int, before: int, after: int) -> None:
        if after < before:
            raise Violation(f"node {pid} config {config_id}: durable decided index went back {before} -> {after}")

    def _choose(self, pid: int, config_id: int, idx: int, entry: Any) -> None:
        chosen = self.chosen.setdefault(config_id, [])
        if idx < len(chosen):
            if chosen[idx] != entry:
                raise Violation(f"node {pid} config {config_id}: decided {entry!r} at index {idx}, where "
                                f"another node decided {chosen[idx]!r}")
            return
        if entry not in self.proposals.get(config_id, ()):
            raise Violation(f"node {pid} config {config_id}: decided {entry!r} at {idx}, which was never proposed")
        key = (config_id, entry)
        if key in self.positions:
            raise Violation(f"node {pid} config {config_id}: {entry!r} decided twice, at {self.positions[key]} "
                            f"and {idx}")
        self.positions[key] = idx
        chosen.append(entry)
        self.decided_count += 1
