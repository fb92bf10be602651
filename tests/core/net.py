"""A perfect, step-by-step network of Sequence Paxos cores for unit tests.

Each `pump` round takes every node's Ready, persists its writes to that node's MemoryStorage, then delivers
its messages in FIFO order; `block` lets a test lose chosen messages. No BLE: tests elect leaders directly
with `lead`, so each test states exactly which ballots exist. Confirmed and failed reads are collected per
node in `reads` and `failed_reads`; `tick` advances every live node's logical time.
"""
from __future__ import annotations

from omni.paxos import Ballot, MemoryStorage, PaxosConfig, SequencePaxos
from omni.paxos.sequence_paxos import DecidedEntries, DecidedSnapshot


class Net:
    def __init__(self, pids=(1, 2, 3), **config):
        self.pids = tuple(pids)
        self.config = config
        self.disks = {p: MemoryStorage() for p in self.pids}
        self.nodes = {p: SequencePaxos(PaxosConfig(p, self.pids, **config)) for p in self.pids}
        self.applied = {p: [] for p in self.pids}
        self.reads = {p: [] for p in self.pids}  # (token, idx) confirmed at that node
        self.failed_reads = {p: [] for p in self.pids}
        self.down: set[int] = set()
        self.block = lambda env: False
        self.delivered: list = []

    def lead(self, pid: int, n: int = 1) -> None:
        self.nodes[pid].handle_leader(Ballot(n, 0, pid))
        self.pump()

    def propose(self, pid: int, *entries) -> None:
        self.nodes[pid].propose(list(entries))
        self.pump()

    def tick(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            for pid, sp in self.nodes.items():
                if pid not in self.down:
                    sp.tick()
            self.pump()

    def crash_and_restart(self, pid: int) -> None:
        self.nodes[pid] = SequencePaxos(PaxosConfig(pid, self.pids, **self.config), self.disks[pid].load(),
                                        incarnation=1)
        self.applied[pid] = []

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            inbox = []
            for pid, sp in self.nodes.items():
                if pid in self.down:
                    continue
                ready = sp.take_ready()
                self.disks[pid].write(ready.writes)
                self.reads[pid] += ready.reads
                self.failed_reads[pid] += ready.failed_reads
                inbox += ready.early + ready.messages
                for item in ready.decided:
                    self._apply(pid, item)
            inbox = [e for e in inbox if e.dst not in self.down and not self.block(e)]
            if not inbox:
                return
            for env in inbox:
                self.delivered.append(env)
                self.nodes[env.dst].handle(env)

    def _apply(self, pid: int, item) -> None:
        log = self.applied[pid]
        if isinstance(item, DecidedSnapshot):
            if item.snapshot is not None:
                log[:] = list(item.snapshot) + log[len(item.snapshot):]
            return
        assert isinstance(item, DecidedEntries)
        del log[item.start:]
        log.extend(item.entries)

    def decided_log(self, pid: int) -> list:
        """The node's decided entries rebuilt from its own storage: snapshot (tuple) + decided entries."""
        state = self.disks[pid].load()
        head = list(state.snapshot or ())
        return head + state.entries[: state.decided_idx - state.compacted_idx]
