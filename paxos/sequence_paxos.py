"""Sequence Paxos: the replicated log, as a plain object fed messages, proposals and ticks.

`SequencePaxos` is a deterministic state machine with no I/O, clock, thread or randomness. The host calls
`handle(envelope)`, `tick()`, `propose(entries)`, `read(token)` (a linearizable read, at the leader),
`reconfigure(...)`, `trim(...)`, `snapshot(...)`, `reconnected(pid)` and `handle_leader(ballot)` (from
Ballot Leader Election), then drains everything that resulted with `take_ready()`.

The `Ready` batch is the durability contract (DESIGN.md section 3):
1. persist ``ready.writes`` in order, each group all-or-nothing, and fsync;
2. only then send ``ready.messages`` (a message addressed to this node itself goes back into `handle`:
   that is how the leader counts its own acceptance only after its own fsync);
3. only then apply ``ready.decided`` to the state machine.
So a Promise always follows its promise on disk, an Accepted follows its entries, and a decided index is
durable before anything acts upon it. A host may merge several Ready batches (group commit) as long as it
keeps their order.

``ready.early`` holds the leader's replication traffic (AcceptSync, AcceptDecide, AcceptStopSign, Decide)
and forwarded proposals: messages that vouch for nothing on this node's disk, so the host sends them at
once, before the writes, and the leader's fsync runs in parallel with its followers' instead of before
them (as Raft's leader does). Safe because what they carry is either decided already (chosen by a quorum
of *durable* Accepted, the leader's own counted only after its fsync) or merely proposed; the leader's
promise, which a Prepare relies on, stays ordered after its write (a Prepare is not early), so every
Promise the leader collects, its own included, is durable. The simulator sends them early too, with
crashes that lose unsynced writes. ReadProbe and ReadAck are early as well: they speak of the in-memory
promise, which only grows, and of no write at all.

``ready.reads`` (confirmed linearizable reads, ``(token, idx)``) and ``ready.failed_reads`` (tokens) need
no ordering either: nothing they say depends on this node's disk, so the host answers them at once (a
confirmed read once its state machine has applied ``idx`` entries). See `reads.py`.

Leader and follower behaviour live in `leader.py` and `follower.py`, linearizable reads in `reads.py`;
this file holds what both share: the dispatch, the log synchronisation, compaction, timers and the output
batch. Deviations from OmniPaxos are marked "Omni:" where they occur; each closes a gap our simulator
found or a fault our transport has.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from .follower import FollowerMixin
from .roles import Phase, Role
from .leader import LeaderMixin, LeaderState, PendingAcceptDecide
from .messages import (
    ZERO_BALLOT, AcceptDecide, Accepted, AcceptStopSign, AcceptSync, Ballot, Compaction, Decide,
    Envelope, ForwardStopSign, LogSync, NotAccepted, Prepare, PrepareReq, Promise, ProposalForward,
    ReadAck, ReadProbe, SequenceNumber, SnapshotSync, StopSign,
)
from .reads import ReadIndexMixin, ReadRounds
from .storage import AppendOnPrefix, Compact, LogState, SetAcceptedRound, SetDecidedIdx, SetStopSign, apply_op


class ProposalRejected(Exception):
    """A proposal or reconfiguration this node cannot take (the log is sealed by a StopSign)."""


class ReadRejected(ProposalRejected):
    """A linearizable read this node cannot take: it is not the leader in the Accept phase, or the
    configuration is being reconfigured."""


class CompactionError(Exception):
    """A trim or snapshot that is not allowed now (not leader, undecided or not accepted everywhere)."""


class Snapshotter(Protocol):
    """How to fold decided entries into a snapshot; snapshots are opaque to the core otherwise."""

    def create(self, entries: tuple) -> Any: ...

    def merge(self, base: Any, delta: Any) -> Any: ...


@dataclass(frozen=True)
class PaxosConfig:
    """One node's Sequence Paxos settings within one configuration."""

    pid: int
    nodes: tuple[int, ...]
    config_id: int = 1
    resend_ticks: int = 20
    max_batch: int = 4096
    snapshotter: Optional[Snapshotter] = None
    #: bytes one entry takes on the wire (the host knows its encoding); with ``max_batch_bytes`` it keeps
    #: each AcceptDecide under the transport's frame limit. None: count entries only.
    entry_size: Optional[Callable[[Any], int]] = None
    max_batch_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        nodes = tuple(self.nodes)
        if not nodes or len(set(nodes)) != len(nodes) or any(not isinstance(p, int) or p <= 0 for p in nodes):
            raise ValueError(f"nodes must be distinct positive integers, got {self.nodes!r}")
        if self.pid not in nodes:
            raise ValueError(f"pid {self.pid} is not one of the nodes {nodes}")
        if self.config_id <= 0 or self.resend_ticks < 1 or self.max_batch < 1:
            raise ValueError("config_id, resend_ticks and max_batch must be positive")


