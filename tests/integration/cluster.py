"""Real clusters for integration tests: node processes started through `omni node start` on loopback.

Each node gets free ports, its own data directory and log file under the test's tmp_path. `kill` is a real
SIGKILL; `start` after it is a real restart from the same data directory.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import zmq

from omni.cli.bench import free_ports  # noqa: F401 (the tests import it from here)
from omni.client import Client, OmniError

NODE_ARGS = ["--tick-ms", "10", "--election-ticks", "20"]


class LocalCluster:
    def __init__(self, root: Path, pids=(1, 2, 3), state_machine: str = "kv", env: dict | None = None):
        self.root, self.pids, self.state_machine = root, tuple(pids), state_machine
        self.env = env  # the node processes' environment; None: this process's own
        ports = free_ports(2 * len(self.pids))
        self.peer_port = dict(zip(self.pids, ports[: len(self.pids)]))
        self.client_port = dict(zip(self.pids, ports[len(self.pids):]))
        self.procs: dict[int, subprocess.Popen] = {}
        self.logs: dict[int, Path] = {}

    def endpoint(self, pid: int) -> str:
        return f"tcp://127.0.0.1:{self.client_port[pid]}"

    def command(self, pid: int) -> list[str]:
        peers = ",".join(f"{p}=tcp://127.0.0.1:{self.peer_port[p]}" for p in self.pids if p != pid)
        return [sys.executable, "-m", "omni.cli", "node", "start", "--id", str(pid),
                "--listen", f"tcp://127.0.0.1:{self.peer_port[pid]}", "--client", self.endpoint(pid),
                "--peers", peers, "--data-dir", str(self.root / f"node-{pid}"),
                "--state-machine", self.state_machine, *NODE_ARGS]

    def start(self, *pids: int) -> "LocalCluster":
        for pid in pids or self.pids:
            self.logs[pid] = self.root / f"node-{pid}.log"
            log = open(self.logs[pid], "ab")
            self.procs[pid] = subprocess.Popen(self.command(pid), stdout=log, stderr=subprocess.STDOUT,
                                               env=self.env)
            log.close()
        return self

    def kill(self, pid: int) -> None:
        proc = self.procs.pop(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def alive(self, pid: int) -> bool:
        return pid in self.procs and self.procs[pid].poll() is None

    def client(self, *pids: int, **kwargs) -> Client:
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("retries", None)
        kwargs.setdefault("deadline", 30.0)
        return Client([self.endpoint(p) for p in pids or self.pids], **kwargs)

    def status(self, pid: int, timeout: float = 0.5) -> dict | None:
        try:
            with Client([self.endpoint(pid)], timeout=timeout, retries=0) as c:
                return c.status()
        except OmniError:
            return None

    def leader(self, deadline: float = 30.0) -> int:
        """Wait until the live nodes agree on a leader that reports itself leading; return it."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            views = {p: self.status(p) for p in self.procs if self.alive(p)}
            leaders = {v["leader"] for v in views.values() if v}
            if len(leaders) == 1 and all(views.values()):
                leader = leaders.pop()
                if leader in views and views[leader]["role"] == "leader":
                    return leader
            time.sleep(0.1)
        raise AssertionError(f"no agreed leader within {deadline}s: {views}\n{self.tail_logs()}")

    def steady_leader(self, hold: float = 1.0, deadline: float = 30.0) -> int:
        """A leader that is still the same (same ballot) ``hold`` seconds later. Right after start-up a node
        that came up late with a higher id takes over once (BLE adopts the highest ballot it hears), and a
        test that pipelines raw writes into that change sees them time out."""
        end = time.monotonic() + deadline
        while True:
            first = self.leader(deadline)
            ballot = self.status(first)["ballot"] if self.status(first) else None
            time.sleep(hold)
            again = self.leader(deadline)
            if again == first and (self.status(again) or {}).get("ballot") == ballot:
                return again
            if time.monotonic() > end:
                raise AssertionError(f"the leader kept changing for {deadline}s")

    def tail_logs(self, lines: int = 15) -> str:
        out = []
        for pid, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- node {pid} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


def wait_for(predicate, deadline=60.0, what="condition"):
    """Poll ``predicate`` until it returns something truthy (returned) or ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def request_until_outcome(cluster, pid, request, deadline=60.0, poll_ms=3000):
    """Send one raw request to one node until it answers with an outcome, as a client retries (a write
    keeps its client and seq every time); refusals during an election are retried. Returns the reply."""
    ctx = zmq.Context.instance()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cluster.endpoint(pid))
        try:
            sock.send(msgpack.packb(request, use_bin_type=True))
            reply = msgpack.unpackb(sock.recv(), raw=False) if sock.poll(poll_ms) else None
        finally:
            sock.close(linger=0)
        if reply is not None and (reply["ok"] or reply["error"]["code"] not in ("UNAVAILABLE", "TIMEOUT")):
            return reply
        time.sleep(0.2)
    raise AssertionError(f"node {pid} gave no outcome for {request}")
