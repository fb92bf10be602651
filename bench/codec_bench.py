#!/usr/bin/env python3
"""Micro-benchmark (not a test): encode + decode throughput of the wire codec on hot-path messages.

Measures `omni.transport.codec` alone, in one process: an AcceptDecide carrying ENTRIES entries of
SIZE bytes each (the leader's replication batch), an Accepted (the follower's reply) and BLE heartbeats.

    python bench/codec_bench.py [--seconds 1] [--entries 1000] [--size 100]
"""
from __future__ import annotations

import argparse
import time

from omni.paxos.messages import (
    AcceptDecide, Accepted, Ballot, Decide, Envelope, HeartbeatReply, HeartbeatRequest, SequenceNumber,
)
from omni.transport.codec import decode, encode


def measure(fn, seconds: float) -> float:
    """Calls of ``fn`` per second, over at least ``seconds`` (after a short warm-up)."""
    for _ in range(100):
        fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        calls += 100
    return calls / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--size", type=int, default=100)
    args = ap.parse_args()
    b = Ballot(7, 0, 3)
    entries = tuple(bytes([i % 256]) * args.size for i in range(args.entries))
    cases = {
        f"AcceptDecide {args.entries}x{args.size}B": (
            Envelope(3, 1, 1, AcceptDecide(b, SequenceNumber(2, 41), 12345, entries)), args.entries),
        "Accepted": (Envelope(1, 3, 1, Accepted(b, 12345)), 1),
        "Decide": (Envelope(3, 1, 1, Decide(b, SequenceNumber(2, 42), 12345)), 1),
        "HeartbeatRequest": (Envelope(1, 2, 1, HeartbeatRequest(99)), 1),
        "HeartbeatReply": (Envelope(2, 1, 1, HeartbeatReply(99, b, b, True)), 1),
    }
    print(f"{'message':<26}{'bytes':>9}{'encode/s':>12}{'decode/s':>12}{'round trip/s':>14}{'entries/s':>12}")
    for name, (env, n_entries) in cases.items():
        frame = encode(env)
        assert decode(frame) == env
        enc = measure(lambda e=env: encode(e), args.seconds)
        dec = measure(lambda f=frame: decode(f), args.seconds)
        both = measure(lambda e=env: decode(encode(e)), args.seconds)
        print(f"{name:<26}{len(frame):>9}{enc:>12,.0f}{dec:>12,.0f}{both:>14,.0f}{both * n_entries:>12,.0f}")


if __name__ == "__main__":
    main()
