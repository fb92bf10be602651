"""The follower half of Sequence Paxos: promising, installing the leader's log, accepting and deciding.

A follower promises a ballot only after persisting it, answers with the part of its log the leader may
lack, installs the leader's AcceptSync atomically, then appends AcceptDecide batches in the order their
sequence numbers give. Every message other than Prepare must carry exactly the promised ballot: a lower
one is answered with NotAccepted, a higher one with PrepareReq (we missed that leader's Prepare). A gap in
sequence numbers means something was lost, so the follower enters Recover and asks to be prepared again;
a sequence number already seen is a duplicate and is ignored. A ReadProbe is acked only while the promise
is exactly the probe's ballot, in any phase (the ack says "nothing higher promised here", see reads.py);
nothing is persisted for it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .messages import (
    AcceptDecide, AcceptStopSign, AcceptSync, Ballot, Decide, ForwardStopSign, NotAccepted, Prepare,
    PrepareReq, Promise, ReadAck, ReadProbe, SequenceNumber, StopSign,
)
from .roles import Phase, Role
from .storage import SetPromise, SetStopSign

if TYPE_CHECKING:  # pragma: no cover
    from .sequence_paxos import SequencePaxos


class FollowerMixin:
    """Follower-side handlers of `SequencePaxos` (see sequence_paxos.py for the shared machinery)."""

    def _follower_propose(self: "SequencePaxos", entries: list) -> None:
        if self._known_leader() and self.phase is not Phase.NONE:
            self._forward(entries)
        else:
            self.pending_proposals.extend(entries)

    def _on_prepare(self: "SequencePaxos", src: int, msg: Prepare) -> None:
        promise = self.log.promise
        if msg.n < promise:
            self.stats["dropped_stale_prepare"] += 1
            return
        if msg.n == promise and self.phase is Phase.PREPARE and self.cached_promise is not None:
            self._send(msg.n.pid, self.cached_promise)  # our Promise was lost: say it again
            return
        # Omni: an equal ballot is re-promised in the Accept phase too, not only in Recover. The leader
        # re-prepares a follower only when it believes it lost track of it (a late PrepareReq, say); refusing
        # would leave the two waiting on each other for ever. The AcceptSync base check keeps it harmless.
        if msg.n.pid != src:
            self.stats["dropped_bad_prepare"] += 1
            return
        self._step_down()
        self._write(SetPromise(msg.n))
        self.phase = Phase.PREPARE
        self.current_seq = SequenceNumber()
        self.cached_promise = Promise(msg.n, self.log.accepted_round, self.log.decided_idx,
                                      self.log.accepted_idx, self._promise_sync(msg))
        self._send(src, self.cached_promise)

    def _step_down(self: "SequencePaxos") -> None:
        """Stop leading (a higher Prepare arrived); proposals we still held wait for the new leader."""
        ls = self.leader_state
        if ls is not None:
            self.pending_proposals = ls.buffer + self.pending_proposals
            if self.pending_stopsign is None and self.log.stopsign is None:
                self.pending_stopsign = ls.stopsign
            self.leader_state = None
            self._pending_ad.clear()
        self.role = Role.FOLLOWER

    def _promise_sync(self: "SequencePaxos", prep: Prepare):
        """The part of my log the new leader may lack, judged from its Prepare."""
        log = self.log
        if log.accepted_round > prep.n_accepted:
            return self._log_sync_from(prep.decided_idx)
        if log.accepted_round == prep.n_accepted and log.accepted_idx > prep.accepted_idx:
            return self._log_sync_from(prep.accepted_idx)
        return None

    def _ballot_ok(self: "SequencePaxos", n: Ballot) -> bool:
        """True iff ``n`` is the ballot we promised; otherwise tell its leader where we stand."""
        promise = self.log.promise
        if n == promise:
            return True
        if not isinstance(n, Ballot) or n.pid not in self.nodes:
            self.stats["dropped_bad_ballot"] += 1
        elif n < promise:
            self.stats["dropped_stale_ballot"] += 1
            self._send(n.pid, NotAccepted(promise))
        else:
            self.stats["dropped_unpromised_ballot"] += 1
            self._send(n.pid, PrepareReq(promise))  # a leader we never promised: ask for its Prepare
        return False

    def _in_accept_phase(self: "SequencePaxos") -> bool:
        """True in (Follower, Accept). Still preparing means our AcceptSync was lost: ask again."""
        if self.role is Role.FOLLOWER and self.phase is Phase.ACCEPT:
            return True
        self.stats["dropped_wrong_phase"] += 1
        if self.role is Role.FOLLOWER and self.phase is Phase.PREPARE:
            self._recover_from_leader()
        return False

    def _seq_ok(self: "SequencePaxos", seq: SequenceNumber) -> bool:
        """Accept the next message of the current session only; a gap triggers Recover."""
        cur = self.current_seq
        if seq.session == cur.session and seq.counter == cur.counter + 1:
            self.current_seq = seq
            return True
        if seq <= cur:
            self.stats["dropped_duplicate_seq"] += 1
        else:
            self.stats["sequence_gaps"] += 1
            self._recover_from_leader()
        return False

    def _recover_from_leader(self: "SequencePaxos") -> None:
        self.phase = Phase.RECOVER
        self._send(self.log.promise.pid, PrepareReq(self.log.promise))

    def _on_accept_sync(self: "SequencePaxos", src: int, msg: AcceptSync) -> None:
        if not self._ballot_ok(msg.n):
            return
        if self.role is not Role.FOLLOWER or self.phase is not Phase.PREPARE:
            self.stats["dropped_wrong_phase"] += 1
            return
        if msg.base != (self.log.accepted_round, self.log.accepted_idx):
            self.stats["dropped_stale_accept_sync"] += 1  # computed against a log we no longer have
            return
        if not self._sync_log(msg.n, msg.decided_idx, msg.log_sync):
            self._recover_from_leader()
            return
        self.phase = Phase.ACCEPT
        self.current_seq = msg.seq
        self.cached_promise = None
        self._send_accepted(src, msg.n)
        if self.pending_proposals:
            entries, self.pending_proposals = self.pending_proposals, []
            self._forward(entries)
        if self.pending_stopsign is not None:
            self._send(src, ForwardStopSign(self.pending_stopsign))
            self.pending_stopsign = None

    def _on_accept_decide(self: "SequencePaxos", src: int, msg: AcceptDecide) -> None:
        if not (self._ballot_ok(msg.n) and self._in_accept_phase() and self._seq_ok(msg.seq)):
            return
        if self.log.stopsign is not None:
            self.stats["dropped_entries_after_stopsign"] += 1
            return
        if msg.entries:
            self._append_entries(msg.entries)
            self._send_accepted(src, msg.n)
        self._set_decided(msg.decided_idx)

    def _on_decide(self: "SequencePaxos", src: int, msg: Decide) -> None:
        if self._ballot_ok(msg.n) and self._in_accept_phase() and self._seq_ok(msg.seq):
            self._set_decided(msg.decided_idx)

    def _on_accept_stopsign(self: "SequencePaxos", src: int, msg: AcceptStopSign) -> None:
        if not (self._ballot_ok(msg.n) and self._in_accept_phase() and self._seq_ok(msg.seq)):
            return
        if not isinstance(msg.ss, StopSign):
            self.stats["dropped_bad_stopsign"] += 1
            return
        if self.log.stopsign != msg.ss:
            self._write(SetStopSign(msg.ss))
        self._send_accepted(src, msg.n)

    def _on_read_probe(self: "SequencePaxos", src: int, msg: ReadProbe) -> None:
        # No NotAccepted or PrepareReq here: a leader that lost its ballot learns it from Prepare/BLE, and
        # its reads fail then; a probe is cheap to drop.
        if msg.n != self.log.promise or src != msg.n.pid:
            self.stats["dropped_read_probe"] += 1
            return
        self._send(src, ReadAck(msg.n, msg.round))

    def _follower_resend(self: "SequencePaxos") -> None:
        """Resend our Promise while preparing; keep asking for a Prepare while recovering."""
        if self.phase is Phase.PREPARE and self.cached_promise is not None:
            self._send(self.log.promise.pid, self.cached_promise)
        elif self.phase in (Phase.PREPARE, Phase.RECOVER):
            self.phase = Phase.RECOVER
            for peer in self.peers:
                self._send(peer, PrepareReq(self.log.promise))
