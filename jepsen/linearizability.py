"""A linearizability checker for KV histories: Wing & Gong's search with Lowe's memoisation, per key.

The model is one register per key: get -> the value (None: absent); put(v); delete -> whether a value
was there; cas(expected, new) succeeds iff the current value equals ``expected`` (None: absent) and its
result carries the value after the op. A history over many keys is linearizable iff each key's
sub-history is (P-compositionality), so every key is checked on its own, smallest first.

The search, for one key (testing.md section 2.1):
- Every operation becomes a call event and, if its outcome is known, a return event; events sorted by
  time with calls before returns on ties (closed intervals), kept in a doubly linked list.
- Depth-first: scanning from the head, a call whose op the model accepts in the current state is
  "linearized": the pair (bitset of linearized ops, new state) is memoised, the op's two events are
  unlinked, and the scan restarts at the head. Reaching a return event means that op was never placed:
  undo the last choice and try the next call after it. No definite op left: linearizable. Nothing left
  to undo: not linearizable.
- Failed ops are dropped. Info (indeterminate) reads are dropped; info writes have no return event (return
  time +inf) and any output, so they may take effect at any point after their call or never.
Two exact reductions keep info writes from blowing the search up:
- A value no op ever observes (no get or cas result shows it, no cas expects it) is replaced by one
  token: no later op can tell such values apart.
- Info writes with identical effect (same kind, same canonical arguments) are interchangeable, so they are
  only linearized in call order: a set of k such ops costs k+1 search states instead of 2^k.
Values compare like msgpack does (1, 1.0 and True differ); a stored None is indistinguishable from absent.
The verdict is "ok", "illegal" (with a readable explanation: the key, the longest linearizable order
found and the op that cannot follow it) or "unknown" (the time or state budget ran out).
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .history import FAIL, INFO, OK, Op, by_key

OK_VERDICT, ILLEGAL, UNKNOWN = "ok", "illegal", "unknown"
PUT, GET, CAS_OK, CAS_FAIL, CAS_INFO, DELETE = range(6)
REGISTER_OPS = frozenset({"put", "get", "cas", "delete"})


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


TOKEN = _Sentinel("<a value nobody reads>")
ANY = _Sentinel("<unknown>")


def freeze(value: Any) -> Any:
    """A hashable form of a msgpack value in which 1, 1.0 and True stay different."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(freeze(v) for v in value))
    if isinstance(value, dict):
        return ("map", frozenset((freeze(k), freeze(v)) for k, v in value.items()))
    return value


@dataclass
class KeyResult:
    key: str
    result: str
    ops: int
    states: int = 0
    elapsed: float = 0.0
    explanation: str = ""


