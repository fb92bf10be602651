"""Ballot Leader Election: decides who should lead, from connectivity alone (OmniPaxos, current rules).

Time is a count of `tick()` calls; every ``election_ticks`` ticks one heartbeat round ends. At the end of
a round a node (1) adopts the highest ballot it heard, (2) decides whether it is *happy* (a leader is happy
when enough peers could follow it to form a quorum; a follower is happy when it hears its leader and the
leader is happy), and (3) takes over, with a ballot one round above the leader's, only if it is unhappy,
every peer it heard is unhappy too, and it heard enough peers to form a quorum with itself
(quorum-connected). There is no log-freshness condition: Sequence Paxos's Prepare phase brings any new
leader up to date. That is what lets a cluster keep going under partial connectivity where Raft stalls.

BLE only says "lead now, with this ballot" to Sequence Paxos (the return value of `tick`), and learns
Sequence Paxos's promise through `observe_promise` so it never lags behind a Prepare it did not see.
It has no I/O, clock or randomness; replies from an old round or another configuration are dropped.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

from .messages import ZERO_BALLOT, Ballot, Envelope, HeartbeatReply, HeartbeatRequest


class BallotLeaderElection:
    """One node's leader election. Feed it `handle` and `tick`; drain `take_outgoing`."""

    def __init__(self, pid: int, nodes: list[int], *, config_id: int = 1, priority: int = 0,
                 election_ticks: int = 10, recovered_promise: Ballot = ZERO_BALLOT):
        if pid <= 0 or pid not in nodes:
            raise ValueError(f"pid {pid} must be a positive member of {nodes}")
        if election_ticks < 1:
            raise ValueError("election_ticks must be at least 1")
        self.pid = pid
        self.peers = sorted(p for p in set(nodes) if p != pid)
        self.config_id = config_id
        self.quorum = len(set(nodes)) // 2 + 1
        self.election_ticks = election_ticks
        recovering = recovered_promise != ZERO_BALLOT
        # A restarted node never resumes its old ballot: it starts at round 0 and follows what it promised.
        self.ballot = Ballot(0 if recovering else 1, priority, pid)
        self.leader = recovered_promise if recovering else self.ballot
        self.happy = True
        self.hb_round = 0
        self.replies: list[HeartbeatReply] = []
        self.promise = recovered_promise
        self.stats: Counter = Counter()
        self._ticks = 0
        self._outgoing: list[Envelope] = []
        self._heard_anyone = not self.peers  # see _round_timeout; a single node has nobody to wait for
        self._start_round()  # so the first timeout already has replies to judge by

    # ---- inputs -----------------------------------------------------------------------------------

    def tick(self) -> Optional[Ballot]:
        """Advance time by one tick. Returns this node's ballot when it should lead (at round ends)."""
        self._ticks += 1
        if self._ticks < self.election_ticks:
            return None
        self._ticks = 0
        return self._round_timeout()

    def handle(self, env: Envelope) -> None:
        """Take one incoming BLE message; anything malformed, stale or foreign is dropped and counted."""
        msg = env.msg
        if env.config_id != self.config_id or env.dst != self.pid or env.src not in self.peers:
            self.stats["dropped_foreign"] += 1
        elif isinstance(msg, HeartbeatRequest):
            reply = HeartbeatReply(msg.round, self.ballot, self.leader, self.happy)
            self._outgoing.append(Envelope(self.pid, env.src, self.config_id, reply))
        elif isinstance(msg, HeartbeatReply):
            if msg.round == self.hb_round and isinstance(msg.ballot, Ballot) and msg.ballot.pid == env.src:
                self.replies.append(msg)
            else:
                self.stats["dropped_stale_reply"] += 1
        else:
            self.stats["dropped_unknown"] += 1

    def observe_promise(self, promise: Ballot) -> None:
        """Sequence Paxos tells BLE the ballot it has promised (it may have seen a Prepare BLE has not)."""
        if promise > self.promise:
            self.promise = promise

    def take_outgoing(self) -> list[Envelope]:
        out, self._outgoing = self._outgoing, []
        return out

    # ---- the round ------------------------------------------------------------------------------------

    def _round_timeout(self) -> Optional[Ballot]:
        if not self._heard_anyone and not self.replies:
            # Start-up grace (Omni): until the first reply this node has no evidence about anyone. On real
            # sockets the first rounds' requests go out before the connections are up and are lost; judging
            # such a round would make every node claim to lead (each Prepares with its own ballot) and then
            # turn unhappy, which the others read as a dead cluster and take over with n=2. A round trip
            # needs both directions of a link, so while this node hears nobody, nobody hears it either: its
            # unchanged state misleads no one, and the grace ends with the first reply.
            self.stats["rounds_unheard_at_start"] += 1
            self._start_round()
            self._sync_with_promise()
            return None
        self._heard_anyone = True
        self._adopt_highest_ballot()
        self._update_happiness()
        self._maybe_take_over()
        self._outbid_stale_promises()
        self._start_round()
        self._sync_with_promise()
        return self.ballot if self.leader == self.ballot else None

    def _adopt_highest_ballot(self) -> None:
        # The leader is learned from a node's own ballot only, never gossiped through its `leader` field.
        if self.replies:
            top = max(r.ballot for r in self.replies)
            if top > self.leader:
                self.leader = top

    def _update_happiness(self) -> None:
        if self.leader == self.ballot:
            followers = sum(1 for r in self.replies if r.leader <= self.ballot)
            self.happy = followers + 1 >= self.quorum or any(
                r.leader > self.ballot and r.happy for r in self.replies)
        else:
            self.happy = any(r.ballot == self.leader and r.happy for r in self.replies)

    def _maybe_take_over(self) -> None:
        quorum_connected = len(self.replies) + 1 >= self.quorum
        if not self.happy and quorum_connected and not any(r.happy for r in self.replies):
            self.ballot = Ballot(self.leader.n + 1, self.ballot.priority, self.pid)
            self.leader = self.ballot
            self.happy = True
            self.stats["takeovers"] += 1

    def _outbid_stale_promises(self) -> None:
        """Omni: a leader raises its ballot above a peer's promise that no node holds as its ballot any more.

        A node that crashed while leading restarts still promised to its old ballot, which may exceed the
        ballot the others elected meanwhile; it then refuses every Prepare of the happy leader for ever
        (upstream has the same gap). We outbid such a promise only when its owner answered this round with
        a different ballot, so it is certainly dead: never a live leader we merely cannot hear.
        """
        if self.leader != self.ballot:
            return
        owners = {r.ballot.pid: r.ballot for r in self.replies}
        stale = [r.leader for r in self.replies
                 if r.leader > self.ballot and r.leader.pid in owners and owners[r.leader.pid] != r.leader]
        if stale:
            self.ballot = Ballot(max(stale).n + 1, self.ballot.priority, self.pid)
            self.leader = self.ballot
            self.stats["outbid_stale_promise"] += 1

    def _start_round(self) -> None:
        self.hb_round += 1
        self.replies = []
        for peer in self.peers:
            self._outgoing.append(Envelope(self.pid, peer, self.config_id, HeartbeatRequest(self.hb_round)))

    def _sync_with_promise(self) -> None:
        if self.promise > self.leader:
            self.leader = self.promise
            if self.promise.pid == self.pid:
                self.ballot = self.promise
            self.happy = True

    # ---- queries ----------------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.leader == self.ballot
