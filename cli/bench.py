"""`omni bench`: load a cluster through the client protocol and report throughput and latency.

The load generator is one or more processes (``--processes``), each with one ZeroMQ DEALER socket that
keeps ``--concurrency`` requests in flight: it sends the empty delimiter frame and the body exactly as a
REQ socket does (PROTOCOL.md section 1) and matches each reply to its request by ``id``. Requests are
never retried: a write sent with ``client``/``seq`` (``--sessions``, the default, as `omni.client` does)
uses one client id per 32 in-flight slots, so no client id ever has 64 writes in flight (PROTOCOL.md
section 6, rule 4). An error reply is counted under its code; a request with no reply within
``--request-timeout`` is counted as NO_REPLY and its slot is reused. Errors are counted over the whole
run (warm-up, measurement and the final drain); ops and latencies only over the measured window (the
``--duration`` seconds after ``--warmup``).

Target: ``--endpoints`` (or OMNI_ENDPOINTS) of a running cluster, or ``--start N`` to start a local
N-node cluster in a temporary directory that is stopped (and removed) when the bench ends, however it
ends: Ctrl-C, SIGTERM, an error; the node processes also get SIGTERM from the kernel if the bench
itself is killed (PR_SET_PDEATHSIG). ``--workload echo`` drives a bare pyzmq + msgpack echo server
(bench/echo_server.py, or the same loop started here when no endpoint is given) with the same frames as
``put``: that is the ceiling of this load generator and this machine. ``--ceiling`` measures that echo
ceiling in the same run, before the workload, and reports the ratio.
"""
from __future__ import annotations

import array
import ctypes
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import click
import msgpack

WORKLOADS = ("put", "get", "mixed", "put-batch", "sql-insert", "sql-select", "echo")
READ_LEVELS = ("linearizable", "leader", "local")
SLOTS_PER_CLIENT = 32  # in-flight writes per client id: below the 64 that PROTOCOL.md rule 4 allows
SQL_TABLE = "CREATE TABLE IF NOT EXISTS bench (k TEXT PRIMARY KEY, v BLOB)"
SQL_INSERT = "INSERT OR REPLACE INTO bench (k, v) VALUES (?, ?)"
SQL_SELECT = "SELECT v FROM bench WHERE k = ?"
PRELOAD_CHUNK = 1000
PACKED_KEYS_MAX = 200_000  # key spaces up to this size are packed once per generator process


# ---- request frames ---------------------------------------------------------------------------------------

