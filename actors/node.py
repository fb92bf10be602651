"""One Omni node: the actors of DESIGN.md section 3 wired together, a ticker, and a supervisor.

`Node.start()` opens the durable log, builds the protocol cores from it (a restarted node resumes in the
Recover phase), starts the actors and the transport thread, and a ticker that tells Tick to the actors
that need time. `Node.wait()` blocks until a signal or a fatal error: a failed actor, a storage failure
or the transport dying stops the whole process with a non-zero exit code and a log line saying why,
never leaving a half-alive node behind.
"""
from __future__ import annotations

import gc
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pykka
import zmq

from omni.statemachines import load_state_machine

from .applier import ApplierActor
from .consensus import BleActor, SequencePaxosActor
from .gateway import GatewayActor
from .messages import PeerReply, PeerRequest, Tick
from .reconfiguration import ConfigManager
from .snapshots import SNAPSHOT_OP, SnapshotStore
from .storage import StorageActor
from .supervision import name_this_thread
from .transport import Outbox, Transport

log = logging.getLogger("omni.node")

EXIT_FATAL = 70


@dataclass
class NodeConfig:
    pid: int
    listen: str
    client: str
    peers: dict[int, str] = field(default_factory=dict)
    data_dir: Path = Path("omni-data")
    state_machine: str = "kv"
    config_id: int = 1
    tick_ms: float = 10.0
    election_ticks: int = 30
    resend_ticks: int = 10
    priority: int = 0
    snapshot_every: int = 10_000  # applied entries between snapshots (then the log is compacted); 0: never
    join: str | None = None  # a client endpoint of the cluster to learn the configuration from (new member)

    def __post_init__(self) -> None:
        if self.pid <= 0 or any(p <= 0 for p in self.peers):
            raise ValueError("node ids must be positive integers")
        if self.snapshot_every < 0:
            raise ValueError("snapshot_every must be >= 0 (0 disables snapshots)")
        if self.pid in self.peers:
            raise ValueError(f"node {self.pid} cannot be its own peer")

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted({self.pid, *self.peers}))


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.pid = config.pid
        self.members = config.members
        self.config_id = config.config_id
        self.state_machine_name = config.state_machine
        self.incarnation = secrets.randbits(62)  # tells this process's requests from an earlier life's
        # Raised by the Applier's thread alone, read by the gateway's: the gateway counts the `local` reads it
        # handed over and not yet answered against its in-flight cap without a message per answer.
        self.local_reads_answered = 0
        self.exit_code = 0
        self.fatal_reason = ""
        self._done = threading.Event()
        self._actors: list = []

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> "Node":
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        sm_class = load_state_machine(cfg.state_machine)
        self.configs = ConfigManager(self)
        membership = self.configs.load_or_join()
        self.membership, self.members, self.config_id = membership, membership.pids, membership.config_id
        self.removed = self.pid not in membership.members
        store = self.configs.open_log(membership)
        state = store.load()
        self.ctx = zmq.Context()
        self.outbox = Outbox(self.ctx, self.pid)
        paxos, ble = self.configs.build_cores(membership, state)
        self.storage = self._spawn(StorageActor, store)
        self.applier = self._spawn(ApplierActor, sm_class(cfg.data_dir / "statemachine"),
                                   snapshots=SnapshotStore(cfg.data_dir / "snapshots"),
                                   snapshot_every=cfg.snapshot_every, tick_seconds=cfg.tick_ms / 1000,
                                   replay_until=membership.base + state.decided_idx if state.decided_idx else 0)
        self.gateway = self._spawn(GatewayActor, sm_class(None), cfg.tick_ms / 1000)
        self.sequence_paxos = self._spawn(SequencePaxosActor, paxos, membership.base)
        self.ble = self._spawn(BleActor, ble)
        self.transport = Transport(
            self.ctx, self.outbox, self.pid, cfg.listen, membership.links_of(self.pid), cfg.client,
            on_core=self._route_core, on_client=self.gateway.tell, on_node=self._route_node,
            on_reconnect=self.sequence_paxos.tell, on_fatal=self.fatal)
        self.transport.start()
        self.transport.bound.wait()
        if self.transport.bind_error is not None:
            self.stop()
            raise OSError(f"cannot bind {cfg.listen} / {cfg.client}: {self.transport.bind_error}")
        self._ticker = threading.Thread(target=self._tick_forever, name=f"omni-ticker-{self.pid}", daemon=True)
        self._ticker.start()
        log.info("node %d up: peers %s, clients on %s, state machine %s, log at %s (configuration %d, members %s,"
                 " log from global index %d, decided %d)", self.pid, cfg.listen, cfg.client, cfg.state_machine,
                 cfg.data_dir, membership.config_id, list(membership.pids), membership.base, state.decided_idx)
        if self.removed:
            log.warning("node %d was removed from the cluster in configuration %d: it no longer serves",
                        self.pid, membership.config_id)
        return self

    def snapshot_sources(self) -> list[int]:
        """Peers to fetch a snapshot from: this configuration's members, then the previous one's."""
        m = self.membership
        return [p for p in (*m.pids, *sorted(m.previous)) if p != self.pid]

    def configuration_decided(self, stopsign, base: int) -> None:
        """Applier thread: the StopSign is applied; the configuration it names starts at ``base``."""
        self.configs.decided(stopsign, base)

    def _spawn(self, actor_class, *args, **kwargs):
        ref = actor_class.start(self, *args, **kwargs)
        self._actors.append(ref)
        return ref

    def _route_core(self, inbound) -> None:
        from omni.paxos import HeartbeatReply, HeartbeatRequest
        if not self.configs.current(inbound.env):
            return  # another configuration's traffic: the ConfigManager took what it tells us
        if isinstance(inbound.env.msg, (HeartbeatRequest, HeartbeatReply)):
            self.ble.tell(inbound)
        else:
            self.sequence_paxos.tell(inbound)

    def _route_node(self, message) -> None:
        """Snapshot chunk requests and replies go to the Applier; forwarded reads to the ClientGateway."""
        if self.configs.on_node_message(message):
            return
        if isinstance(message, PeerRequest) and message.request.get("op") == SNAPSHOT_OP or \
                isinstance(message, PeerReply) and SNAPSHOT_OP in message.reply:
            self.applier.tell(message)
        else:
            self.gateway.tell(message)

    def _tick_forever(self) -> None:
        name_this_thread("Ticker")
        period = self.config.tick_ms / 1000
        tick, next_at = Tick(), time.monotonic()
        while not self._done.is_set():
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # fell behind (a pause): do not burst to catch up
            try:
                for ref in (self.ble, self.sequence_paxos, self.gateway, self.applier):  # applier: transfers
                    ref.tell(tick)
            except pykka.ActorDeadError:
                return  # the node is stopping (or an actor failed, which stops it): nothing left to tick

    def fatal(self, reason: str, detail: str | None = None) -> None:
        """Called from any thread: the node cannot go on safely."""
        if not self._done.is_set():
            self.fatal_reason = reason
            self.exit_code = EXIT_FATAL
            log.critical("node %d stopping: %s", self.pid, reason)
            if detail:
                log.debug("%s", detail)
            self._done.set()

    @property
    def stopping(self) -> bool:
        return self._done.is_set()

    def wait(self) -> int:
        """Block until stopped by `stop()` or a fatal error; returns the exit code."""
        self._done.wait()
        return self.exit_code

    def stop(self) -> None:
        self._done.set()
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.stop()
            transport.join(timeout=2)
        for ref in reversed(self._actors):
            try:
                ref.stop(timeout=2)
            except Exception:  # an actor already dead (it failed): nothing left to stop
                pass
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            # Each socket is closed by the thread that owns it (transport thread, actors' on_stop).
            # Destroying the context from here would close sockets another thread may still be using,
            # which libzmq answers with abort(); term() in the background just waits for them.
            threading.Thread(target=ctx.term, name=f"omni-zmq-term-{self.pid}", daemon=True).start()


