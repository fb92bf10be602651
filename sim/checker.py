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

Linearizable reads (paxos/reads.py) are checked against the same truth. The host registers a read at a
node, noting the largest decided length any node has in that configuration at that moment; the checker
raises `Violation` the moment a node
- confirms a read with an index below that length (it would serve a state missing a decided write);
- confirms a read twice, or both confirms and fails it, or answers a read it was never given.
A read pending at a node that crashes vanishes with it (`reads_lost`); `unanswered_reads` names the
others still waiting, which must be none once a healed cluster has settled.
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
        self.read_floor: dict = {}  # token -> (pid, config id, decided length anywhere at registration)
        self.read_outcome: dict = {}  # token -> "confirmed" | "failed" | "lost"
        self.reads_confirmed = 0

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

    def read_registered(self, pid: int, config_id: int, token: Any, decided_anywhere: int) -> None:
        self.read_floor[token] = (pid, config_id, decided_anywhere)

    def read_confirmed(self, pid: int, config_id: int, token: Any, idx: int) -> None:
        where, floor = self._answer(pid, config_id, token, "confirmed"), self.read_floor[token][2]
        if idx < floor:
            raise Violation(f"{where}: read {token} confirmed with index {idx}, but {floor} entries were "
                            f"decided when it was registered: it would miss decided writes")
        self.reads_confirmed += 1

    def read_failed(self, pid: int, config_id: int, token: Any) -> None:
        self._answer(pid, config_id, token, "failed")

    def reads_lost(self, pid: int) -> None:
        """``pid`` crashed: the reads it still held vanish with its memory."""
        for token in self.unanswered_reads():
            if self.read_floor[token][0] == pid:
                self.read_outcome[token] = "lost"

    def unanswered_reads(self) -> list:
        return [t for t in self.read_floor if t not in self.read_outcome]

    def _answer(self, pid: int, config_id: int, token: Any, outcome: str) -> str:
        where = f"node {pid} config {config_id}"
        if token not in self.read_floor:
            raise Violation(f"{where}: {outcome} read {token}, which was never registered")
        if self.read_floor[token][:2] != (pid, config_id):
            raise Violation(f"{where}: {outcome} read {token}, registered at node {self.read_floor[token][0]} "
                            f"config {self.read_floor[token][1]}")
        if token in self.read_outcome:
            raise Violation(f"{where}: read {token} {outcome}, but it was already {self.read_outcome[token]}")
        self.read_outcome[token] = outcome
        return where

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