def _p(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


_U64 = struct.Struct(">BQ").pack


def _uint(n: int) -> bytes:
    """A non-negative int as msgpack uint64 (a valid, if not the shortest, encoding; cheaper than packb)."""
    return _U64(0xCF, n)


def _map_header(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return (b"\xdc" + n.to_bytes(2, "big")) if n < 65536 else (b"\xdd" + n.to_bytes(4, "big"))


def key_name(n: int, size: int) -> str:
    """Key number ``n`` as a string of exactly ``size`` characters (longer if the number needs it)."""
    digits = str(n)
    return "k" + digits.rjust(max(0, size - 1), "0")


class Frames:
    """Makes request frames fast: the fixed parts of each map are packed once, only key and id per request.

    ``next(req_id, slot)`` returns (frame, ops in it, is a write).
    """

    def __init__(self, spec: dict, seed: int):
        self.spec = spec
        self.rng = random.Random(seed)
        self.keys = spec["keys"]
        self.key_size = spec["key_size"]
        value = random.Random(seed + 1).randbytes(spec["value_size"])
        self.value = _p(value)
        self.sessions = spec["sessions"]
        self.clients = [_p(uuid.uuid4().hex) for _ in range(max(1, math.ceil(spec["concurrency"] / SLOTS_PER_CLIENT)))]
        self.seqs = [0] * len(self.clients)
        level = spec["read_level"]
        self.consistency = b"" if level == "linearizable" else _p("consistency") + _p(level)
        self.timeout = _p("timeout") + _p(float(spec["request_timeout"]))
        self.workload = spec["workload"]
        self.read_fraction = spec["read_fraction"]
        self.batch = spec["batch"]
        self._kv_put = _p("op") + _p("put") + _p("key")
        self._kv_get = _p("op") + _p("get") + _p("key")
        self._value_key = _p("value")
        self._id_key = _p("id")
        self._sql_insert = _p("op") + _p("execute") + _p("sql") + _p(SQL_INSERT) + _p("params") + b"\x92"
        self._sql_select = _p("op") + _p("query") + _p("sql") + _p(SQL_SELECT) + _p("params") + b"\x91"
        self._batch_put = _map_header(3) + _p("op") + _p("put") + _p("key")
        self._rand = self.rng.random
        self._packed_keys = ([_p(key_name(n, self.key_size)) for n in range(self.keys)]
                             if self.keys <= PACKED_KEYS_MAX else None)
        self._client_prefix = [_p("client") + c + _p("seq") for c in self.clients]
        self._value_tail = self._value_key + self.value
        self._put_head = _map_header(5) + self._kv_put
        self._put_head_s = _map_header(7) + self._kv_put
        self._get_head = _map_header(5 if self.consistency else 4) + self._kv_get

    def _key(self) -> bytes:
        n = int(self._rand() * self.keys)
        packed = self._packed_keys
        return packed[n] if packed is not None else _p(key_name(n, self.key_size))

    def _session(self, slot: int) -> tuple[int, bytes]:
        if not self.sessions:
            return 0, b""
        c = slot // SLOTS_PER_CLIENT
        seq = self.seqs[c] = self.seqs[c] + 1
        return 2, self._client_prefix[c] + _uint(seq)

    def next(self, req_id: int, slot: int) -> tuple[bytes, int, bool]:
        w = self.workload
        if w == "mixed":
            w = "get" if self._rand() < self.read_fraction else "put"
        tail = self._id_key + _uint(req_id) + self.timeout
        if w == "put" or w == "echo":
            if self.sessions:
                c = slot // SLOTS_PER_CLIENT
                seq = self.seqs[c] = self.seqs[c] + 1
                return b"".join((self._put_head_s, self._key(), self._value_tail, tail,
                                 self._client_prefix[c], _uint(seq))), 1, True
            return b"".join((self._put_head, self._key(), self._value_tail, tail)), 1, True
        if w == "get":
            return b"".join((self._get_head, self._key(), tail, self.consistency)), 1, False
        if w == "put-batch":
            ops = b"".join([self._batch_put + self._key() + self._value_tail for _ in range(self.batch)])
            n, session = self._session(slot)
            body = _p("op") + _p("batch") + _p("ops") + _array_header(self.batch) + ops
            return _map_header(4 + n) + body + tail + session, self.batch, True
        if w == "sql-insert":
            n, session = self._session(slot)
            return _map_header(5 + n) + self._sql_insert + self._key() + self.value + tail + session, 1, True
        if w == "sql-select":
            n = 6 if self.consistency else 5
            return _map_header(n) + self._sql_select + self._key() + tail + self.consistency, 1, False
        raise ValueError(f"unknown workload {w}")


# ---- the load generator process ---------------------------------------------------------------------------

def _worker(spec: dict, index: int, counters, ready, go, start_at, abort, results) -> None:
    """One load generator process; reports ("done", index, summary) or ("failed", index, text) on results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us to stop
    set_pdeathsig(signal.SIGKILL)  # and if the parent is killed outright, we go with it
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        for endpoint in spec["targets"]:
            sock.connect(endpoint)
        frames = Frames(spec, seed=spec["seed"] * 1000 + index)
        concurrency, timeout = spec["concurrency"], spec["request_timeout"]
        ready.put(index)
        go.wait()
        t0 = start_at.value
        warm_end = t0 + spec["warmup"]
        end = warm_end + spec["duration"]
        now = time.monotonic()
        if now < t0:
            time.sleep(t0 - now)
        summary = _run_load(sock, frames, concurrency, timeout, warm_end, end, counters, index, abort)
        results.put(("done", index, summary))
    except Exception as exc:  # report, never hang the parent
        results.put(("failed", index, f"{type(exc).__name__}: {exc}"))
    finally:
        sock.close(linger=0)
        ctx.term()


def _run_load(sock, frames: Frames, concurrency: int, timeout: float, warm_end: float, end: float,
              counters, index: int, abort=None) -> dict:
    import zmq
    inflight: dict[int, tuple[float, int, int]] = {}  # id -> (sent at, slot, ops in it)
    free_slots = list(range(concurrency - 1, -1, -1))
    lat = array.array("q")  # ns, replies received inside the window
    errors: Counter = Counter()
    ok = ops = 0
    next_id = 1
    done_all = 0
    err_all = 0
    next_sweep = time.monotonic() + 0.1
    unpack = msgpack.unpackb
    mono = time.monotonic
    # plain int flags and single-frame calls: pyzmq's multipart helpers spend more CPU on flag enums than
    # on the I/O itself (6.5 vs 2.1 us per 4-frame send measured here), CPU the 2-core machine's nodes need
    send_frame = sock.send
    recv_frame = sock.recv
    more = sock.getsockopt
    poll = sock.poll
    EMPTY = b""
    NOBLOCK = int(zmq.NOBLOCK)
    SNDMORE = int(zmq.SNDMORE)
    RCVMORE = int(zmq.RCVMORE)
    stopping = False
    drain_until = end + timeout + 1.5
    while True:
        now = mono()
        if not stopping and now >= end:
            stopping = True
        if stopping and (not inflight or now >= drain_until):
            break
        if not stopping:
            while free_slots:
                slot = free_slots.pop()
                frame, n, _ = frames.next(next_id, slot)
                inflight[next_id] = (mono(), slot, n)
                next_id += 1
                send_frame(EMPTY, SNDMORE)
                send_frame(frame, 0)
        if poll(50 if stopping else 10):
            for _ in range(10_000):
                try:
                    body = recv_frame(NOBLOCK)  # the empty delimiter, then the reply
                    while more(RCVMORE):
                        body = recv_frame(NOBLOCK)
                except zmq.Again:
                    break
                t = mono()
                try:
                    reply = unpack(body, raw=False, strict_map_key=False)
                    rid = reply.get("id")
                    entry = inflight.pop(rid, None)
                except Exception:
                    errors["BAD_REPLY"] += 1
                    err_all += 1
                    continue
                if entry is None:
                    errors["LATE_REPLY"] += 1  # answered after we gave up on it (counted NO_REPLY already)
                    continue
                sent, slot, n = entry
                free_slots.append(slot)
                if reply.get("ok") is True:
                    done_all += 1
                    if warm_end <= t < end:
                        ok += 1
                        ops += n
                        lat.append(int((t - sent) * 1e9))
                else:
                    err = reply.get("error")
                    code = err.get("code") if isinstance(err, dict) else None
                    errors[code if isinstance(code, str) else "BAD_REPLY"] += 1
                    err_all += 1
            counters[2 * index] = done_all
            counters[2 * index + 1] = err_all
        now = mono()
        if now >= next_sweep:
            next_sweep = now + 0.1
            if abort is not None and abort.value:  # Ctrl-C in the parent: stop at once, no drain
                break
            # the node answers TIMEOUT after `timeout` (sent in each request); silence for a second longer
            # than that is a request nobody answered
            stale = [rid for rid, (sent, _, _) in inflight.items() if now - sent > timeout + 1.0]
            for rid in stale:
                _, slot, _ = inflight.pop(rid)
                free_slots.append(slot)
                errors["NO_REPLY"] += 1
                err_all += 1
            counters[2 * index + 1] = err_all
    errors["NO_REPLY"] += len(inflight)
    if not errors["NO_REPLY"]:
        del errors["NO_REPLY"]
    return {"requests": ok, "ops": ops, "errors": dict(errors), "lat": lat.tobytes()}


# ---- the echo server (the same loop as bench/echo_server.py) -----------------------------------------------

def echo_serve(endpoint: str, stop=None) -> None:
    """One thread: receive, decode, encode, reply. Replies like a put: {"ok", "result": {"revision"}, "id"}."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint)
    pack, unpack = msgpack.packb, msgpack.unpackb
    try:
        while stop is None or not stop.is_set():
            if not sock.poll(100):
                continue
            for _ in range(1000):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    request = unpack(frames[-1], raw=False, strict_map_key=False)
                    reply = {"ok": True, "result": {"revision": 0}, "id": request.get("id")}
                except Exception:
                    reply = {"ok": False, "error": {"code": "BAD_REQUEST", "message": "not msgpack"}, "id": None}
                frames[-1] = pack(reply, use_bin_type=True)
                sock.send_multipart(frames)
    finally:
        sock.close(linger=0)
        ctx.term()


def _echo_process(endpoint: str, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_pdeathsig(signal.SIGKILL)
    echo_serve(endpoint, stop)


# ---- a local cluster ---------------------------------------------------------------------------------------

def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    """In a child: get ``sig`` when the bench dies, so no node or generator outlives a killed bench."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _ports_free(ports) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def stop_processes(procs, timeout: float) -> None:
    """SIGTERM every process still running, wait up to ``timeout`` each, then SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def local_port_range(ephemeral_start: int) -> range:
    """Where ports for local nodes come from: below the kernel's ephemeral range (32768-60999 by default on
    Linux), from which every outgoing connection on the machine takes its local port, so that a port found
    free is not some connection's (a node's own link to a peer, say) before the node binds it. Where that
    range leaves no room below it, 10000-31999 all the same."""
    top = min(32000, ephemeral_start)
    return range(10000, top) if top - 10000 >= 2000 else range(10000, 32000)


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


LOCAL_PORTS = local_port_range(_ephemeral_start())


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (a program binding the same one on purpose could still
    win the race; an outgoing connection cannot)."""
    rng = random.Random()
    ports: list[int] = []
    for _ in range(200 * count):
        port = rng.choice(LOCAL_PORTS)
        if port not in ports and _ports_free([port]):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise click.ClickException("no free ports for local nodes")


def node_statuses(endpoints, timeout: float, retries: int) -> dict:
    """endpoint -> that node's `status` result, for the nodes that answered."""
    from omni.client import Client, OmniError
    views = {}
    for ep in endpoints:
        try:
            with Client([ep], timeout=timeout, retries=retries) as c:
                views[ep] = c.status()
        except OmniError:
            pass
    return views


def free_base_port(nodes: int) -> int:
    """A base port B with B+1..B+N (peers) and B+101..B+100+N (clients) all free on loopback."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(LOCAL_PORTS.start, LOCAL_PORTS.stop - 200, 200)  # see LOCAL_PORTS
        if _ports_free([base + p for p in range(1, nodes + 1)] + [base + 100 + p for p in range(1, nodes + 1)]):
            return base
    raise click.ClickException("no free ports for a local cluster")


class LocalCluster:
    """N node processes started with cli/node.py's `cluster_commands`, logs in the data directory."""

    def __init__(self, nodes: int, state_machine: str, data_dir: Path | None = None, keep: bool = False,
                 node_args: tuple = ()):
        self.nodes, self.state_machine, self.node_args = nodes, state_machine, tuple(node_args)
        self.made_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="omni-bench-")) if data_dir is None else data_dir
        self.keep = keep
        self.base_port = 0
        self.procs: list[subprocess.Popen] = []

    @property
    def endpoints(self) -> list[str]:
        return [f"tcp://127.0.0.1:{self.base_port + 100 + p}" for p in range(1, self.nodes + 1)]

    def start(self) -> "LocalCluster":
        from .node import cluster_commands
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.base_port = free_base_port(self.nodes)
        for pid, cmd in enumerate(cluster_commands(self.nodes, self.base_port, self.data_dir, self.state_machine), 1):
            with open(self.data_dir / f"node-{pid}.log", "ab") as log:
                self.procs.append(subprocess.Popen(cmd + ["--log-level", "WARNING", *self.node_args], stdout=log,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   start_new_session=True, preexec_fn=set_pdeathsig))
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        stop_processes(self.procs, timeout=5)
        self.procs = []
        if self.made_dir and not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def tail_logs(self, lines: int = 10) -> str:
        out = []
        for pid in range(1, self.nodes + 1):
            path = self.data_dir / f"node-{pid}.log"
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- node {pid} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


def wait_for_leader(endpoints: list[str], deadline: float = 30.0, procs=None, stable: float = 1.0) -> dict[int, str]:
    """Wait until every endpoint names the same leader for ``stable`` seconds running; {node id: endpoint}.

    Stability matters: right after start-up a second candidate of the same round can take over from the
    first leader within a few hundred ms (seen: ballot (1,0,2) replaced by (1,0,3)).
    """
    end = time.monotonic() + deadline
    agreed_since, agreed_on = None, None
    while time.monotonic() < end:
        if procs and any(p.poll() is not None for p in procs):
            raise click.ClickException("a node exited during start-up")
        views = node_statuses(endpoints, timeout=0.5, retries=0)
        leaders = {(v["leader"], tuple(v["ballot"])) for v in views.values()}
        now = time.monotonic()
        if len(views) == len(endpoints) and len(leaders) == 1 and next(iter(leaders))[0] != 0:
            if leaders != agreed_on:
                agreed_since, agreed_on = now, leaders
            elif now - agreed_since >= stable:
                return {v["node"]: ep for ep, v in views.items()}
        else:
            agreed_since, agreed_on = None, None
        time.sleep(0.1)
    raise click.ClickException(f"no stable leader within {deadline:g}s")


def find_leader(endpoints: list[str]) -> tuple[str | None, dict]:
    """The endpoint of the node the cluster calls leader (None if unknown), and each node's status."""
    views = node_statuses(endpoints, timeout=1.0, retries=1)
    for ep, v in views.items():
        if v.get("role") == "leader":
            return ep, views
    return None, views


# ---- setup: tables and preloaded keys ----------------------------------------------------------------------

def preload_keyspace(endpoints: list[str], spec: dict, keys: int | None = None, progress=None) -> None:
    """Write keys 0..keys-1 (batches of 1000 per log entry) so that reads find them."""
    from omni.client import Client
    keys = spec["keys"] if keys is None else keys
    value = random.Random(spec["seed"]).randbytes(spec["value_size"])
    with Client(endpoints, timeout=10.0, retries=None, deadline=120.0) as c:
        for lo in range(0, keys, PRELOAD_CHUNK):
            names = [key_name(n, spec["key_size"]) for n in range(lo, min(keys, lo + PRELOAD_CHUNK))]
            if spec["workload"].startswith("sql"):
                c.execute_many([[SQL_INSERT, [k, value]] for k in names])
            else:
                c.request("batch", ops=[{"op": "put", "key": k, "value": value} for k in names])
            if progress:
                progress(min(keys, lo + PRELOAD_CHUNK))


def setup_sql(endpoints: list[str]) -> None:
    from omni.client import Client
    with Client(endpoints, timeout=5.0, retries=None, deadline=60.0) as c:
        c.execute(SQL_TABLE)


# ---- running one measurement -------------------------------------------------------------------------------

def run_load(spec: dict, show_progress: bool) -> dict:
    """Start the generator processes, show progress, gather and merge their results."""
    mp = multiprocessing.get_context("fork")  # `python -m omni.cli` cannot be re-imported by spawn
    procs_n = spec["processes"]
    counters = mp.Array("q", 2 * procs_n, lock=False)
    ready, results, go = mp.Queue(), mp.Queue(), mp.Event()
    start_at = mp.Value("d", 0.0, lock=False)
    abort = mp.Value("b", 0, lock=False)
    workers = [mp.Process(target=_worker, args=(spec, i, counters, ready, go, start_at, abort, results), daemon=True)
               for i in range(procs_n)]
    for w in workers:
        w.start()
    summaries, failures = [], []
    try:
        for _ in workers:
            ready.get(timeout=30)
        start_at.value = time.monotonic() + 0.05
        go.set()
        t0 = start_at.value
        total = spec["warmup"] + spec["duration"]
        last_t, last_done = t0, 0
        while len(summaries) + len(failures) < procs_n:
            try:
                kind, index, payload = results.get(timeout=0.25)
                (summaries if kind == "done" else failures).append(payload)
                continue
            except Exception:  # queue.Empty
                pass
            if any(not w.is_alive() and w.exitcode not in (0, None) for w in workers):
                raise click.ClickException("a load generator process died")
            if show_progress:
                now = time.monotonic()
                done = sum(counters[2 * i] for i in range(procs_n))
                errs = sum(counters[2 * i + 1] for i in range(procs_n))
                elapsed = now - t0
                rate = (done - last_done) / (now - last_t) if now > last_t else 0.0
                last_t, last_done = now, done
                phase = "warmup" if elapsed < spec["warmup"] else ("measure" if elapsed < total else "drain")
                bar_len = 20
                filled = min(bar_len, int(bar_len * max(0.0, elapsed) / total)) if total else bar_len
                click.echo(f"\r{spec['label']:<12} [{'#' * filled}{'.' * (bar_len - filled)}] {elapsed:5.1f}/{total:.0f}s "
                           f"{phase:<7} {rate:>9,.0f} req/s  done {done:,}  errors {errs:,}   ", err=True, nl=False)
        if show_progress:
            click.echo("", err=True)
    except BaseException:  # Ctrl-C, SIGTERM, a failure: the generators stop now rather than at the end
        abort.value = 1
        raise
    finally:
        go.set()
        for w in workers:
            w.join(timeout=2 if abort.value else spec["request_timeout"] + 5)
            if w.is_alive():
                w.terminate()
                w.join(timeout=2)
    if failures:
        raise click.ClickException(f"load generator failed: {failures[0]}")
    return merge(spec, summaries)


def merge(spec: dict, summaries: list[dict]) -> dict:
    lat = array.array("q")
    errors: Counter = Counter()
    requests = ops = 0
    for s in summaries:
        requests += s["requests"]
        ops += s["ops"]
        errors.update(s["errors"])
        part = array.array("q")
        part.frombytes(s["lat"])
        lat.extend(part)
    ordered = sorted(lat)

    def pct(q: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1e6, 3)

    duration = spec["duration"]
    late = errors.pop("LATE_REPLY", 0)
    result = {
        "workload": spec["workload"], "label": spec["label"],
        "read_level": spec["read_level"] if spec["workload"] in ("get", "mixed", "sql-select") else None,
        "targets": spec["targets"], "processes": spec["processes"], "concurrency": spec["concurrency"],
        "value_size": spec["value_size"], "key_size": spec["key_size"], "keys": spec["keys"],
        "sessions": spec["sessions"], "duration_s": duration, "warmup_s": spec["warmup"],
        "requests": requests, "ops": ops,
        "ops_per_s": round(ops / duration, 1), "requests_per_s": round(requests / duration, 1),
        "errors": dict(sorted(errors.items())), "errors_total": sum(errors.values()), "late_replies": late,
        "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
                       "max": round(ordered[-1] / 1e6, 3) if ordered else None,
                       "mean": round(sum(ordered) / len(ordered) / 1e6, 3) if ordered else None},
    }
    if spec["workload"] == "put-batch":
        result["batch"] = spec["batch"]
        result["entries_per_s"] = result["ops_per_s"]
    if spec["workload"] == "mixed":
        result["read_fraction"] = spec["read_fraction"]
    return result


