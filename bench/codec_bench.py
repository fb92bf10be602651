#!/usr/bin/env python3
"""Micro-benchmark (not a test): encode + decode throughput of the wire codec on hot-path messages.

Measures `omni.transport.codec` alone, in one process: an AcceptDecide carrying ENTRIES entries of
SIZE bytes each (the leader's replication batch), an Accepted (the follower's reply) and BLE heartbeats.
The codec remembers the packed entries of the last tuples it saw (`pack_entries`); every encode here starts
with that cache empty, as the first follower's AcceptDecide of a new batch does, and the last line encodes a
batch for two followers (the second one from the cache, as the leader of three nodes does).

    python bench/codec_bench.py [--seconds 1] [--entries 1000] [--size 100]
"""
from __future__ import annotations

import argparse
import time

from omni.paxos.messages import (
    AcceptDecide, Accepted, Ballot, Decide, Envelope, HeartbeatReply, HeartbeatRequest, SequenceNumber,
)
from omni.transport import codec
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


def encode_afresh(env: Envelope) -> bytes:
    getattr(codec, "_PACKED", []).clear()  # (a codec from before 1be79d8 has no cache: A/B runs work too)
    return encode(env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--size", type=int, default=100)
    args = ap.parse_args()
    b = Ballot(7, 0, 3)
    entries = tuple(bytes([i % 256]) * args.size for i in range(args.entries))
    # What a put becomes in the log (actors/gateway.py): the command, origin node, incarnation, request,
    # size, client session and sequence number.
    puts = tuple({"w": {"op": "put", "key": f"key-{i:012d}", "value": bytes([i % 256]) * args.size}, "o": 1,
                  "i": 7, "r": i, "n": args.size + 60, "cl": "c" * 32, "sq": i} for i in range(args.entries))
    cases = {
        f"AcceptDecide {args.entries}x{args.size}B": (
            Envelope(3, 1, 1, AcceptDecide(b, SequenceNumber(2, 41), 12345, entries)), args.entries),
        f"AcceptDecide {args.entries} puts": (
            Envelope(3, 1, 1, AcceptDecide(b, SequenceNumber(2, 41), 12345, puts)), args.entries),
        "Accepted": (Envelope(1, 3, 1, Accepted(b, 12345)), 1),
        "Decide": (Envelope(3, 1, 1, Decide(b, SequenceNumber(2, 42), 12345)), 1),
        "HeartbeatRequest": (Envelope(1, 2, 1, HeartbeatRequest(99)), 1),
        "HeartbeatReply": (Envelope(2, 1, 1, HeartbeatReply(99, b, b, True)), 1),
    }
    print(f"{'message':<26}{'bytes':>9}{'encode/s':>12}{'decode/s':>12}{'round trip/s':>14}{'entries/s':>12}")
    for name, (env, n_entries) in cases.items():
        frame = encode(env)
        assert decode(frame) == env
        enc = measure(lambda e=env: encode_afresh(e), args.seconds)
        dec = measure(lambda f=frame: decode(f), args.seconds)
        both = measure(lambda e=env: decode(encode_afresh(e)), args.seconds)
        print(f"{name:<26}{len(frame):>9}{enc:>12,.0f}{dec:>12,.0f}{both:>14,.0f}{both * n_entries:>12,.0f}")
    for name in (f"AcceptDecide {args.entries}x{args.size}B", f"AcceptDecide {args.entries} puts"):
        to_two = [Envelope(3, dst, 1, cases[name][0].msg) for dst in (1, 2)]
        pair = measure(lambda t=to_two: [encode_afresh(t[0]), encode(t[1])], args.seconds)
        print(f"{name.replace('AcceptDecide', 'to 2 peers:'):<26}{'':>9}{pair:>12,.0f}   (batches encoded for both)")


if __name__ == "__main__":
    main()
