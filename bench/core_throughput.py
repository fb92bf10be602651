#!/usr/bin/env python3
"""Micro-benchmark (not a test): entries/s the protocol core decides in a fault-free 3-node cluster.

Everything runs in one process with in-memory storage and a perfect network, so this measures the cost
of the protocol code itself. "batched" proposes BATCH entries before each drain of the output (the way the
node's actor drains once its mailbox is empty under load); "unbatched" drains after every single entry and
waits for it to be decided, one at a time.

    python bench/core_throughput.py [--seconds 3] [--batch 256]
"""
from __future__ import annotations

import argparse
import time

from omni.paxos import Ballot, MemoryStorage, PaxosConfig, SequencePaxos


class Cluster:
    def __init__(self, pids=(1, 2, 3)):
        self.nodes = {p: SequencePaxos(PaxosConfig(p, pids)) for p in pids}
        self.disks = {p: MemoryStorage() for p in pids}
        self.decided = 0
        self.nodes[pids[-1]].handle_leader(Ballot(1, 0, pids[-1]))
        self.leader = self.nodes[pids[-1]]
        self.pump()

    def pump(self):
        while True:
            inbox = []
            for pid, sp in self.nodes.items():
                ready = sp.take_ready()
                self.disks[pid].write(ready.writes)
                inbox += ready.early + ready.messages
                if sp is self.leader:
                    self.decided += sum(len(d.entries) for d in ready.decided if hasattr(d, "entries"))
            if not inbox:
                return
            for env in inbox:
                self.nodes[env.dst].handle(env)


def run(batch: int, seconds: float) -> tuple[int, float]:
    cluster, value = Cluster(), b"x" * 100
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(batch):
            cluster.leader.propose([value])
        cluster.pump()
    elapsed = time.perf_counter() - start
    return cluster.decided, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    for name, batch in (("unbatched", 1), ("batched", args.batch)):
        decided, elapsed = run(batch, args.seconds)
        print(f"{name:10} batch={batch:<5} decided={decided:>8} entries in {elapsed:.1f}s = "
              f"{decided / elapsed:>10,.0f} entries/s")


if __name__ == "__main__":
    main()
