"""The leader half of Sequence Paxos: Prepare, adopting the freshest promised log, and replication.

A node leads a round (ballot) when Ballot Leader Election tells it to (`handle_leader`). It persists the
promise, sends Prepare, and once a quorum (itself included) has promised, adopts the promised log that is
highest by (accepted round, accepted index) together with the highest decided index; then it syncs each
promised follower from the part of that follower's log that is still valid (Prepare-phase safety: every
entry that may have been decided is in the adopted log). In the Accept phase it appends proposals and
counts Accepted messages, its own included, to decide. Everything about a round lives in `LeaderState`,
keyed by real pids (never by pid - 1: clusters such as {5, 6, 7} trim and decide like {1, 2, 3}).

In the Accept phase the leader also serves linearizable reads without a log entry (ReadIndex): reads.py
holds that half and the argument why it is safe. It lives apart from `LeaderState` on purpose: when this
round ends the reads must fail visibly rather than vanish with the round's state.
"""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Optional

from .messages import (
    AcceptDecide, Accepted, AcceptStopSign, AcceptSync, Ballot, Compaction, Decide, Envelope,
    ForwardStopSign, NotAccepted, Prepare, PrepareReq, Promise, SequenceNumber, SnapshotSync, StopSign, LogSync,
)
from .roles import Phase, Role
from .storage import SetPromise, SetStopSign

if TYPE_CHECKING:  # pragma: no cover
    from .sequence_paxos import SequencePaxos


class PendingAcceptDecide:
    """An AcceptDecide still in the output batch; later proposals extend it instead of adding messages."""

    __slots__ = ("env", "entries", "decided_idx", "nbytes")

    def __init__(self, env: Envelope, entries: list, decided_idx: int, nbytes: int = 0):
        self.env, self.entries, self.decided_idx, self.nbytes = env, entries, decided_idx, nbytes

    def finish(self, shared: list) -> Envelope:
        """The AcceptDecide, its entries one of the ``shared`` tuples when they hold the very same entries
        (the other followers' batches and the leader's own append): the host then encodes them once."""
        mine = self.entries
        for entries in shared:
            if len(entries) == len(mine) and all(map(operator.is_, entries, mine)):
                break
        else:
            entries = tuple(mine)
            shared.append(entries)
        msg = self.env.msg
        return Envelope(self.env.src, self.env.dst, self.env.config_id,
                        AcceptDecide(msg.n, msg.seq, self.decided_idx, entries))


class LeaderState:
    """What a leader tracks for one round; discarded when the round ends."""

    def __init__(self, n: Ballot, nodes: tuple[int, ...]):
        self.n = n
        self.promises: dict[int, Promise] = {}  # pid -> its Promise in this round
        self.promised_higher: set[int] = set()
        self.seqs: dict[int, SequenceNumber] = {}
        self.accepted: dict[int, int] = {p: 0 for p in nodes}
        self.max_promise: tuple[Ballot, int] = (Ballot(), 0)
        self.adopted_idx = 0  # accepted index right after adopting the freshest promised log
        self.buffer: list = []  # proposals made while still in the Prepare phase
        self.stopsign: Optional[StopSign] = None  # a reconfiguration asked for during the Prepare phase
        self.sessions = 0

    def next_seq(self, pid: int) -> SequenceNumber:
        seq = self.seqs[pid]
        seq = SequenceNumber(seq.session, seq.counter + 1)
        self.seqs[pid] = seq
        return seq


