#!/usr/bin/env python3
"""Micro-benchmark (not a test): entries/s the durable log store (actors/log_store.py) persists, fsync on.

Each write() is one SQLite transaction and one fsync, so the batch size decides throughput. "one group"
writes BATCH entries as a single group (AppendOnPrefix + SetDecidedIdx); "group commit" writes BATCH
groups of one entry each in one call, the way the Storage actor merges several Ready batches. Entries are
100-byte values. Run it on the disk the node will use: a tmpfs directory makes fsync free.

    python bench/log_store_bench.py [--dir DIR] [--seconds 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from omni.actors.log_store import SQLiteLogStore
from omni.paxos.storage import AppendOnPrefix, SetDecidedIdx

ENTRY = b"x" * 100


def one_group(n: int, batch: int) -> list:
    return [(AppendOnPrefix(n, (ENTRY,) * batch), SetDecidedIdx(n + batch))]


def many_groups(n: int, batch: int) -> list:
    return [(AppendOnPrefix(i, (ENTRY,)), SetDecidedIdx(i + 1)) for i in range(n, n + batch)]


def run(directory: str, make, batch: int, seconds: float) -> tuple[float, float]:
    """entries/s and mean milliseconds per write() call."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp, SQLiteLogStore(os.path.join(tmp, "log.db")) as store:
        n, calls, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            store.write(make(n, batch))
            n, calls = n + batch, calls + 1
        elapsed = time.perf_counter() - start
        assert store.load().log_len == n
    return n / elapsed, 1000 * elapsed / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".", help="where to create the database (default: current directory)")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(f"{'batch':>6} {'one group: entries/s':>22} {'ms/write':>9} {'group commit: entries/s':>25} {'ms/write':>9}")
    for batch in (1, 10, 100, 1000):
        one, one_ms = run(args.dir, one_group, batch, args.seconds)
        many, many_ms = run(args.dir, many_groups, batch, args.seconds)
        print(f"{batch:>6} {one:>22,.0f} {one_ms:>9.2f} {many:>25,.0f} {many_ms:>9.2f}")


if __name__ == "__main__":
    main()
