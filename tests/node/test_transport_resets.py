"""Connections that flood and then reset must not kill the node (libzmq 4.3.5 aborts the process otherwise).

libzmq stops reading a connection whose receive pipe is full, or whose pipe a ROUTER_HANDOVER took away;
if that connection then fails, a later write on it (its ZMTP heartbeat, or the PONG to a PING still
buffered behind the full pipe) hits ``Assertion failed: !_io_error (stream_engine_base.cpp:310)`` and
the node dies with SIGABRT (seen in CI: a torture run's node 1 after it resumed from SIGSTOP and node 2 was
killed). Each test plays the bad connection by hand (zmtp_raw.py), so it can flood, interleave PINGs and
reset at will, against a real Transport in its own process (transport_victim.py).
"""
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omni.actors.transport import KIND_CORE
from omni.paxos import Ballot, Envelope, PrepareReq
from omni.transport import codec

from ..integration.cluster import free_ports
from .zmtp_raw import connect, flood_and_reset, frame, handshake

VICTIM = Path(__file__).with_name("transport_victim.py")
pytestmark = pytest.mark.timeout(180)  # a victim that hangs instead of dying would block readline()


def valid_core_frame() -> bytes:
    return frame(KIND_CORE + codec.encode(Envelope(2, 1, 1, PrepareReq(Ballot(1, 0, 2)))))


class Victim:
    """transport_victim.py in a child process; every helper turns the child's death into a test failure that
    shows its exit code and the end of its stderr."""

    def __init__(self, stall: float):
        self.peer_port, self.client_port, self.peer2_port = free_ports(3)
        self.proc = subprocess.Popen(
            [sys.executable, str(VICTIM), str(self.peer_port), str(self.client_port), str(self.peer2_port),
             str(stall)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready", self.failure()

    def wait_for_line(self, wanted: str) -> None:
        """Read the victim's progress lines until ``wanted``; its death (EOF) fails the test."""
        while True:
            line = self.proc.stdout.readline()
            assert line, self.failure()
            if line.strip() == wanted:
                return

    def wait_for_stat(self, name: str, at_least: int, deadline: float = 60.0) -> None:
        """Ask for the transport's stats until ``name`` reaches ``at_least``. libzmq resumes reading a
        connection it stopped once half its full pipe has been read (the low-water mark is half the high),
        which is where the old configuration hit the assertion on a buffered PING."""
        end = time.monotonic() + deadline
        while True:
            try:
                self.proc.stdin.write("stats\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                raise AssertionError(self.failure()) from None
            line = self.proc.stdout.readline()
            assert line, self.failure()
            if line.startswith("{") and json.loads(line)["stats"].get(name, 0) >= at_least:
                return
            assert time.monotonic() < end, f"{name} stayed below {at_least}: {line}"
            time.sleep(0.05)

    def finish(self) -> dict:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, f"exit code {self.proc.returncode}: {err.strip()[-400:]}"
        return json.loads(out.strip().splitlines()[-1])

    def connect(self, port: int, identity: bytes = b"") -> socket.socket:
        try:
            return connect(port, identity=identity)
        except OSError:
            raise AssertionError(self.failure()) from None

    def failure(self) -> str:
        self.proc.kill()
        out, err = self.proc.communicate(timeout=30)
        return f"the transport's process died (exit code {self.proc.returncode}): {err.strip()[-400:]}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@pytest.fixture
def victim_factory():
    victims = []

    def make(stall: float = 0.0) -> Victim:
        victims.append(Victim(stall))
        return victims[-1]

    yield make
    for v in victims:
        v.kill()


def test_peer_that_floods_a_stalled_node_then_resets_does_not_kill_it(victim_factory):
    """Node 2 floods node 1 while node 1's transport thread is stuck (here: in its first core callback, for
    1 s) and is then killed: more frames than the old receive high-water mark (20,000), PINGs among them."""
    victim = victim_factory(stall=1.0)
    peer = victim.connect(victim.peer_port, identity=b"2")
    peer.sendall(valid_core_frame())
    victim.wait_for_line("core 1")  # the transport thread is now stalled in the callback
    flood_and_reset(peer, 30_000, settle=0.3)
    victim.wait_for_stat("dropped_malformed_peer_frame", 12_000)  # old mark 20,000
    again = victim.connect(victim.peer_port, identity=b"2")  # node 2 restarted
    again.sendall(valid_core_frame())
    victim.wait_for_line("core 2")
    again.close()
    result = victim.finish()
    assert result["core"] == 2 and result["stats"]["dropped_malformed_peer_frame"] > 0, result


def test_displaced_peer_connection_that_resets_does_not_kill_the_node(victim_factory):
    """A peer reconnects while its old connection still looks alive (a healed partition): handover gives the
    routing id to the new connection, and the old one, still sending, is then reset."""
    victim = victim_factory()
    old = victim.connect(victim.peer_port, identity=b"2")
    old.sendall(valid_core_frame())
    victim.wait_for_line("core 1")
    new = victim.connect(victim.peer_port, identity=b"2")
    new.sendall(valid_core_frame())
    victim.wait_for_line("core 2")
    flood_and_reset(old, 2_000)
    time.sleep(1.5)  # give libzmq's 500 ms heartbeat timer its chance on the dead connection
    new.sendall(valid_core_frame())
    victim.wait_for_line("core 3")
    new.close()
    assert victim.finish()["core"] == 3


def test_client_that_floods_a_stalled_node_then_resets_does_not_kill_it(victim_factory):
    """A client's flood (more frames than the old client receive high-water mark, 100,000) arrives while the
    node is stalled, then the client resets. Frames without a delimiter are dropped and counted."""
    victim = victim_factory(stall=2.0)
    client = victim.connect(victim.client_port)
    client.sendall(frame(b"", more=True) + frame(b"first"))
    victim.wait_for_line("client 1")
    flood_and_reset(client, 120_000, settle=0.5)
    victim.wait_for_stat("dropped_client_frame_without_delimiter", 60_000)  # old mark 100,000
    late = victim.connect(victim.client_port)
    late.sendall(frame(b"", more=True) + frame(b"after"))
    victim.wait_for_line("client 2")
    late.close()
    result = victim.finish()
    assert result["stats"]["dropped_client_frame_without_delimiter"] > 0, result


def test_stranger_at_a_peer_address_that_floods_our_link_then_resets_does_not_kill_the_node(victim_factory):
    """Omni peers never send on node 1's outgoing link, but whatever listens at a peer's address can: its
    frames are drained and counted, and its reset under the link's heartbeats is harmless."""
    victim = victim_factory()
    with socket.create_server(("127.0.0.1", victim.peer2_port)) as server:
        server.settimeout(20)
        stranger, _ = server.accept()  # node 1's DEALER reconnects here every 100 ms until it is answered
        stranger.settimeout(20)
        handshake(stranger, b"ROUTER")
        flood_and_reset(stranger, 5_000, settle=0.5)
    time.sleep(1.5)  # give libzmq's 500 ms heartbeat timer its chance on the dead connection
    peer = victim.connect(victim.peer_port, identity=b"2")
    peer.sendall(valid_core_frame())
    victim.wait_for_line("core 1")
    peer.close()
    result = victim.finish()
    assert result["stats"]["dropped_messages_on_link_to_2"] > 0, result
