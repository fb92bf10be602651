"""The history recorder: what each client asked, when, and what it learned, as Jepsen records it.

Rules (testing.md section 2.4, PROTOCOL.md section 7):
- One operation is one `Op`: `call` is `time.monotonic_ns()` taken just before the request is sent, `ret`
  just after the reply (or the give-up) arrives. Intervals are closed; the checker treats ties as overlap.
- `status` is "ok" (it happened, `result` says what it returned), "fail" (it definitely did not happen) or
  "info" (it may or may not have happened, now or at any later time: a timeout, an UNAVAILABLE after a
  write was sent, no reply at all). An info write never "returns" as far as the checker is concerned.
- Error codes map per PROTOCOL.md: BAD_REQUEST (other than a too-old seq), UNKNOWN_OP, SQL_ERROR,
  TOO_LARGE and UNAUTHORIZED are definite; UNAVAILABLE is definite for a read and indefinite for a write;
  TIMEOUT, silence, a malformed reply and any unexpected exception are indefinite.
- One `Op` may span several attempts of one `omni.client.Client` call: the client retries a write with the
  same (client, seq), which the cluster applies at most once, so the whole call is one operation whose
  effect lies somewhere in [first send, last reply]. That dedupe is part of what the checker then tests.
- Written values must be unique per write (`unique_value`), which keeps the search small and exposes lost
  and duplicated writes.
Results are normalised here: get -> the value; cas -> [succeeded, current value]; delete -> deleted bool;
put -> the revision. The recorder is thread-safe; histories round-trip through JSON lines.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omni.client import OmniError, Unavailable

OK, FAIL, INFO = "ok", "fail", "info"
READS = frozenset({"get", "range"})
WRITES = frozenset({"put", "cas", "delete"})
#: codes that say the op certainly had no effect (PROTOCOL.md section 7)
DEFINITE = frozenset({"BAD_REQUEST", "UNKNOWN_OP", "SQL_ERROR", "TOO_LARGE", "UNAUTHORIZED"})


@dataclass
class Op:
    """One client operation. ``value``: put -> value; cas -> [expected, new]; get/delete/range -> None."""

    index: int
    process: Any
    f: str
    key: str
    value: Any = None
    call: int = 0
    ret: int | None = None
    status: str | None = None
    result: Any = None
    error: str = ""

    @property
    def pending(self) -> bool:
        return self.status is None

    def describe(self, origin: int = 0) -> str:
        """One readable line, with times in seconds since ``origin`` (a monotonic_ns)."""
        args = {"put": lambda: repr(self.value), "cas": lambda: f"{self.value[0]!r} -> {self.value[1]!r}"}
        arg = args.get(self.f, lambda: "")()
        out = self.error if self.status != OK else repr(self.result)
        ret = "inf" if self.ret is None or self.status == INFO else f"{(self.ret - origin) / 1e9:.3f}"
        return (f"#{self.index} p{self.process} {self.f}({self.key!r}{', ' + arg if arg else ''}) "
                f"{self.status} {out} [{(self.call - origin) / 1e9:.3f}, {ret}]")


def classify(f: str, code: str, message: str = "", client_gave_up: bool = False) -> str:
    """The history status (fail or info) of an error with protocol ``code`` on an op of kind ``f``."""
    if client_gave_up:
        return INFO  # no node answered in the budget: for a write, it may have happened
    if code == "BAD_REQUEST" and "too old" in message:
        return INFO  # a retried seq too old to look up: its outcome stays unknown
    if code in DEFINITE:
        return FAIL
    if code == "UNAVAILABLE" and f in READS:
        return FAIL  # a read refused for want of a leader did nothing
    return INFO  # TIMEOUT, UNAVAILABLE on a write, BAD_REPLY, anything unexpected


def normalise(f: str, reply: dict | None) -> Any:
    """The part of a success reply the model checks."""
    reply = reply or {}
    if f == "get":
        return reply.get("value")
    if f == "cas":
        return [bool(reply.get("succeeded")), reply.get("value")]
    if f == "delete":
        return bool(reply.get("deleted"))
    if f == "range":
        return {k: v for k, v in reply.get("items", [])}
    return reply.get("revision")


class History:
    """A thread-safe, append-only list of operations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ops: list[Op] = []
        self.origin = time.monotonic_ns()

    def invoke(self, process: Any, f: str, key: str, value: Any = None) -> Op:
        with self._lock:
            op = Op(len(self.ops), process, f, key, value)
            self.ops.append(op)
        op.call = time.monotonic_ns()  # last thing before the caller sends
        return op

    def complete(self, op: Op, status: str, result: Any = None, error: str = "") -> Op:
        op.ret = time.monotonic_ns()
        op.result, op.error = result, error
        op.status = status  # set last: a reader that sees a status sees the rest
        return op

    def perform(self, process: Any, f: str, key: str, value: Any, call: Callable[[], dict | None]) -> Op:
        """Invoke, run ``call`` (one client request), and complete with the classified outcome."""
        op = self.invoke(process, f, key, value)
        try:
            reply = call()
        except Unavailable as exc:
            return self.complete(op, classify(f, exc.code, exc.message, client_gave_up=True), error=exc.code)
        except OmniError as exc:
            return self.complete(op, classify(f, exc.code, exc.message), error=exc.code)
        except Exception as exc:  # a socket error or a bug in the caller: the outcome is unknown
            return self.complete(op, INFO, error=f"{type(exc).__name__}: {exc}")
        return self.complete(op, OK, normalise(f, reply))

    def snapshot(self) -> list[Op]:
        with self._lock:
            return list(self.ops)

    def finish_pending(self) -> None:
        """Mark operations still in flight (a worker thread that never returned) as info."""
        for op in self.snapshot():
            if op.pending:
                self.complete(op, INFO, error="still pending at the end of the run")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.snapshot():
            out[op.status or "pending"] = out.get(op.status or "pending", 0) + 1
        return out

    # --- persistence ---

    def dump(self, path: str | Path) -> None:
        with open(path, "w") as fh:
            fh.write(json.dumps({"origin": self.origin}) + "\n")
            fh.writelines(json.dumps(asdict(op), default=repr) + "\n" for op in self.snapshot())

    @classmethod
    def load(cls, path: str | Path) -> History:
        history = cls()
        with open(path) as fh:
            history.origin = json.loads(fh.readline())["origin"]
            history.ops = [Op(**json.loads(line)) for line in fh if line.strip()]
        return history


def unique_value(process: Any, counter: int) -> str:
    """A value no other write uses: ``c<process>-<counter>``."""
    return f"c{process}-{counter}"


@dataclass
class Counter:
    """A per-process counter for unique values."""

    process: Any
    n: int = field(default=0)

    def next(self) -> str:
        self.n += 1
        return unique_value(self.process, self.n)


def by_key(ops: Iterable[Op]) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    for op in ops:
        out.setdefault(op.key, []).append(op)
    return out
