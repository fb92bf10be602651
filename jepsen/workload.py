"""Client load for a torture run: worker threads on a small key set, and probe writers for recovery times.

Workers. Each is a thread with its own `omni.client.Client` over every node (rotated so workers start on
different nodes). One history op is one client call: the client retries a write on the next node with the
same (client, seq), which the cluster applies at most once, so the call's effect lies inside its
interval; a call that runs out of attempts is info. The node is asked to answer TIMEOUT a little before
the client would give up on it, so slow ops come back as indefinite errors rather than silence.
The mix: get, put, cas (expecting the value this worker last saw for the key, or absent), delete, and
"set" puts, each to a fresh key s/<worker>/<n> that nothing else touches: at the end every acknowledged set
put must still be readable (the acknowledged-writes-lost check).
Register keys rotate: slot i of generation g is key r<i>.<g>, and the generation moves on after
``ops_per_key`` ops per slot, so no one key's history grows without bound (the checker's cost is
exponential in what is concurrent on one key; info ops stay concurrent forever).

Status sampler. Every half second, each node's `status` (leader, role, ballot, decided index) goes to a
JSON-lines file in the work directory, for post-mortems of stalls: who led, and whether anything was
decided, while writes were failing.

Probes. Per node, a few threads put to probe keys through that node only, one attempt each, recording
(call, return, ok). After the run, "time until a write succeeds again" after an instant t is the return
time of the first successful probe called at or after t.
"""
from __future__ import annotations

import itertools
import json
import random
import threading
import time

from omni.client import Client

from .history import OK, Counter, History

MIX = {"get": 35, "put": 30, "cas": 20, "delete": 5, "set": 10}
SET_PREFIX = "s/"


class KeySpace:
    def __init__(self, slots: int, ops_per_key: int = 500):
        self.slots, self.ops_per_key = slots, ops_per_key
        self._count = itertools.count()
        self._lock = threading.Lock()
        self.used: set[str] = set()

    def pick(self, rng: random.Random) -> str:
        generation = next(self._count) // (self.slots * self.ops_per_key)
        key = f"r{rng.randrange(self.slots)}.{generation}"
        with self._lock:
            self.used.add(key)
        return key

    def all(self) -> list[str]:
        with self._lock:
            return sorted(self.used)


class Worker(threading.Thread):
    def __init__(self, wid: int, endpoints: list[str], history: History, keys: KeySpace, seed: int,
                 stop: threading.Event, attempt_timeout: float = 1.0, pace: float = 0.0):
        super().__init__(name=f"jepsen-worker-{wid}", daemon=True)
        self.wid, self.history, self.keys, self.stop = wid, history, keys, stop
        self.rng = random.Random(seed)
        self.values = Counter(wid)
        self.sets = itertools.count(1)
        self.last: dict[str, object] = {}  # the value this worker last saw per key (for cas)
        self.pace = pace
        self.server_timeout = max(0.05, attempt_timeout * 0.8)
        self.client = Client(endpoints, timeout=attempt_timeout, retries=len(endpoints) - 1, backoff=0.05)

    def run(self) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        try:
            while not self.stop.is_set():
                self.step(self.rng.choices(kinds, weights)[0])
                if self.pace:
                    time.sleep(self.pace)
        finally:
            self.client.close()

    def _call(self, op: str, **args):
        return lambda: self.client.request(op, timeout=self.server_timeout, **args)

    def step(self, kind: str) -> None:
        h, wid = self.history, self.wid
        if kind == "set":
            key, value = f"{SET_PREFIX}{wid}/{next(self.sets)}", self.values.next()
            h.perform(wid, "put", key, value, self._call("put", key=key, value=value))
            return
        key = self.keys.pick(self.rng)
        if kind == "get":
            op = h.perform(wid, "get", key, None, self._call("get", key=key))
        elif kind == "put":
            value = self.values.next()
            op = h.perform(wid, "put", key, value, self._call("put", key=key, value=value))
        elif kind == "cas":
            expected, value = self.last.get(key), self.values.next()
            op = h.perform(wid, "cas", key, [expected, value],
                           self._call("cas", key=key, expected=expected, value=value))
        else:
            op = h.perform(wid, "delete", key, None, self._call("delete", key=key))
        if op.status == OK:
            self.last[key] = {"get": lambda: op.result, "put": lambda: op.value, "cas": lambda: op.result[1],
                              "delete": lambda: None}[op.f]()


class Probe:
    """Background writers, ``per_node`` threads per node, recording when writes succeed."""

    def __init__(self, endpoints: list[str], per_node: int = 2, timeout: float = 0.6, pause: float = 0.02):
        self.endpoints, self.per_node, self.timeout, self.pause = endpoints, per_node, timeout, pause
        self.records: list[tuple[float, float, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Probe:
        for i, endpoint in enumerate(self.endpoints):
            for j in range(self.per_node):
                t = threading.Thread(target=self._loop, args=(endpoint, f"probe/{i}/{j}", j / self.per_node),
                                     name=f"jepsen-probe-{i}-{j}", daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def _loop(self, endpoint: str, key: str, stagger: float) -> None:
        time.sleep(stagger * self.timeout)  # spread the threads of one node over one timeout
        n = 0
        with Client([endpoint], timeout=self.timeout + 0.2, retries=0) as client:
            while not self._stop.is_set():
                n += 1
                call = time.monotonic()
                try:
                    client.request("put", key=key, value=n, timeout=self.timeout)
                    ok = True
                except Exception:
                    ok = False
                with self._lock:
                    self.records.append((call, time.monotonic(), ok))
                time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 2)

    def first_ok(self, since: float, until: float | None = None) -> float | None:
        """Seconds from ``since`` to the return of the first ok write called at or after it (None: none)."""
        with self._lock:
            rets = [ret for call, ret, ok in self.records if ok and call >= since]
        if not rets:
            return None
        first = min(rets)
        return None if until is not None and first > until else first - since


class StatusSampler(threading.Thread):
    """Appends every node's status, every ``period`` seconds, to ``path`` as JSON lines (None: no answer)."""

    def __init__(self, cluster, path, period: float = 0.5):
        super().__init__(name="jepsen-status", daemon=True)
        self.cluster, self.path, self.period = cluster, path, period
        self._halt = threading.Event()

    def run(self) -> None:
        with open(self.path, "a") as fh:
            while not self._halt.wait(self.period):
                row = {"t": time.monotonic()}
                for pid in self.cluster.pids:
                    s = self.cluster.status(pid, timeout=0.3)
                    row[pid] = s and [s["leader"], s["role"], s["ballot"], s["decided_idx"]]
                fh.write(json.dumps(row) + "\n")
                fh.flush()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