class LeaderMixin:
    """Leader-side handlers of `SequencePaxos` (see sequence_paxos.py for the shared machinery)."""

    def handle_leader(self: "SequencePaxos", n: Ballot) -> None:
        """BLE says this node should lead with ballot ``n``; ignored unless ``n`` is ours and new."""
        ls = self.leader_state
        if n.pid != self.pid or n <= self.log.promise or (ls is not None and n <= ls.n):
            return
        ls = self.leader_state = LeaderState(n, self.nodes)
        ls.buffer, self.pending_proposals = self.pending_proposals, []
        ls.stopsign, self.pending_stopsign = self.pending_stopsign, None
        self._write(SetPromise(n))
        self.role, self.phase = Role.LEADER, Phase.PREPARE
        self.cached_promise = None
        log = self.log
        ls.promises[self.pid] = Promise(n, log.accepted_round, log.decided_idx, log.accepted_idx, None)
        for peer in self.peers:
            self._send(peer, self._prepare_message())
        self._check_prepare_quorum()

    def _prepare_message(self: "SequencePaxos") -> Prepare:
        log = self.log
        return Prepare(self.leader_state.n, log.decided_idx, log.accepted_round, log.accepted_idx)

    def _leading(self: "SequencePaxos", n: Ballot) -> bool:
        return self.role is Role.LEADER and self.leader_state.n == n

    # ---- Prepare phase ----------------------------------------------------------------------------------

    def _on_promise(self: "SequencePaxos", src: int, msg: Promise) -> None:
        if not self._leading(msg.n):
            self.stats["dropped_stale_promise"] += 1
            return
        ls = self.leader_state
        if self.phase is Phase.PREPARE:
            ls.promises[src] = msg
            self._check_prepare_quorum()
        elif self.phase is Phase.ACCEPT and src not in ls.promises:
            ls.promises[src] = msg  # a late or re-preparing follower joins the round
            self._send_accept_sync(src)
        else:
            self.stats["dropped_duplicate_promise"] += 1

    def _check_prepare_quorum(self: "SequencePaxos") -> None:
        if len(self.leader_state.promises) >= self.quorum:
            self._handle_majority_promises()

    def _handle_majority_promises(self: "SequencePaxos") -> None:
        ls = self.leader_state
        # The freshest log by (accepted round, accepted index); on a tie keep our own, which needs no sync.
        best = max(ls.promises, key=lambda p: (ls.promises[p].n_accepted, ls.promises[p].accepted_idx, p == self.pid))
        best_promise = ls.promises[best]
        ls.max_promise = (best_promise.n_accepted, best_promise.accepted_idx)
        decided = max(p.decided_idx for p in ls.promises.values())
        sync = None if best == self.pid else best_promise.log_sync
        if not self._sync_log(ls.n, decided, sync):
            # The freshest promise cannot be installed (we compacted past its base): prepare it again.
            del ls.promises[best]
            self._send(best, self._prepare_message())
            return
        self.phase = Phase.ACCEPT
        ls.adopted_idx = self.log.accepted_idx
        if self.log.stopsign is None:
            if ls.buffer:
                self._append_entries(ls.buffer)
            if ls.stopsign is not None:
                self._write(SetStopSign(ls.stopsign))
        else:
            self.stats["dropped_sealed_proposals"] += len(ls.buffer)
        ls.buffer, ls.stopsign = [], None
        self._send_accepted(self.pid, ls.n)
        for peer in self.peers:
            if peer in ls.promises:
                self._send_accept_sync(peer)

    def _send_accept_sync(self: "SequencePaxos", pid: int) -> None:
        ls, log = self.leader_state, self.log
        prom = ls.promises[pid]
        if prom.n_accepted == ls.n:
            valid = prom.accepted_idx
        elif prom.n_accepted == ls.max_promise[0]:
            valid = min(ls.max_promise[1], prom.accepted_idx)
        else:
            valid = prom.decided_idx
        sync = self._log_sync_for_follower(valid, prom.decided_idx)
        ls.sessions += 1
        ls.seqs[pid] = SequenceNumber(ls.sessions, 1)
        self._pending_ad.pop(pid, None)
        base = (prom.n_accepted, prom.accepted_idx)
        self._send(pid, AcceptSync(ls.n, ls.seqs[pid], log.decided_idx, sync, base))

    def _log_sync_for_follower(self: "SequencePaxos", valid: int, follower_decided: int) -> LogSync:
        log, snapshotter = self.log, self.cfg.snapshotter
        decided = self._decided_entries_len()
        # Omni (snapshots of the node): a snapshotter with ``deltas = False`` keeps the state outside the
        # core, so its snapshot cannot carry entries: the follower gets raw entries, and a complete
        # snapshot only when it is behind our compaction point (actors/snapshots.py).
        if snapshotter is None or decided <= valid or not getattr(snapshotter, "deltas", True):
            return self._log_sync_from(valid)
        # Ship the decided part the follower lacks as a snapshot: a delta from its decided index when we
        # still hold those entries, otherwise our complete snapshot.
        if log.compacted_idx <= follower_decided <= decided:
            snap = SnapshotSync("delta", snapshotter.create(log.entries_between(follower_decided, decided)),
                                follower_decided)
        else:
            snap = SnapshotSync("complete", self._snapshot_until(decided))
        return LogSync(decided, log.entries_between(decided, log.log_len), snap, log.stopsign)

    # ---- Accept phase -----------------------------------------------------------------------------------

    def _leader_propose(self: "SequencePaxos", entries: list) -> None:
        if self.phase is not Phase.ACCEPT:
            self.leader_state.buffer.extend(entries)
            return
        self._append_entries(entries)
        n = self.leader_state.n
        self._send_accepted(self.pid, n)
        for pid in self._promised_followers():
            self._send_accept_decide(pid, entries)

    def _promised_followers(self: "SequencePaxos") -> list[int]:
        promises = self.leader_state.promises
        return [p for p in self.peers if p in promises]

    def _send_accept_decide(self: "SequencePaxos", pid: int, entries: list) -> None:
        cfg = self.cfg
        nbytes = sum(map(cfg.entry_size, entries)) if cfg.entry_size is not None else 0
        pending = self._pending_ad.get(pid)
        if pending is not None and len(pending.entries) + len(entries) <= cfg.max_batch \
                and pending.nbytes + nbytes <= cfg.max_batch_bytes:
            pending.entries.extend(entries)
            pending.decided_idx = self.log.decided_idx
            pending.nbytes += nbytes
            return
        ls = self.leader_state
        placeholder = AcceptDecide(ls.n, ls.next_seq(pid), self.log.decided_idx, ())
        pending = PendingAcceptDecide(Envelope(self.pid, pid, cfg.config_id, placeholder),
                                      list(entries), self.log.decided_idx, nbytes)
        self._pending_ad[pid] = pending
        self._ready.early.append(pending)  # replication traffic: see Ready.early

    def _leader_propose_stopsign(self: "SequencePaxos", ss: StopSign) -> None:
        ls = self.leader_state
        if self.phase is not Phase.ACCEPT:
            ls.stopsign = ss
            return
        self._write(SetStopSign(ss))
        self._send_accepted(self.pid, ls.n)
        for pid in self._promised_followers():
            self._pending_ad.pop(pid, None)
            self._send(pid, AcceptStopSign(ls.n, ls.next_seq(pid), ss))

    def _on_accepted(self: "SequencePaxos", src: int, msg: Accepted) -> None:
        if not self._leading(msg.n) or self.phase is not Phase.ACCEPT:
            self.stats["dropped_stale_accepted"] += 1
            return
        ls = self.leader_state
        if not isinstance(msg.accepted_idx, int) or msg.accepted_idx > self.log.accepted_idx:
            self.stats["dropped_bad_accepted"] += 1
            return
        ls.accepted[src] = max(ls.accepted[src], msg.accepted_idx)
        if msg.accepted_idx <= self.log.decided_idx:
            return
        chosen = sorted(ls.accepted.values(), reverse=True)[self.quorum - 1]
        if self._set_decided(chosen):
            self._announce_decided()

    def _announce_decided(self: "SequencePaxos") -> None:
        ls, decided = self.leader_state, self.log.decided_idx
        for pid in self._promised_followers():
            pending = self._pending_ad.get(pid)
            if pending is not None:
                pending.decided_idx = decided
            else:
                self._send(pid, Decide(ls.n, ls.next_seq(pid), decided))

    def _on_not_accepted(self: "SequencePaxos", src: int, msg: NotAccepted) -> None:
        ls = self.leader_state
        if ls is None or not msg.n > ls.n:
            self.stats["dropped_stale_not_accepted"] += 1
            return
        # A follower moved on to a higher round: stop sending it accepts. BLE or a Prepare deposes us.
        ls.promises.pop(src, None)
        ls.promised_higher.add(src)
        self._pending_ad.pop(src, None)

    def _on_prepare_req(self: "SequencePaxos", src: int, msg: PrepareReq) -> None:
        ls = self.leader_state
        if self.role is not Role.LEADER or not msg.n <= ls.n:
            self.stats["dropped_prepare_req"] += 1
            return
        ls.promises.pop(src, None)
        ls.promised_higher.discard(src)
        self._pending_ad.pop(src, None)
        self._send(src, self._prepare_message())

    def trim(self: "SequencePaxos", idx: Optional[int] = None) -> int:
        """Leader only: drop decided entries below ``idx`` that every member has accepted.

        Default: as far as every member has accepted and this node has decided. Followers trim the same
        on the Compaction message. Returns the compacted index.
        """
        from .sequence_paxos import CompactionError
        if self.role is not Role.LEADER or self.phase is not Phase.ACCEPT:
            raise CompactionError(f"only the leader in the Accept phase may trim (node {self.pid} is not)")
        everywhere = min(self.leader_state.accepted[p] for p in self.nodes)
        decided = self._decided_entries_len()
        target = min(everywhere, decided) if idx is None else idx
        if target > everywhere:
            raise CompactionError(f"index {target} is not accepted by every member (all have {everywhere})")
        if target > decided:
            raise CompactionError(f"index {target} is not decided (decided entries: {decided})")
        if target > self.log.compacted_idx:
            self._compact(target)
            for peer in self.peers:
                self._send(peer, Compaction("trim", target))
        return self.log.compacted_idx

    def _on_forward_stopsign(self: "SequencePaxos", src: int, msg: ForwardStopSign) -> None:
        ls = self.leader_state
        if self.role is not Role.LEADER or self.log.stopsign is not None or ls.stopsign is not None:
            self.stats["dropped_forward_stopsign"] += 1
            return
        if not isinstance(msg.ss, StopSign) or msg.ss.config_id <= self.cfg.config_id:
            self.stats["dropped_bad_stopsign"] += 1
            return
        self._leader_propose_stopsign(msg.ss)

    def _leader_resend(self: "SequencePaxos") -> None:
        """Resend Prepare to peers that have not promised; in Accept, refresh each promised follower.

        Omni: an idle leader sends Decide to every promised follower each resend period. It repairs a lost
        Decide, and a lost AcceptDecide shows up as a sequence gap, so the follower asks to be re-synced;
        ZeroMQ reports no lost messages, so this must not depend on the transport seeing a broken session.
        """
        ls, log = self.leader_state, self.log
        for peer in self.peers:
            if peer not in ls.promises:
                self._send(peer, self._prepare_message())
        if self.phase is not Phase.ACCEPT:
            return
        for pid in self._promised_followers():
            if log.stopsign is not None and not log.stopsign_decided and ls.accepted[pid] < log.accepted_idx:
                self._send(pid, AcceptStopSign(ls.n, ls.next_seq(pid), log.stopsign))
            elif pid not in self._pending_ad:
                self._send(pid, Decide(ls.n, ls.next_seq(pid), log.decided_idx))