@dataclass
class Verdict:
    result: str
    keys: int = 0
    ops: int = 0
    elapsed: float = 0.0
    illegal: list[KeyResult] = field(default_factory=list)
    unknown: list[KeyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result == OK_VERDICT

    def explain(self) -> str:
        lines = [f"linearizability: {self.result} ({self.ops} ops over {self.keys} keys, {self.elapsed:.2f}s)"]
        lines += [k.explanation for k in self.illegal]
        lines += [f"key {k.key!r}: no verdict ({k.explanation})" for k in self.unknown]
        return "\n".join(lines)


@dataclass
class _Prepared:
    """One key's operations in the arrays the search runs over."""

    ops: list[Op]
    kind: list[int]
    a: list[Any]
    b: list[Any]
    out: list[Any]
    group: list[int]
    rank: list[int]
    groups: int
    definite: int
    ev_op: list[int] = field(default_factory=list)   # event -> op (index 0 is the head sentinel)
    is_call: list[bool] = field(default_factory=list)
    match: list[int] = field(default_factory=list)   # call event -> its return event, -1 if none
    nxt: list[int] = field(default_factory=list)
    prv: list[int] = field(default_factory=list)


def check(ops: Iterable[Op], timeout: float = 60.0, max_states: int = 5_000_000,
          origin: int | None = None) -> Verdict:
    """Check a whole history; ``timeout`` seconds in all, ``max_states`` memoised states per key."""
    start = time.monotonic()
    ops = [op for op in ops if op.f in REGISTER_OPS]
    origin = min((op.call for op in ops), default=0) if origin is None else origin
    keys = sorted(by_key(ops).items(), key=lambda kv: len(kv[1]))
    verdict = Verdict(OK_VERDICT, keys=len(keys), ops=len(ops))
    deadline = start + timeout
    for key, key_ops in keys:
        result = check_key(key, key_ops, deadline, max_states, origin)
        if result.result == ILLEGAL:
            verdict.illegal.append(result)
        elif result.result == UNKNOWN:
            verdict.unknown.append(result)
    verdict.result = ILLEGAL if verdict.illegal else UNKNOWN if verdict.unknown else OK_VERDICT
    verdict.elapsed = time.monotonic() - start
    return verdict


def check_key(key: str, ops: list[Op], deadline: float, max_states: int = 5_000_000,
              origin: int = 0) -> KeyResult:
    started = time.monotonic()
    prepared = _prepare(ops)
    if time.monotonic() > deadline:
        return KeyResult(key, UNKNOWN, len(prepared.ops), explanation="the time budget ran out before this key")
    result, states, deepest = _search(prepared, deadline, max_states)
    out = KeyResult(key, result, len(prepared.ops), states, time.monotonic() - started)
    if result == ILLEGAL:
        out.explanation = _explain(key, prepared, deepest, origin)
    elif result == UNKNOWN:
        out.explanation = f"budget exhausted after {states} states on {len(prepared.ops)} ops"
    return out


# --- preparation ------------------------------------------------------------------------------------

def _kept(op: Op) -> bool:
    if op.status == OK:
        return True
    if op.status == FAIL:
        return False
    return op.f != "get"  # info, or never completed: a write may still take effect; a read did nothing


def _observed(ops: list[Op]) -> set:
    seen = set()
    for op in ops:
        if op.f == "cas":
            seen.add(freeze(op.value[0]))
        if op.status == OK and op.f == "get":
            seen.add(freeze(op.result))
        if op.status == OK and op.f == "cas":
            seen.add(freeze(_cas_result(op)[1]))
    return seen


def _cas_result(op: Op) -> tuple[bool, Any]:
    result = op.result
    if isinstance(result, (list, tuple)):
        return bool(result[0]), (result[1] if len(result) > 1 else ANY)
    return bool(result), ANY


def _encode(op: Op, canon) -> tuple[int, Any, Any, Any]:
    """(kind, a, b, expected output) of one op for the model step."""
    info = op.status != OK
    if op.f == "put":
        return PUT, canon(op.value), None, None
    if op.f == "get":
        return GET, None, None, freeze(op.result)
    if op.f == "delete":
        return DELETE, None, None, ANY if info else bool(op.result)
    expected, new = freeze(op.value[0]), canon(op.value[1])
    if info:
        return CAS_INFO, expected, new, None
    succeeded, current = _cas_result(op)
    if succeeded:
        return CAS_OK, expected, new, None
    return CAS_FAIL, expected, None, ANY if current is ANY else freeze(current)


def _prepare(ops: list[Op]) -> _Prepared:
    ops = sorted((op for op in ops if _kept(op)), key=lambda op: (op.call, op.index))
    observed = _observed(ops)

    def canon(value):
        value = freeze(value)
        return value if value is None or value in observed else TOKEN

    encoded = [_encode(op, canon) for op in ops]
    p = _Prepared(ops, [e[0] for e in encoded], [e[1] for e in encoded], [e[2] for e in encoded],
                  [e[3] for e in encoded], [-1] * len(ops), [0] * len(ops), 0,
                  sum(1 for op in ops if op.status == OK))
    _group_interchangeable(p)
    _build_events(p)
    return p


def _group_interchangeable(p: _Prepared) -> None:
    """Info ops with the same effect form a group; each is linearized only after its elders (call order)."""
    groups: dict[tuple, int] = {}
    sizes: list[int] = []
    for i, op in enumerate(p.ops):  # ops are in call order already
        if op.status == OK:
            continue
        sig = (p.kind[i], p.a[i], p.b[i])
        g = groups.setdefault(sig, len(groups))
        if g == len(sizes):
            sizes.append(0)
        p.group[i], p.rank[i] = g, sizes[g]
        sizes[g] += 1
    p.groups = len(groups)


def _build_events(p: _Prepared) -> None:
    events = []
    for i, op in enumerate(p.ops):
        events.append((op.call, 0, i))
        if op.status == OK:
            events.append((op.ret, 1, i))
    events.sort()
    n = len(events)
    p.ev_op = [-1] + [e[2] for e in events]
    p.is_call = [False] + [e[1] == 0 for e in events]
    p.match = [-1] * (n + 1)
    call_of = {}
    for pos in range(1, n + 1):
        if p.is_call[pos]:
            call_of[p.ev_op[pos]] = pos
        else:
            p.match[call_of[p.ev_op[pos]]] = pos
    p.nxt = list(range(1, n + 1)) + [-1]
    p.prv = [-1] + list(range(n))


# --- the search ---------------------------------------------------------------------------------------

def _search(p: _Prepared, deadline: float, max_states: int) -> tuple[str, int, tuple]:
    """Returns (verdict, states memoised, deepest point: (linearized ops, stuck op, state))."""
    nxt, prv, match, ev_op, is_call = p.nxt, p.prv, p.match, p.ev_op, p.is_call
    kind, A, B, OUT, group, rank = p.kind, p.a, p.b, p.out, p.group, p.rank
    counters = [0] * p.groups
    state, lin, stack, seen = None, 0, [], set()
    remaining, entry, steps = p.definite, nxt[0], 0
    deepest: tuple = ([], -1, None)
    best = -1
    while remaining:
        steps += 1
        if not steps & 4095 and (time.monotonic() > deadline or len(seen) > max_states):
            return UNKNOWN, len(seen), deepest
        op = ev_op[entry]
        if not is_call[entry]:  # this op's return came and it was never placed: undo the last choice
            if len(stack) > best:  # the deepest dead end so far: kept for the explanation
                best, deepest = len(stack), ([ev_op[e] for e, _ in stack], op, state)
            if not stack:
                return ILLEGAL, len(seen), deepest
            entry, state = stack.pop()
            op = ev_op[entry]
            lin ^= 1 << op
            ret = match[entry]
            if ret >= 0:  # relink the return, then the call (reverse order of unlinking)
                nxt[prv[ret]] = ret
                if nxt[ret] >= 0:
                    prv[nxt[ret]] = ret
                remaining += 1
            nxt[prv[entry]] = entry
            if nxt[entry] >= 0:  # an info call may be the last event
                prv[nxt[entry]] = entry
            if group[op] >= 0:
                counters[group[op]] -= 1
            entry = nxt[entry]
            continue
        g = group[op]
        if g >= 0 and counters[g] != rank[op]:
            entry = nxt[entry]
            continue
        k = kind[op]
        if k == PUT:
            legal, new = True, A[op]
        elif k == GET:
            legal, new = OUT[op] == state, state
        elif k == CAS_OK:
            legal, new = state == A[op], B[op]
        elif k == CAS_FAIL:
            legal, new = state != A[op] and (OUT[op] is ANY or OUT[op] == state), state
        elif k == CAS_INFO:
            legal, new = True, (B[op] if state == A[op] else state)
        else:
            legal, new = OUT[op] is ANY or OUT[op] == (state is not None), None
        if legal:
            new_lin = lin | (1 << op)
            memo = (new_lin, new)
            if memo not in seen:
                seen.add(memo)
                stack.append((entry, state))
                state, lin = new, new_lin
                nxt[prv[entry]] = nxt[entry]  # unlink the call, then its return
                if nxt[entry] >= 0:
                    prv[nxt[entry]] = prv[entry]
                ret = match[entry]
                if ret >= 0:
                    nxt[prv[ret]] = nxt[ret]
                    if nxt[ret] >= 0:
                        prv[nxt[ret]] = prv[ret]
                    remaining -= 1
                if g >= 0:
                    counters[g] += 1
                entry = nxt[0]
                continue
        entry = nxt[entry]
    return OK_VERDICT, len(seen), deepest


# --- explanation ------------------------------------------------------------------------------------

def _explain(key: str, p: _Prepared, deepest: tuple, origin: int, context: int = 8) -> str:
    order, stuck_i, state = deepest
    ops = p.ops
    lines = [f"key {key!r}: NOT linearizable ({len(ops)} ops on this key).",
             f"  The longest linearizable order found places {len(order)} of them; its last steps:"]
    lines += [f"    {ops[i].describe(origin)}" for i in order[-context:]]
    shown = ("absent" if state is None else
             "the last value placed above (one no op ever reads)" if state is TOKEN else repr(state))
    lines.append(f"  after which the register holds {shown}. Then this op must be placed (it has returned),")
    lines.append("  but the model accepts it in no order of the ops still pending:")
    if stuck_i >= 0:
        stuck = ops[stuck_i]
        lines.append(f"    {stuck.describe(origin)}")
        placed = set(order)
        around = [op for i, op in enumerate(ops) if i != stuck_i and i not in placed and _overlaps(op, stuck)]
        if around:
            lines.append("  Unplaced ops overlapping it in time:")
            lines += [f"    {op.describe(origin)}" for op in around[:context]]
    return "\n".join(lines)


def _overlaps(op: Op, other: Op) -> bool:
    end = float("inf") if op.status == INFO or op.ret is None else op.ret
    return op.call <= other.ret and end >= other.call
