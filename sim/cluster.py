"""A deterministic in-process cluster of protocol cores, with a faulty network and crashing disks.

`SimCluster` hosts N nodes, each running Ballot Leader Election + Sequence Paxos for every configuration
it belongs to, exactly as a real node would: it sends each `Ready`'s early messages at once, persists its
writes before sending its other messages, and applies decided entries only after that; it answers confirmed
and failed reads at once, as they depend on no disk. The difference is that everything can go wrong on
purpose, driven by one seeded `random.Random`:
- the network drops, delays, duplicates and reorders messages, and cuts links one way or both ways;
- a node's disk "fsyncs" only some of the time, and a crash loses whatever it had not yet fsynced;
- crashed nodes restart from their storage with a new incarnation (messages to the old one are lost).

After every delivery of decided entries the `Checker` verifies the sequence-consensus invariants, so a
violation is reported at the step that caused it. The same seed always produces the same run.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from omni.paxos import (
    BallotLeaderElection, DecidedEntries, DecidedSnapshot, Envelope, HeartbeatReply, HeartbeatRequest,
    MemoryStorage, PaxosConfig, ProposalRejected, ReadRejected, SequencePaxos, StopSign,
)

from .checker import Checker


class TupleSnapshotter:
    """Snapshots that are simply the tuple of entries they cover, so checks can compare them entry by entry."""

    def create(self, entries: tuple) -> tuple:
        return tuple(entries)

    def merge(self, base: Optional[tuple], delta: tuple) -> tuple:
        return (base or ()) + tuple(delta)


@dataclass
class NetworkFaults:
    """Per-message fault probabilities and delays (in ticks)."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False
    min_delay: int = 1
    max_delay: int = 2


@dataclass
class Instance:
    """One node's protocol objects for one configuration."""

    sp: SequencePaxos
    ble: BallotLeaderElection
    unsynced: list = field(default_factory=list)  # Ready batches not yet fsynced


@dataclass(frozen=True)
class StateTransfer:
    """Sim-level: a new member asks an old one for the decided logs up to ``config_id`` (or gets them)."""

    config_id: int
    logs: Any = None


class SimNode:
    """One simulated server: its disks (one per configuration) survive crashes; its memory does not."""

    def __init__(self, pid: int):
        self.pid = pid
        self.alive = True
        self.incarnation = 0
        self.disks: dict[int, MemoryStorage] = {}
        self.members: dict[int, tuple[int, ...]] = {}  # config id -> its members
        self.instances: dict[int, Instance] = {}
        self.applied: dict[int, list] = {}  # config id -> decided log applied (a durable state machine)
        self.history_missing: set[int] = set()  # previous configs whose logs this new member still needs

    def latest_config(self) -> Optional[int]:
        return max(self.instances) if self.instances else None


