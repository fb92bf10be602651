"""Synthetic histories from a simulated atomic KV register: linearizable by construction.

Used by the checker's tests and to measure its speed (`python -m omni.jepsen.synthetic`). Each simulated
client runs one op at a time with a random duration; every op takes effect at a random instant inside
its interval (its linearization point), and results are computed by applying the ops to a plain dict in
that order, so the history is linearizable. An info write takes effect at a random instant after its
call (possibly after the client gave up), or never. Written values are unique, as the harness writes.
`corrupt_future_read` and `corrupt_stale_read` then break one result in a way that must be caught.
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

from .history import INFO, OK, Op

WEIGHTS = {"get": 4, "put": 3, "cas": 2, "delete": 1}


def register_history(seed: int, clients: int = 5, keys: int = 10, ops: int = 1000, p_info: float = 0.02,
                     weights: dict | None = None) -> list[Op]:
    """A linearizable history of ``ops`` operations; times are integers (nanoseconds, nominally)."""
    rng = random.Random(seed)
    weights = weights or WEIGHTS
    kinds, w = list(weights), list(weights.values())
    clock, written = [0] * clients, {}
    history, effects = [], []
    for index in range(ops):
        c = rng.randrange(clients)
        f, key = rng.choices(kinds, w)[0], f"k{rng.randrange(keys)}"
        call = clock[c] + rng.randint(0, 20)
        ret = call + rng.randint(1, 100)
        clock[c] = ret + 1
        op = Op(index, c, f, key, _args(rng, f, key, index, written), call, ret, OK)
        if f != "get" and rng.random() < p_info:
            op.status = INFO
            if rng.random() < 0.5:
                effects.append((rng.randint(call, call + 400), index))
        else:
            effects.append((rng.randint(call, ret), index))
        history.append(op)
    _apply(history, sorted(effects))
    return history


def _args(rng: random.Random, f: str, key: str, index: int, written: dict):
    if f == "put":
        value = f"v{index}"
        written.setdefault(key, []).append(value)
        return value
    if f == "cas":
        seen = written.get(key, [])
        roll = rng.random()
        expected = None if roll < 0.2 or not seen else seen[-1] if roll < 0.7 else rng.choice(seen)
        value = f"v{index}"
        written.setdefault(key, []).append(value)
        return [expected, value]
    return None


def _apply(history: list[Op], effects: list[tuple[int, int]]) -> None:
    store: dict = {}
    for _, index in effects:
        op = history[index]
        current = store.get(op.key)
        if op.f == "get":
            result = current
        elif op.f == "put":
            store[op.key] = op.value
            result = None
        elif op.f == "delete":
            store.pop(op.key, None)
            result = current is not None
        else:
            succeeded = current == op.value[0]
            if succeeded:
                store[op.key] = op.value[1]
            result = [succeeded, store.get(op.key)]
        if op.status == OK:
            op.result = result


def corrupt_future_read(history: list[Op]) -> tuple[list[Op], Op] | None:
    """A copy in which one ok get returns a value whose put was called only after the get returned."""
    puts = [op for op in history if op.f == "put" and op.status == OK]
    for get in history:
        if get.f != "get" or get.status != OK:
            continue
        later = [p for p in puts if p.key == get.key and p.call > get.ret]
        if later:
            return _with(history, replace(get, result=later[0].value))
    return None


def corrupt_stale_read(history: list[Op]) -> tuple[list[Op], Op] | None:
    """A copy in which one ok get returns a value certainly overwritten before the get was called.

    p1 put v (ok), then p2 put w (ok) called after p1 returned, then the get called after p2 returned:
    v held only between p1 and the next write, which comes no later than p2.
    """
    puts = [op for op in history if op.f == "put" and op.status == OK]
    for get in history:
        if get.f != "get" or get.status != OK:
            continue
        before = [p for p in puts if p.key == get.key and p.ret < get.call]
        for p2 in before:
            older = [p1 for p1 in before if p1.ret < p2.call and p1.value != get.result]
            if older:
                return _with(history, replace(get, result=older[-1].value))
    return None


def _with(history: list[Op], changed: Op) -> tuple[list[Op], Op]:
    return [changed if op.index == changed.index else op for op in history], changed


def main() -> None:
    from .linearizability import check
    parser = argparse.ArgumentParser(description="time the checker on synthetic linearizable histories")
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keys", type=int, default=15)
    parser.add_argument("--p-info", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    for seed in range(args.seeds):
        history = register_history(seed, args.clients, args.keys, args.ops, args.p_info)
        started = time.perf_counter()
        verdict = check(history, timeout=300)
        print(f"seed {seed}: {args.ops} ops, {args.clients} clients, {args.keys} keys, p_info {args.p_info}: "
              f"{verdict.result} in {time.perf_counter() - started:.3f}s")


if __name__ == "__main__":
    main()
