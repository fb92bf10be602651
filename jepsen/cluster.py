"""Real Omni node processes for the harness, each node on its own loopback address.

Node N runs as `python -m omni.cli node start` (the same way tests/integration/cluster.py starts nodes)
and binds its peer and client endpoints on 127.0.0.(host_base+N), so an iptables rule can tell the nodes
apart by address. Its outgoing peer connections are bound to its own address too, through ZeroMQ's
source-address syntax in --peers (``2=tcp://127.0.0.11:0;127.0.0.12:PORT``): without that the kernel
would send them from 127.0.0.1 and every node would look alike to a packet filter. Clients connect from
127.0.0.1 and are never filtered.

Faults on processes: `kill` is SIGKILL, `start` after it is a restart from the same data directory;
`pause` / `resume` are SIGSTOP / SIGCONT. `stop` resumes paused nodes first, then SIGTERM, then SIGKILL.
Each node's output goes to node-N.log in the run's directory, kept for post-mortems.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from omni.client import Client, OmniError


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path, size: int = 3, *, host_base: int = 10, tick_ms: float = 10.0,
                 election_ticks: int = 20, env: dict | None = None, state_machine: str = "kv"):
        if not 1 <= size <= 9 or host_base < 1 or host_base + size > 254:
            raise ValueError("1-9 nodes, on addresses 127.0.0.2 to 127.0.0.254")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.pids = tuple(range(1, size + 1))
        self.host = {p: f"127.0.0.{host_base + p}" for p in self.pids}
        self.peer_port = {p: free_port(self.host[p]) for p in self.pids}
        self.client_port = {p: free_port(self.host[p]) for p in self.pids}
        self.tick_ms, self.election_ticks = tick_ms, election_ticks
        self.env = {**os.environ, **(env or {})}
        self.state_machine = state_machine
        self.procs: dict[int, subprocess.Popen] = {}
        self.paused: set[int] = set()
        self.logs = {p: self.root / f"node-{p}.log" for p in self.pids}

    @property
    def election_timeout(self) -> float:
        """Seconds: tick x election ticks."""
        return self.tick_ms * self.election_ticks / 1000

    def endpoint(self, pid: int) -> str:
        return f"tcp://{self.host[pid]}:{self.client_port[pid]}"

    def endpoints(self, first: int = 0) -> list[str]:
        """Every client endpoint, rotated to start at index ``first`` (spreads clients over nodes)."""
        eps = [self.endpoint(p) for p in self.pids]
        k = first % len(eps)
        return eps[k:] + eps[:k]

    def command(self, pid: int) -> list[str]:
        me = self.host[pid]
        peers = ",".join(f"{q}=tcp://{me}:0;{self.host[q]}:{self.peer_port[q]}" for q in self.pids if q != pid)
        return [sys.executable, "-m", "omni.cli", "node", "start", "--id", str(pid),
                "--listen", f"tcp://{me}:{self.peer_port[pid]}", "--client", self.endpoint(pid),
                "--peers", peers, "--data-dir", str(self.root / f"node-{pid}"),
                "--state-machine", self.state_machine,
                "--tick-ms", f"{self.tick_ms:g}", "--election-ticks", str(self.election_ticks)]

    # --- process faults ---

    def start(self, *pids: int) -> Cluster:
        for pid in pids or self.pids:
            if self.alive(pid):
                continue
            with open(self.logs[pid], "ab") as log:
                log.write(f"=== start at monotonic {time.monotonic():.3f}\n".encode())
                log.flush()
                self.procs[pid] = subprocess.Popen(self.command(pid), stdout=log, stderr=subprocess.STDOUT,
                                                   env=self.env)
            self.paused.discard(pid)
        return self

    def kill(self, pid: int) -> None:
        proc = self.procs.pop(pid, None)
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.paused.discard(pid)

    def pause(self, pid: int) -> None:
        if self.alive(pid):
            self.procs[pid].send_signal(signal.SIGSTOP)
            self.paused.add(pid)

    def resume(self, pid: int) -> None:
        if pid in self.paused and pid in self.procs:
            self.procs[pid].send_signal(signal.SIGCONT)
        self.paused.discard(pid)

    def stop(self) -> None:
        for pid in list(self.paused):
            self.resume(pid)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def alive(self, pid: int) -> bool:
        return pid in self.procs and self.procs[pid].poll() is None

    def exited(self) -> dict[int, int]:
        """Nodes that died on their own (not by our kill): pid -> exit code."""
        return {p: proc.returncode for p, proc in self.procs.items() if proc.poll() is not None}

    # --- looking at it ---

    def status(self, pid: int, timeout: float = 0.5) -> dict | None:
        if not self.alive(pid) or pid in self.paused:
            return None
        try:
            with Client([self.endpoint(pid)], timeout=timeout, retries=0) as c:
                return c.status()
        except OmniError:
            return None

    def current_leader(self) -> int | None:
        """Best effort, now: the reachable node that says it leads with the highest ballot."""
        leaders = [(tuple(s["ballot"]), p) for p in self.pids
                   if (s := self.status(p)) is not None and s["role"] == "leader"]
        return max(leaders)[1] if leaders else None

    def leader(self, deadline: float = 60.0) -> int:
        """Wait until every running node agrees on one leader that says it leads; return it."""
        end, views = time.monotonic() + deadline, {}
        while time.monotonic() < end:
            running = [p for p in self.pids if self.alive(p) and p not in self.paused]
            views = {p: self.status(p) for p in running}
            leaders = {v["leader"] for v in views.values() if v}
            if running and len(leaders) == 1 and all(views.values()):
                leader = leaders.pop()
                if leader in views and views[leader]["role"] == "leader":
                    return leader
            time.sleep(0.1)
        raise TimeoutError(f"no agreed leader within {deadline}s: {views}\n{self.tail_logs()}")

    def client(self, **kwargs) -> Client:
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("retries", None)
        kwargs.setdefault("deadline", 60.0)
        return Client(self.endpoints(), **kwargs)

    def tail_logs(self, lines: int = 15) -> str:
        out = []
        for pid, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- node {pid} ({path}) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