class SimCluster:
    """N cores on a seeded faulty network. Time advances one tick per `step`."""

    def __init__(self, nodes: list[int], *, seed: int = 0, spares: list[int] = (), election_ticks: int = 10,
                 resend_ticks: int = 20, snapshots: bool = False, faults: Optional[NetworkFaults] = None,
                 fsync_probability: float = 1.0, priorities: Optional[dict] = None, trace_limit: int = 400):
        self.rng = random.Random(seed)
        self.now = 0
        self.election_ticks = election_ticks
        self.resend_ticks = resend_ticks
        self.snapshotter = TupleSnapshotter() if snapshots else None
        self.faults = faults or NetworkFaults()
        self.fsync_probability = fsync_probability
        self.priorities = priorities or {}
        self.checker = Checker()
        self.nodes: dict[int, SimNode] = {p: SimNode(p) for p in list(nodes) + list(spares)}
        self.cut_links: set[tuple[int, int]] = set()
        self._queue: list = []  # (deliver_at, order, env, dst incarnation)
        self._order = 0
        self._link_clock: dict[tuple[int, int], int] = {}
        self.trace: list[str] = []
        self.trace_limit = trace_limit
        self.messages_sent = 0
        self.reads_registered = 0
        self._leaders: dict[int, int] = {}
        self.configs: dict[int, tuple[int, ...]] = {1: tuple(sorted(nodes))}
        for pid in nodes:
            self._start_instance(self.nodes[pid], 1, tuple(sorted(nodes)))

    # ---- topology and faults ------------------------------------------------------------------------

    def log(self, text: str) -> None:
        self.trace.append(f"t={self.now:<5} {text}")
        if len(self.trace) > self.trace_limit:
            del self.trace[: len(self.trace) - self.trace_limit]

    def cut(self, a: int, b: int, *, both: bool = True) -> None:
        self.cut_links.add((a, b))
        if both:
            self.cut_links.add((b, a))
        self.log(f"cut {a}{'<->' if both else '->'}{b}")

    def isolate(self, pid: int) -> None:
        for other in self.nodes:
            if other != pid:
                self.cut(pid, other)

    def heal(self) -> None:
        self.cut_links.clear()
        self.log("heal all links")

    def crash(self, pid: int) -> None:
        node = self.nodes[pid]
        if not node.alive:
            return
        node.alive = False
        node.instances.clear()  # memory and every un-fsynced Ready are gone
        self.checker.reads_lost(pid)
        self.log(f"crash {pid}")

    def restart(self, pid: int) -> None:
        node = self.nodes[pid]
        if node.alive:
            return
        node.alive = True
        node.incarnation += 1
        for config_id, disk in node.disks.items():
            self._start_instance(node, config_id, node.members[config_id], state=disk.load())
        self.log(f"restart {pid} (incarnation {node.incarnation})")

    # ---- client actions ---------------------------------------------------------------------------------

    def propose(self, pid: int, entry: Any, config_id: Optional[int] = None) -> bool:
        """Propose at ``pid`` in its newest (or the given) configuration; False if refused or down."""
        node = self.nodes[pid]
        config_id = config_id or node.latest_config()
        if not node.alive or config_id not in node.instances:
            return False
        try:
            node.instances[config_id].sp.propose([entry])
        except ProposalRejected:
            return False
        self.checker.proposed(config_id, entry)
        return True

    def read(self, pid: int, config_id: Optional[int] = None) -> Optional[int]:
        """Register a linearizable read at ``pid``; its token, or None if refused or down."""
        node = self.nodes[pid]
        config_id = config_id or node.latest_config()
        if not node.alive or config_id not in node.instances:
            return None
        token = self.reads_registered + 1
        try:
            node.instances[config_id].sp.read(token)
        except ReadRejected:
            return None
        self.reads_registered = token
        self.checker.read_registered(pid, config_id, token, self.decided_anywhere(config_id))
        self.log(f"read {token} at {pid} (config {config_id})")
        return token

    def reconfigure(self, pid: int, new_nodes: tuple[int, ...]) -> bool:
        node = self.nodes[pid]
        config_id = node.latest_config()
        if not node.alive or config_id is None:
            return False
        try:
            ss = node.instances[config_id].sp.reconfigure(new_nodes)
        except ProposalRejected:
            return False
        self.checker.proposed(config_id, ss)
        self.log(f"reconfigure at {pid}: config {config_id} -> {ss.config_id} {list(new_nodes)}")
        return True

    # ---- time ---------------------------------------------------------------------------------------------

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.step()

    def step(self) -> None:
        self.now += 1
        self._deliver_due()
        for node in self.nodes.values():
            if node.alive:
                self._tick_node(node)
        self._note_leaders()

    def _deliver_due(self) -> None:
        while self._queue and self._queue[0][0] <= self.now:
            _, _, env, incarnation = heapq.heappop(self._queue)
            node = self.nodes[env.dst]
            if not node.alive or node.incarnation != incarnation:
                continue
            if isinstance(env.msg, StateTransfer):
                self._on_state_transfer(node, env)
                continue
            inst = node.instances.get(env.config_id)
            if inst is None:
                continue
            if isinstance(env.msg, (HeartbeatRequest, HeartbeatReply)):
                inst.ble.handle(env)
            else:
                inst.sp.handle(env)

    def _tick_node(self, node: SimNode) -> None:
        for config_id in sorted(node.instances):
            inst = node.instances.get(config_id)
            if inst is None:
                continue
            inst.ble.observe_promise(inst.sp.promise)
            ballot = inst.ble.tick()
            if ballot is not None:
                inst.sp.handle_leader(ballot)
            inst.sp.tick()
            for env in inst.ble.take_outgoing():
                self._send(env)
            ready = inst.sp.take_ready()
            for env in ready.early:  # replication traffic goes out before the writes, as a node sends it
                self._send(env)
            self._answer_reads(node.pid, config_id, ready)
            if ready:
                inst.unsynced.append(ready)
            if inst.unsynced and self.rng.random() < self.fsync_probability:
                self._fsync(node, config_id, inst)
        if self.now % self.election_ticks == 0:
            if node.history_missing:
                self._request_history(node)
            if len(self.configs) > 1:
                self._start_new_configs()

    def _answer_reads(self, pid: int, config_id: int, ready) -> None:
        for token, idx in ready.reads:
            self.log(f"read {token} confirmed at {pid} with index {idx}")
            self.checker.read_confirmed(pid, config_id, token, idx)
        for token in ready.failed_reads:
            self.log(f"read {token} failed at {pid}")
            self.checker.read_failed(pid, config_id, token)

    def _fsync(self, node: SimNode, config_id: int, inst: Instance) -> None:
        """Persist every pending Ready, then send its messages, then apply what it decided."""
        batches, inst.unsynced = inst.unsynced, []
        disk = node.disks[config_id]
        before = disk.decided_idx
        disk.write([g for ready in batches for g in ready.writes])
        self.checker.durable_decided(node.pid, config_id, before, disk.decided_idx)
        for ready in batches:
            for env in ready.messages:
                self._send(env)
            for item in ready.decided:
                self._apply(node, config_id, item)

    def _apply(self, node: SimNode, config_id: int, item) -> None:
        applied = node.applied.setdefault(config_id, [])
        if isinstance(item, DecidedSnapshot):
            self.checker.snapshot_installed(node.pid, config_id, applied, item)
            return
        self.checker.decided(node.pid, config_id, applied, item)
        if isinstance(item, DecidedEntries) and item.entries and isinstance(item.entries[-1], StopSign) \
                and len(applied) == item.start + len(item.entries):
            self._stopsign_decided(node, config_id, item.entries[-1])

    # ---- the network ---------------------------------------------------------------------------------

    def _send(self, env: Envelope) -> None:
        dst = self.nodes.get(env.dst)
        if dst is None:
            return
        self.messages_sent += 1
        if env.src == env.dst:  # a node's message to itself never crosses the network
            self._enqueue(env, self.now + 1, dst.incarnation)
            return
        f = self.faults
        if (env.src, env.dst) in self.cut_links or self.rng.random() < f.drop:
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            at = self.now + self.rng.randint(f.min_delay, f.max_delay)
            if not f.reorder:  # FIFO per link, as one TCP connection would be
                link = (env.src, env.dst)
                at = max(at, self._link_clock.get(link, 0))
                self._link_clock[link] = at
            self._enqueue(env, at, dst.incarnation)

    def _enqueue(self, env: Envelope, at: int, incarnation: int) -> None:
        self._order += 1
        heapq.heappush(self._queue, (at, self._order, env, incarnation))

    # ---- configurations -------------------------------------------------------------------------------

    def _start_instance(self, node: SimNode, config_id: int, members: tuple[int, ...], state=None) -> None:
        node.members[config_id] = members
        disk = node.disks.setdefault(config_id, MemoryStorage())
        if state is None:
            state = disk.load()
        cfg = PaxosConfig(pid=node.pid, nodes=members, config_id=config_id, resend_ticks=self.resend_ticks,
                          snapshotter=self.snapshotter)
        sp = SequencePaxos(cfg, state, incarnation=node.incarnation)
        ble = BallotLeaderElection(node.pid, list(members), config_id=config_id,
                                   priority=self.priorities.get(node.pid, 0), election_ticks=self.election_ticks,
                                   recovered_promise=state.promise)
        node.instances[config_id] = Instance(sp, ble)

    def _stopsign_decided(self, node: SimNode, config_id: int, ss: StopSign) -> None:
        """A configuration ended at ``node``: remember that the next one exists, so its members start it."""
        if ss.config_id not in self.configs:
            self.configs[ss.config_id] = ss.nodes
            self.log(f"config {config_id} decided its StopSign: config {ss.config_id} is {list(ss.nodes)}")
        self._start_new_configs()

    def _start_new_configs(self) -> None:
        """The operator's part: every live member of a started configuration runs it; new ones fetch history."""
        for config_id, members in self.configs.items():
            for pid in members:
                node = self.nodes[pid]
                if not node.alive or config_id in node.members:
                    continue
                self._start_instance(node, config_id, members)
                node.history_missing |= {c for c in self.configs if c < config_id and c not in node.members}
                self.log(f"node {pid} starts config {config_id} {list(members)}")

    def _request_history(self, node: SimNode) -> None:
        wanted = max(node.history_missing)
        donors = [p for p, n in self.nodes.items()
                  if p != node.pid and wanted in n.members and not n.history_missing]
        if donors:
            donor = self.rng.choice(donors)
            self._send(Envelope(node.pid, donor, 0, StateTransfer(wanted)))

    def _on_state_transfer(self, node: SimNode, env: Envelope) -> None:
        msg = env.msg
        if msg.logs is None:  # a request: answer once this node has applied that configuration's StopSign
            log = node.applied.get(msg.config_id, [])
            if log and isinstance(log[-1], StopSign) and not node.history_missing:
                logs = {c: tuple(node.applied.get(c, ())) for c in node.applied if c <= msg.config_id}
                self._send(Envelope(node.pid, env.src, 0, StateTransfer(msg.config_id, logs)))
            return
        for config_id, log in msg.logs.items():
            if config_id in node.history_missing:
                applied = node.applied.setdefault(config_id, [])
                self.checker.decided(node.pid, config_id, applied, DecidedEntries(0, tuple(log)))
                node.history_missing.discard(config_id)
                self.log(f"node {node.pid} received history of config {config_id} ({len(log)} entries)")

    # ---- observation ---------------------------------------------------------------------------------

    def leader(self, config_id: int = 1) -> Optional[int]:
        """The node leading ``config_id`` in the Accept phase with the highest ballot, if any."""
        best = None
        for node in self.nodes.values():
            inst = node.instances.get(config_id) if node.alive else None
            if inst is not None and inst.sp.is_accepting_leader():
                if best is None or inst.sp.promise > best[0]:
                    best = (inst.sp.promise, node.pid)
        return best[1] if best else None

    def _note_leaders(self) -> None:
        for config_id in {c for n in self.nodes.values() for c in n.instances}:
            leader = self.leader(config_id)
            if leader != self._leaders.get(config_id):
                self._leaders[config_id] = leader
                self.log(f"config {config_id}: leader is now {leader}")

    def decided_len(self, pid: int, config_id: int = 1) -> int:
        return len(self.nodes[pid].applied.get(config_id, ()))

    def decided_anywhere(self, config_id: int) -> int:
        """The longest decided prefix of ``config_id`` any node knows now: in memory, on disk or applied."""
        known = [len(self.checker.chosen.get(config_id, ()))]
        for node in self.nodes.values():
            if config_id in node.disks:
                known.append(node.disks[config_id].decided_idx)
            inst = node.instances.get(config_id) if node.alive else None
            if inst is not None:
                known.append(inst.sp.decided_idx)
        return max(known)