# ---- output ------------------------------------------------------------------------------------------------

def _fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_table(result: dict) -> None:
    rows = []
    w = result["workload"]
    what = w
    if result.get("read_level"):
        what += f" ({result['read_level']} reads"
        what += f", {result['read_fraction']:.0%} reads)" if w == "mixed" else ")"
    if w == "put-batch":
        what += f" ({result['batch']} puts per frame)"
    rows.append(("workload", what))
    rows.append(("data", f"{result['key_size']} B keys, {result['value_size']} B values, {result['keys']:,} keys"))
    rows.append(("target", ", ".join(result["targets"])))
    rows.append(("load", f"{result['processes']} process(es) x {result['concurrency']} in flight, "
                         f"{result['duration_s']:g} s after {result['warmup_s']:g} s warm-up"
                         f"{', client/seq on writes' if result['sessions'] else ''}"))
    rows.append(("requests", f"{result['requests']:,}  ({result['requests_per_s']:,.0f}/s)"))
    if w == "put-batch":
        rows.append(("entries", f"{result['ops']:,}  ({result['entries_per_s']:,.0f} entries/s)"))
    else:
        rows.append(("ops", f"{result['ops']:,}  ({result['ops_per_s']:,.0f} ops/s)"))
    errs = result["errors"]
    rows.append(("errors", ", ".join(f"{k} {v:,}" for k, v in errs.items()) if errs else "none"))
    if result.get("late_replies"):
        rows.append(("late replies", f"{result['late_replies']:,} (after NO_REPLY was counted)"))
    lat = result["latency_ms"]
    rows.append(("latency ms", f"p50 {_fmt_ms(lat['p50'])}  p90 {_fmt_ms(lat['p90'])}  p99 {_fmt_ms(lat['p99'])}  "
                               f"max {_fmt_ms(lat['max'])}"))
    c = result.get("ceiling")
    if c:
        rows.append(("echo ceiling", f"{c['requests_per_s']:,.0f} req/s (p50 {_fmt_ms(c['latency_ms']['p50'])} ms, "
                                     f"p99 {_fmt_ms(c['latency_ms']['p99'])} ms), same generator, same run"))
        what = "entries/s over the echo ceiling's requests/s" if w == "put-batch" else "of the echo ceiling"
        rows.append(("ratio", f"{result['ratio']:.3f} {what}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


# ---- the command -------------------------------------------------------------------------------------------

@click.command("bench")
@click.option("--endpoints", envvar="OMNI_ENDPOINTS", default=None, show_envvar=True,
              help="Client endpoints of a running cluster (comma-separated). Not with --start.")
@click.option("--start", "start_nodes", type=click.IntRange(1, 9), default=None,
              help="Start a local cluster of N nodes in a temporary directory for the run, and stop it after.")
@click.option("--workload", type=click.Choice(WORKLOADS), default="put", show_default=True,
              help="put, get, mixed (--read-fraction gets), put-batch (--batch puts per frame, one log entry), "
                   "sql-insert, sql-select, or echo (the same frames as put, to an echo server).")
@click.option("--read-level", type=click.Choice(READ_LEVELS), default="linearizable", show_default=True,
              help="Consistency of the reads of get, mixed and sql-select.")
@click.option("--read-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of gets in the mixed workload.")
@click.option("--value-size", type=click.IntRange(0, 8 * 1024 * 1024), default=100, show_default=True, help="Bytes.")
@click.option("--key-size", type=click.IntRange(2, 1024), default=16, show_default=True, help="Characters.")
@click.option("--keys", type=click.IntRange(1), default=10_000, show_default=True, help="Size of the key space.")
@click.option("--batch", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Puts per frame for put-batch.")
@click.option("--concurrency", type=click.IntRange(1, 100_000), default=64, show_default=True,
              help="Requests in flight per generator process.")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Load generator processes.")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds measured.")
@click.option("--warmup", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Seconds of load before measuring.")
@click.option("--target", type=click.Choice(["leader", "all", "first"]), default="leader", show_default=True,
              help="Send to the leader, spread over all endpoints, or to the first endpoint only.")
@click.option("--sessions/--no-sessions", default=True, show_default=True,
              help="Send writes with client/seq (exactly-once bookkeeping, as omni.client does).")
@click.option("--request-timeout", type=click.FloatRange(0.01, 300), default=5.0, show_default=True,
              help="Sent as each request's timeout (the node answers TIMEOUT after it); a request still "
                   "unanswered 1 s later counts as NO_REPLY.")
@click.option("--preload/--no-preload", default=None,
              help="Write the whole key space first (batches of 1000) [default: for get, mixed and sql-select]; "
                   "with put, measures writes into a large state (--keys 1000000).")
@click.option("--ceiling", is_flag=True,
              help="Also measure an echo server with the same frames and load first, and report the ratio.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --start: where the nodes keep their data (default: a temporary directory, removed).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--progress/--no-progress", default=None, help="Live progress line on stderr [default: if a terminal].")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def bench(endpoints, start_nodes, workload, read_level, read_fraction, value_size, key_size, keys, batch, concurrency,
          processes, duration, warmup, target, sessions, request_timeout, preload, ceiling, data_dir, seed, progress,
          output):
    """Load a cluster through the client protocol; print ops/s, errors and latency percentiles.

    \b
    omni bench --start 3 --workload put --concurrency 200 --processes 2 --ceiling
    omni bench --endpoints tcp://127.0.0.1:7201 --workload get --read-level local
    omni bench --start 3 --workload put-batch --batch 100
    """
    from omni.client import parse_endpoints
    if endpoints and start_nodes:
        raise click.UsageError("give --endpoints or --start, not both")
    if workload == "echo" and start_nodes:
        raise click.UsageError("--workload echo drives an echo server, not a cluster: leave out --start")
    show = sys.stderr.isatty() if progress is None else progress
    spec = dict(workload=workload, read_level=read_level, read_fraction=read_fraction, value_size=value_size,
                key_size=key_size, keys=keys, batch=batch, concurrency=concurrency, processes=processes,
                duration=duration, warmup=warmup, sessions=sessions, request_timeout=request_timeout, seed=seed,
                label=workload, targets=[])
    cleanups: list = []

    def on_term(*_):
        raise SystemExit(143)

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        if workload == "echo" and not endpoints and not start_nodes:
            endpoints = _start_echo(cleanups)
        if start_nodes:
            sm = "sql" if workload.startswith("sql") else "kv"
            cluster = LocalCluster(start_nodes, sm, data_dir)
            cleanups.append(cluster.stop)
            cluster.start()
            if show:
                click.echo(f"omni bench: starting {start_nodes} nodes ({sm}) in {cluster.data_dir}", err=True)
            try:
                wait_for_leader(cluster.endpoints, procs=cluster.procs)
            except click.ClickException as exc:
                raise click.ClickException(f"{exc.message}\n{cluster.tail_logs()}")
            eps = cluster.endpoints
        else:
            eps = parse_endpoints(endpoints or os.environ.get("OMNI_ENDPOINTS") or "tcp://127.0.0.1:7201")
        if workload == "echo":
            spec["targets"] = eps[:1] if target != "all" else eps
        else:
            spec["targets"] = _targets(eps, target)
            if workload.startswith("sql"):
                try:
                    setup_sql(eps)
                except Exception as exc:  # e.g. UNKNOWN_OP on a kv cluster: the run counts every failure
                    click.echo(f"omni bench: warning: cannot create the bench table: {exc}", err=True)
            if preload if preload is not None else workload in ("get", "mixed", "sql-select"):
                if show:
                    click.echo(f"omni bench: preloading {keys:,} keys", err=True)
                preload_keyspace(eps, spec)
        ceiling_result = None
        if ceiling and workload != "echo":
            echo_ep = _start_echo(cleanups)
            cspec = dict(spec, workload="echo", label="echo", targets=[echo_ep])
            ceiling_result = run_load(cspec, show)
        result = run_load(spec, show)
        if ceiling_result is not None:
            result["ceiling"] = {k: ceiling_result[k] for k in ("requests_per_s", "latency_ms", "errors", "targets")}
            c = ceiling_result["requests_per_s"]
            # per frame for single ops; for put-batch, entries/s against the echo's frames/s (how far past
            # the per-frame ceiling batching goes)
            result["ratio"] = round(result["ops_per_s"] / c, 4) if c else None
        if output == "json":
            click.echo(json.dumps(result))
        else:
            print_table(result)
        if result["requests"] == 0:
            sys.exit(1)
    except KeyboardInterrupt:
        click.echo("\nomni bench: interrupted", err=True)
        sys.exit(130)
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception:
                pass
        signal.signal(signal.SIGTERM, old_term)


def _targets(eps: list[str], target: str) -> list[str]:
    if target == "first":
        return eps[:1]
    if target == "all":
        return eps
    leader, _ = find_leader(eps)
    return [leader] if leader else eps


def _start_echo(cleanups: list) -> str:
    mp = multiprocessing.get_context("fork")
    port = free_base_port(1) + 101
    endpoint = f"tcp://127.0.0.1:{port}"
    stop = mp.Event()
    proc = mp.Process(target=_echo_process, args=(endpoint, stop), daemon=True)
    proc.start()

    def cleanup():
        stop.set()
        proc.join(timeout=2)
        if proc.is_alive():
            proc.terminate()
            proc.join()

    cleanups.append(cleanup)
    time.sleep(0.2)
    return endpoint