#: Tracked allocations (net of frees) between two young-generation collections in a node process; CPython's
#: default is 700. A request's objects live for one round trip, and at 700 nearly every collection met
#: thousands of them still in flight, copied them to the older generations and later walked them again
#: there: about 0.9 s of a node's 27 s went to collections under pipelined puts (gc.callbacks, 1,000-1,700
#: collections per node, the longest 40-85 ms with every thread of the node stopped). At this threshold
#: those objects are gone before a collection comes; garbage cycles are still collected, once that many
#: tracked objects have piled up.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect garbage cycles less often (see GC_YOUNG_THRESHOLD); only for a process that is a node."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run_node(config: NodeConfig) -> int:
    """Run a node until SIGINT/SIGTERM (exit 0) or a fatal error (exit 70). Used by `omni node start`."""
    import signal

    from . import diagnostics
    tune_gc()
    node = Node(config)
    node.start()
    signal.signal(signal.SIGTERM, lambda *_: node._done.set())  # the main thread does the stopping
    signal.signal(signal.SIGUSR1, lambda *_: diagnostics.log_dump(node))  # state dump into the node's log
    try:
        code = node.wait()
    except KeyboardInterrupt:
        code = 0
    if code != 0:
        os._exit(code)  # never linger half alive: actors may be wedged on a failed disk
    node.stop()
    return code