@dataclass(frozen=True)
class DecidedEntries:
    """Newly decided entries starting at absolute index ``start`` (the last may be the StopSign)."""

    start: int
    entries: tuple


@dataclass(frozen=True)
class DecidedSnapshot:
    """Everything below ``idx`` is decided and summarised by ``snapshot`` (None: trimmed away)."""

    idx: int
    snapshot: Any


@dataclass
class Ready:
    """What to persist, then send, then apply: see the module docstring for the order."""

    writes: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    decided: list = field(default_factory=list)
    early: list = field(default_factory=list)  # send now, before the writes (see the module docstring)
    reads: list = field(default_factory=list)  # (token, idx): confirmed reads, answer at once (reads.py)
    failed_reads: list = field(default_factory=list)  # tokens: answer "unavailable, retry" at once

    def __bool__(self) -> bool:
        return bool(self.writes or self.messages or self.decided or self.early or self.reads
                    or self.failed_reads)


_FORWARD_MEMORY = 4096  # forwarded batches remembered per sender, to drop duplicates


class SequencePaxos(LeaderMixin, FollowerMixin, ReadIndexMixin):
    """One node's Sequence Paxos in one configuration."""

    def __init__(self, config: PaxosConfig, state: Optional[LogState] = None, *, incarnation: int = 0):
        self.cfg = config
        self.pid = config.pid
        self.nodes = tuple(config.nodes)
        self.peers = tuple(p for p in self.nodes if p != self.pid)
        self.quorum = len(self.nodes) // 2 + 1
        self.log = state.clone() if state is not None else LogState()
        self.role = Role.FOLLOWER
        self.phase = Phase.NONE
        self.leader_state: Optional[LeaderState] = None
        self.current_seq = SequenceNumber()
        self.cached_promise: Optional[Promise] = None
        self.pending_proposals: list = []  # made here while no leader is known
        self.pending_stopsign: Optional[StopSign] = None
        self.incarnation = incarnation
        self.stats: Counter = Counter()
        self._forward_counter = 0
        self._seen_forwards: dict[int, OrderedDict] = {}
        self._ticks = 0
        self._reported = 0
        self._ready = Ready()
        self._pending_ad: dict[int, PendingAcceptDecide] = {}
        self._pending_accepted: dict[int, int] = {}
        self._reads: Optional[ReadRounds] = None
        self._read_round = 0  # grows for the node's whole life: (ballot, round) names one round
        self._dispatch = {
            Prepare: self._on_prepare, Promise: self._on_promise, AcceptSync: self._on_accept_sync,
            AcceptDecide: self._on_accept_decide, Accepted: self._on_accepted, NotAccepted: self._on_not_accepted,
            Decide: self._on_decide, PrepareReq: self._on_prepare_req, ProposalForward: self._on_forward,
            Compaction: self._on_compaction, AcceptStopSign: self._on_accept_stopsign,
            ForwardStopSign: self._on_forward_stopsign, ReadProbe: self._on_read_probe,
            ReadAck: self._on_read_ack,
        }
        if self.log.promise != ZERO_BALLOT:
            # Restarted from storage: whatever we led or followed, ask to be prepared again.
            self.phase = Phase.RECOVER
            for peer in self.peers:
                self._send(peer, PrepareReq(self.log.promise))

    # ---- inputs ----------------------------------------------------------------------------------------

    def handle(self, env: Envelope) -> None:
        """Take one incoming message. Foreign, stale or malformed messages are dropped and counted."""
        if env.config_id != self.cfg.config_id or env.dst != self.pid or env.src not in self.nodes:
            self.stats["dropped_foreign"] += 1
            return
        handler = self._dispatch.get(type(env.msg))
        if handler is None:
            self.stats["dropped_unknown"] += 1
            return
        handler(env.src, env.msg)

    def tick(self) -> None:
        """Advance logical time: every ``resend_ticks`` ticks, resend what may have been lost."""
        self._ticks += 1
        self._reads_tick()
        if self._ticks % self.cfg.resend_ticks == 0:
            if self.role is Role.LEADER:
                self._leader_resend()
            else:
                self._follower_resend()

    def propose(self, entries: list | tuple) -> None:
        """Propose entries at this node: appended if leading, otherwise forwarded to the leader."""
        if self.log.stopsign is not None or self.pending_stopsign is not None or (
                self.leader_state is not None and self.leader_state.stopsign is not None):
            raise ProposalRejected("the log is sealed by a pending reconfiguration")
        entries = list(entries)
        if not entries:
            return
        if self.role is Role.LEADER:
            self._leader_propose(entries)
        else:
            self._follower_propose(entries)

    def append(self, entry: Any) -> None:
        """Propose one entry (see `propose`)."""
        self.propose([entry])

    def reconfigure(self, nodes, *, metadata: Any = None, config_id: Optional[int] = None) -> StopSign:
        """Propose moving to a new member set by deciding a StopSign; forwarded when not leading."""
        nodes = tuple(sorted(set(nodes)))
        if not nodes or any(not isinstance(p, int) or p <= 0 for p in nodes):
            raise ValueError(f"a configuration needs positive integer node ids, got {nodes!r}")
        new_id = self.cfg.config_id + 1 if config_id is None else config_id
        if new_id <= self.cfg.config_id:
            raise ValueError(f"the next configuration id must exceed {self.cfg.config_id}")
        ss = StopSign(new_id, nodes, metadata)
        if self.log.stopsign is not None or self.pending_stopsign is not None:
            raise ProposalRejected("a reconfiguration is already pending")
        if self.role is Role.LEADER:
            self._leader_propose_stopsign(ss)
        elif self._known_leader():
            self._send(self.log.promise.pid, ForwardStopSign(ss))
        else:
            self.pending_stopsign = ss
        return ss

    def reconnected(self, pid: int) -> None:
        """The transport re-established its session to ``pid``: messages may have been lost."""
        if pid == self.pid or pid not in self.peers:
            return
        if self.role is Role.FOLLOWER and pid == self.log.promise.pid:
            self.phase = Phase.RECOVER
        self._send(pid, PrepareReq(self.log.promise))

    def snapshot(self, idx: Optional[int] = None, *, local_only: bool = False) -> int:
        """Fold decided entries below ``idx`` (default: all decided) into the snapshot; returns the index."""
        if self.cfg.snapshotter is None:
            raise CompactionError("no snapshotter is configured")
        decided = self._decided_entries_len()
        idx = decided if idx is None else idx
        if idx > decided:
            raise CompactionError(f"index {idx} is not decided (decided entries: {decided})")
        if idx > self.log.compacted_idx:
            self._compact(idx)
            if not local_only:
                for peer in self.peers:
                    self._send(peer, Compaction("snapshot", idx))
        return self.log.compacted_idx

    def take_ready(self) -> Ready:
        """Everything produced since the last call, in the order the host must carry it out."""
        self._check_reads()
        self._collect_decided()
        ready = self._ready
        shared = [op.entries for group in ready.writes for op in group if isinstance(op, AppendOnPrefix)]
        ready.early = [m.finish(shared) if isinstance(m, PendingAcceptDecide) else m for m in ready.early]
        self._ready = Ready()
        self._pending_ad.clear()
        self._pending_accepted.clear()
        return ready

    # ---- queries ----------------------------------------------------------------------------------------

    @property
    def decided_idx(self) -> int:
        return self.log.decided_idx

    @property
    def promise(self) -> Ballot:
        return self.log.promise

    def leader(self) -> int:
        """The pid this node currently believes leads (0 if none)."""
        return self.log.promise.pid

    def is_accepting_leader(self) -> bool:
        return self.role is Role.LEADER and self.phase is Phase.ACCEPT

    def leader_has_caught_up(self) -> bool:
        """Leading, and everything adopted when this round began is decided: its state holds every
        write any earlier leader acknowledged (what a read at the `leader` level needs)."""
        return self.is_accepting_leader() and self.log.decided_idx >= self.leader_state.adopted_idx

    def decided_stopsign(self) -> Optional[StopSign]:
        """The StopSign once it is decided: the configuration is over."""
        return self.log.stopsign if self.log.stopsign_decided else None

    # ---- shared machinery ------------------------------------------------------------------------------

    def _send(self, dst: int, msg: Any) -> None:
        env = Envelope(self.pid, dst, self.cfg.config_id, msg)
        if type(msg) in _EARLY and dst != self.pid:
            self._ready.early.append(env)
        else:
            self._ready.messages.append(env)

    def _send_accepted(self, dst: int, n: Ballot) -> None:
        """Queue Accepted(n, accepted_idx) to ``dst``, folding into one already queued in this batch."""
        env = Envelope(self.pid, dst, self.cfg.config_id, Accepted(n, self.log.accepted_idx))
        pos = self._pending_accepted.get(dst)
        msgs = self._ready.messages
        if pos is not None and msgs[pos].msg.n == n:
            msgs[pos] = env
        else:
            self._pending_accepted[dst] = len(msgs)
            msgs.append(env)

    def _write(self, *ops) -> None:
        """Apply ops to the in-memory log now and queue them as one atomic group for the host."""
        for op in ops:
            apply_op(self.log, op)
        writes = self._ready.writes
        if len(ops) == 1 and isinstance(ops[0], AppendOnPrefix) and writes:
            last = writes[-1]
            if len(last) == 1 and isinstance(last[0], AppendOnPrefix) and \
                    last[0].from_idx + len(last[0].entries) == ops[0].from_idx:
                writes[-1] = (AppendOnPrefix(last[0].from_idx, last[0].entries + ops[0].entries),)
                return
        writes.append(tuple(ops))

    def _append_entries(self, entries) -> None:
        self._write(AppendOnPrefix(self.log.log_len, tuple(entries)))

    def _set_decided(self, idx: int) -> bool:
        idx = min(idx, self.log.accepted_idx)
        if idx <= self.log.decided_idx:
            return False
        self._write(SetDecidedIdx(idx))
        return True

    def _decided_entries_len(self) -> int:
        """How many log entries are decided, not counting a decided StopSign slot."""
        return min(self.log.decided_idx, self.log.log_len)

    def _known_leader(self) -> bool:
        return self.log.promise.pid not in (0, self.pid)

    def _collect_decided(self) -> None:
        """Move newly decided entries into the output batch (before compaction can drop them)."""
        log, start = self.log, self._reported
        if log.decided_idx <= start:
            return
        out = self._ready.decided
        if start < log.compacted_idx:
            out.append(DecidedSnapshot(log.compacted_idx, log.snapshot))
            start = log.compacted_idx
        entries = log.entries_between(start, min(log.decided_idx, log.log_len))
        if log.stopsign_decided:
            entries += (log.stopsign,)
        if entries:
            out.append(DecidedEntries(start, entries))
        self._reported = log.decided_idx

    def _compact(self, idx: int) -> None:
        """Drop decided entries below ``idx``, folding them into the snapshot when snapshots are on."""
        self._collect_decided()
        data = None
        if self.cfg.snapshotter is not None:
            data = self._snapshot_until(idx)
        self._write(Compact(idx, data))

    def _snapshot_until(self, idx: int) -> Any:
        """This node's decided state below ``idx`` as one snapshot (needs compacted <= idx <= decided)."""
        log, snap = self.log, self.cfg.snapshotter
        fresh = snap.create(log.entries_between(log.compacted_idx, idx))
        return fresh if log.snapshot is None and log.compacted_idx == 0 else snap.merge(log.snapshot, fresh)

    def _log_sync_from(self, idx: int) -> LogSync:
        """The part of my log from ``idx`` on, for a peer whose log is valid below ``idx``."""
        log = self.log
        idx = min(idx, log.log_len)
        if idx >= log.compacted_idx:
            return LogSync(idx, log.entries_between(idx, log.log_len), None, log.stopsign)
        kind = "trimmed" if log.snapshot is None else "complete"
        return LogSync(log.compacted_idx, tuple(log.entries), SnapshotSync(kind, log.snapshot), log.stopsign)

    def _sync_log(self, n: Ballot, decided_idx: int, sync: Optional[LogSync]) -> bool:
        """Adopt ``sync`` (if any) and round ``n`` atomically; False (nothing changed) if it cannot apply."""
        log = self.log
        ops: list = [SetAcceptedRound(n)]
        known_decided = decided_idx
        if sync is not None:
            sync_ops = self._sync_ops(sync)
            if sync_ops is None:
                self.stats["dropped_unusable_sync"] += 1
                return False
            ops += sync_ops
            if sync.snapshot is not None:  # only decided entries are ever compacted
                known_decided = max(known_decided, sync.sync_idx)
        self._collect_decided()
        trial = log.clone()
        for op in ops:
            apply_op(trial, op)
        new_decided = max(log.decided_idx, min(known_decided, trial.accepted_idx))
        if new_decided != log.decided_idx:
            ops.append(SetDecidedIdx(new_decided))
        self._write(*ops)
        return True

    def _sync_ops(self, sync: LogSync) -> Optional[list]:
        log, ops = self.log, []
        compacted, log_len = log.compacted_idx, log.log_len
        snap = sync.snapshot
        if snap is not None and sync.sync_idx > compacted:
            if snap.kind == "trimmed":
                # The sender trimmed decided entries; ours below sync_idx are those same entries, so keep
                # them (they are applied from here). Lacking them, no one can give them to us any more.
                if sync.sync_idx > log_len:
                    return None
            else:
                data = self._merge_snapshot_sync(snap)
                if data is _UNUSABLE:
                    return None
                ops.append(Compact(sync.sync_idx, data))
                compacted, log_len = sync.sync_idx, max(log_len, sync.sync_idx)
        # Entries below what we already compacted are decided, hence identical: skip them.
        start = max(sync.sync_idx, compacted)
        suffix = sync.suffix[start - sync.sync_idx:] if start > sync.sync_idx else sync.suffix
        if start > log_len or sync.sync_idx + len(sync.suffix) < self._decided_entries_len():
            return None  # a gap, or a sync that would cut decided entries: never install it
        ops.append(AppendOnPrefix(start, tuple(suffix)))
        ops.append(SetStopSign(sync.stopsign))
        return ops

    def _merge_snapshot_sync(self, snap: SnapshotSync) -> Any:
        log = self.log
        if snap.kind == "complete":
            return snap.data
        if self.cfg.snapshotter is None or not (log.compacted_idx <= snap.from_idx <= self._decided_entries_len()):
            return _UNUSABLE
        # Omni: build the base from *our own* decided entries up to the delta's start, never from the
        # leader's decided index (the upstream bug that lost the follower's unsnapshotted entries).
        base = self._snapshot_until(snap.from_idx)
        return self.cfg.snapshotter.merge(base, snap.data)

    # ---- messages both roles take ---------------------------------------------------------------------

    def _on_compaction(self, src: int, msg: Compaction) -> None:
        if not isinstance(msg.idx, int) or msg.idx <= self.log.compacted_idx:
            self.stats["dropped_stale_compaction"] += 1
            return
        if msg.idx > self._decided_entries_len():
            self.stats["dropped_undecided_compaction"] += 1
            return
        if msg.kind == "trim" and src == self.log.promise.pid:
            self._compact(msg.idx)
        elif msg.kind == "snapshot" and self.cfg.snapshotter is not None:
            self._compact(msg.idx)
        else:
            self.stats["dropped_compaction"] += 1

    def _on_forward(self, src: int, msg: ProposalForward) -> None:
        seen = self._seen_forwards.setdefault(src, OrderedDict())
        if msg.fid in seen:
            self.stats["dropped_duplicate_forward"] += 1
            return
        seen[msg.fid] = None
        if len(seen) > _FORWARD_MEMORY:
            seen.popitem(last=False)
        if self.role is not Role.LEADER or not msg.entries:
            self.stats["dropped_forward_not_leader"] += 1
            return
        try:
            self.propose(msg.entries)
        except ProposalRejected:
            self.stats["dropped_forward_sealed"] += 1

    def _forward(self, entries: list) -> None:
        self._forward_counter += 1
        fid = (self.incarnation, self._forward_counter)
        self._send(self.log.promise.pid, ProposalForward(tuple(entries), fid))


_UNUSABLE = object()

#: Messages that vouch for nothing on the sender's disk: sent before the Ready's writes are durable.
_EARLY = frozenset({AcceptSync, AcceptDecide, AcceptStopSign, Decide, ProposalForward, ForwardStopSign,
                    ReadProbe, ReadAck})
