"""Real network partitions on loopback with iptables, in a chain of our own that is always cleaned up.

Why iptables (testing.md section 5): it works on this machine's kernel (tc netem does not), needs no
namespaces, and a rule is directed, so one-way cuts are possible. Each node has its own 127.0.0.x address
(see `cluster`), so a rule can name the two ends of a link.

One link, "a cannot send to b", is the TCP connection from a's peer socket (source 127.0.0.a) to b's peer
port on 127.0.0.b, which carries every message a sends b. `block(a, b)` drops its packets both ways
(a -> b:port, and b:port -> a), so the connection stalls and ZeroMQ's heartbeat (2 s) declares it dead;
messages b sends a use the other connection, b -> a:port, and still flow. A two-way cut is both links.
Clients connect from 127.0.0.1 to client ports and are never matched. The default action is DROP (a
silent network, which ZeroMQ sees as delay); REJECT with a TCP reset is available.

Rules and cleanup:
- Every rule lives in a chain named OMNIJ-<pid of this process>, reached from INPUT by one jump rule for
  loopback traffic; `heal()` flushes that chain; `close()` removes the jump and the chain. `close()` runs
  from `finally` blocks, at interpreter exit (atexit) and is idempotent.
- A process killed hard cannot clean up, so `open()` first removes every OMNIJ-<pid> chain whose pid is
  no longer alive. `python -m omni.jepsen.netfilter --cleanup` removes every OMNIJ chain, by hand.
- `ensure_iptables()` installs the Debian package with apt-get when the command is missing (we run as
  root) and fails loudly if it still cannot list the filter table.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import threading

PREFIX = "OMNIJ-"
ACTIONS = {"DROP": ["-j", "DROP"], "REJECT": ["-j", "REJECT", "--reject-with", "tcp-reset"]}


class FirewallError(RuntimeError):
    pass


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise FirewallError(f"iptables {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def ensure_iptables(install: bool = True) -> None:
    """Make sure `iptables` exists and can list the filter table; install it with apt-get if allowed."""
    if shutil.which("iptables") is None and install and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "iptables"]
        if subprocess.run(cmd, capture_output=True, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
            subprocess.run(cmd, capture_output=True, env=env, check=False)
    if shutil.which("iptables") is None:
        raise FirewallError("iptables is not installed (apt-get install -y iptables, as root)")
    proc = subprocess.run(["iptables", "-w", "-L", "INPUT", "-n"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FirewallError(f"iptables is not usable here: {proc.stderr.strip()}")


def _chains() -> list[str]:
    lines = _run("-S").stdout.splitlines()
    return [line.split()[1] for line in lines if line.startswith(f"-N {PREFIX}")]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_chain(chain: str) -> None:
    while _run("-D", "INPUT", "-i", "lo", "-j", chain, check=False).returncode == 0:
        pass
    _run("-F", chain, check=False)
    _run("-X", chain, check=False)


def sweep(all_chains: bool = False) -> list[str]:
    """Remove chains left by dead harness processes (or every OMNIJ chain); returns what was removed."""
    removed = []
    for chain in _chains():
        suffix = chain[len(PREFIX):]
        if all_chains or not suffix.isdigit() or not _pid_alive(int(suffix)):
            remove_chain(chain)
            removed.append(chain)
    return removed


class Firewall:
    """Directed link cuts between node addresses; use as a context manager or call open()/close()."""

    def __init__(self, action: str = "DROP"):
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        self.action = ACTIONS[action]
        self.chain = f"{PREFIX}{os.getpid()}"
        self.blocked: set[tuple] = set()
        self._open = False
        self._lock = threading.Lock()

    def open(self) -> Firewall:
        ensure_iptables()
        with self._lock:
            sweep()
            if self.chain in _chains():
                remove_chain(self.chain)  # ours from an earlier Firewall of this process: start clean
            _run("-N", self.chain)
            self._open = True
            atexit.register(self.close)
            _run("-I", "INPUT", "-i", "lo", "-j", self.chain)
        return self

    def block(self, src: str, dst: str, dst_port: int) -> None:
        """Drop the connection from address ``src`` to ``dst:dst_port``, in both packet directions."""
        link = (src, dst, dst_port)
        with self._lock:
            if not self._open:
                raise FirewallError("the firewall is not open")
            if link in self.blocked:
                return
            tcp = ["-i", "lo", "-p", "tcp"]
            _run("-A", self.chain, *tcp, "-s", src, "-d", dst, "--dport", str(dst_port), *self.action)
            _run("-A", self.chain, *tcp, "-s", dst, "--sport", str(dst_port), "-d", src, *self.action)
            self.blocked.add(link)

    def drop_replies(self, src: str, dst: str, dst_port: int) -> None:
        """Drop only what ``dst:dst_port`` sends back to ``src`` on their connection (one direction of it)."""
        with self._lock:
            if not self._open:
                raise FirewallError("the firewall is not open")
            _run("-A", self.chain, "-i", "lo", "-p", "tcp", "-s", dst, "--sport", str(dst_port), "-d", src,
                 *self.action)

    def heal(self) -> None:
        with self._lock:
            if self._open:
                _run("-F", self.chain)
            self.blocked.clear()

    def rules(self) -> list[str]:
        return _run("-S", self.chain).stdout.splitlines() if self._open else []

    def close(self) -> None:
        with self._lock:
            if self._open:
                remove_chain(self.chain)
                self._open = False
                self.blocked.clear()
        atexit.unregister(self.close)

    def __enter__(self) -> Firewall:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="inspect or remove the harness's iptables chains")
    parser.add_argument("--cleanup", action="store_true", help="remove every OMNIJ-* chain, live or not")
    args = parser.parse_args()
    ensure_iptables(install=False)
    if args.cleanup:
        print("removed:", " ".join(sweep(all_chains=True)) or "nothing")
    else:
        print("chains:", " ".join(_chains()) or "none")


if __name__ == "__main__":
    main()
