"""Linearizable reads without a log entry (ReadIndex, as in Raft/etcd): the leader half.

The host registers a read at the leader with `read(token)`. The read's index ``idx`` is what the leader
knows to be decided or adopted at that moment: max(decided index, log length after its Prepare phase).
The leader then proves it still leads with *confirmation rounds*: `ReadProbe(n, round)` to every peer,
answered by `ReadAck(n, round)` from a follower that has promised nothing above ``n``. Once a quorum
(itself included) has acked a round that started after the read was registered, the read is returned in
`Ready.reads` as ``(token, idx)``, and the host serves it from its state machine once it has applied
``idx`` entries. No clocks, no leases.

Rules:
- A read may be confirmed by the acks of any round that *started after* it was registered. Reads
  registered while a round is in flight wait for the next one, which starts as soon as the reads in flight
  are confirmed: under load one round trip confirms a whole batch of reads.
- When the newest round is ``resend_ticks`` old, a new one is sent (a probe or ack may have been lost).
  Acks of the older rounds still count for the reads registered before those rounds, so a round trip
  longer than the resend period delays reads but never starves them.
- A read not confirmed within GIVE_UP_RESENDS resend periods fails: a leader cut off from its peers may
  still believe it leads and must not hold reads for ever.
- Reads are registered only at the leader in the Accept phase whose log holds no StopSign; they are
  confirmed only while it still leads that ballot in the Accept phase and the StopSign is not decided.
  When that stops being true (it obeyed a higher Prepare, BLE gave it a new ballot of its own, the
  StopSign was decided) every unconfirmed read goes to `Ready.failed_reads`: the host answers
  "unavailable, retry". `_check_reads` is that single test, wherever the role or phase changed: it runs
  on every input that could confirm a read and before every `take_ready`, so a read is never confirmed
  after the leader was deposed and never vanishes while the node lives (a crash loses it with the rest
  of the memory; its client times out).

Why a confirmed read is linearizable. Leader L with ballot n registers a read at time t. A follower acks
a probe sent after t only if, when it acks (after t), it has promised nothing above n; L has not either
(promising more deposes it, so the read would fail). A decision at a ballot n' > n needs a majority that
promised n', and that majority intersects L + the acking majority: so nothing was decided at a higher
ballot before t. An entry decided at ballot n is known decided only once L counted its quorum (only L
collects the Accepted of ballot n and tells the others), so every such entry known decided anywhere at t
lies below L's decided index; entries decided at lower ballots were adopted by L in its Prepare phase. So
every entry decided (and so every write completed) before t has an index < idx, and serving the state once
applied >= idx (only decided entries are applied) is linearizable. Entries L accepted but has not decided
completed no write; the read need not wait for them. Across configurations: the next configuration decides
nothing before this one's StopSign is decided, and a StopSign decided before t would be in L's log at t;
hence a read is refused when L's log holds a StopSign.

Why a stale ack cannot confirm a read too early: acks are matched by ballot and carry their round, and an
ack of round r was produced after round r's probe was sent, i.e. after every read registered before round
r started. Round numbers grow for the node's whole life, and a node leads a ballot at most once even across
restarts, since with peers it reaches the Accept phase only after a peer promised it, i.e. after its
Prepare, which is sent only once its own promise is durable (then `handle_leader` refuses that ballot for
ever).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .messages import Ballot, ReadAck, ReadProbe
from .roles import Phase, Role

if TYPE_CHECKING:  # pragma: no cover
    from .sequence_paxos import SequencePaxos


#: A read that no quorum confirmed within this many resend periods fails (the host answers "retry"): a
#: leader cut off from its peers may still believe it leads, and must not hold reads for ever.
GIVE_UP_RESENDS = 10


class ReadRounds:
    """A leader's unconfirmed reads under one ballot, grouped by the round that may confirm them."""

    __slots__ = ("n", "round", "started", "acked", "groups", "waiting")

    def __init__(self, n: Ballot):
        self.n = n
        self.round = 0  # the newest round started under ``n``
        self.started = 0  # the tick it started at
        self.acked: dict[int, int] = {}  # peer -> the newest round it acked under ``n``
        # round -> (tick it started, {token: idx}): reads registered before that round started, so any ack
        # of it or of a later round may confirm them. Rounds only grow, so the oldest group comes first.
        self.groups: dict[int, tuple[int, dict]] = {}
        self.waiting: dict = {}  # token -> idx: registered after the newest round started

    def tokens(self) -> list:
        return [t for _, reads in self.groups.values() for t in reads] + list(self.waiting)

    def pending(self) -> int:
        return sum(len(reads) for _, reads in self.groups.values()) + len(self.waiting)


class ReadIndexMixin:
    """Leader-side linearizable reads of `SequencePaxos` (the follower half is `_on_read_probe`)."""

    _reads: Optional[ReadRounds]
    _read_round: int

    def read(self: "SequencePaxos", token: int) -> None:
        """Register a linearizable read; it comes back in `Ready.reads` or `Ready.failed_reads`.

        Only the leader in the Accept phase takes reads (`ReadRejected` otherwise). It need not have
        caught up (`leader_has_caught_up`): ``idx`` counts what it adopted, and the host waits for it.
        A token still pending is local misuse (ValueError).
        """
        from .sequence_paxos import ReadRejected
        self._check_reads()
        if not self.is_accepting_leader():
            raise ReadRejected(f"node {self.pid} is not the leader in the Accept phase")
        if self.log.stopsign is not None:
            raise ReadRejected("the configuration is being reconfigured")
        rs = self._reads
        if rs is None:
            rs = self._reads = ReadRounds(self.leader_state.n)
        if token in rs.waiting or any(token in reads for _, reads in rs.groups.values()):
            raise ValueError(f"read {token!r} is already pending")
        # Not the accepted length: entries this leader proposed and has not decided yet were completed by no
        # client, so the read need not wait for them (nor wait for ever if they are lost with this leader).
        rs.waiting[token] = max(self.log.decided_idx, self.leader_state.adopted_idx)
        if not rs.groups:
            self._start_read_round()

    def pending_reads(self: "SequencePaxos") -> int:
        """How many registered reads are neither confirmed nor failed yet."""
        return 0 if self._reads is None else self._reads.pending()

    def _serving_reads(self: "SequencePaxos", n: Ballot) -> bool:
        """Reads registered under ``n`` may still be confirmed: leading ``n``, Accept phase, not sealed."""
        return (self.role is Role.LEADER and self.phase is Phase.ACCEPT and self.leader_state.n == n
                and not self.log.stopsign_decided)

    def _check_reads(self: "SequencePaxos") -> None:
        """Fail every unconfirmed read once its ballot's leadership is over (see the module docstring)."""
        rs = self._reads
        if rs is not None and not self._serving_reads(rs.n):
            self._fail_reads(rs.tokens())
            self._reads = None

    def _fail_reads(self: "SequencePaxos", tokens: list) -> None:
        self._ready.failed_reads.extend(tokens)
        self.stats["failed_reads"] += len(tokens)

    def _start_read_round(self: "SequencePaxos") -> None:
        """A new round, for the reads registered so far and not yet in a round (maybe none: a resend)."""
        rs = self._reads
        self._read_round += 1
        rs.round, rs.started = self._read_round, self._ticks
        if rs.waiting:
            rs.groups[rs.round] = (self._ticks, rs.waiting)
            rs.waiting = {}
        for peer in self.peers:
            self._send(peer, ReadProbe(rs.n, rs.round))
        self._check_read_quorum()

    def _quorum_round(self: "SequencePaxos", rs: ReadRounds) -> int:
        """The newest round that a quorum (this node included) has acked, or any round alone."""
        need = self.quorum - 1  # acks from peers; this node counts itself
        if need <= 0:
            return rs.round
        acked = sorted(rs.acked.values(), reverse=True)
        return acked[need - 1] if len(acked) >= need else 0

    def _check_read_quorum(self: "SequencePaxos") -> None:
        rs = self._reads
        confirmed_up_to = self._quorum_round(rs)
        for r in [r for r in rs.groups if r <= confirmed_up_to]:
            self._ready.reads.extend(rs.groups.pop(r)[1].items())
        if not rs.groups and rs.waiting:
            self._start_read_round()

    def _on_read_ack(self: "SequencePaxos", src: int, msg: ReadAck) -> None:
        """An ack of round r counts for every read registered before round r started, so a slow ack still
        confirms what it can after newer rounds were sent (a round trip longer than the resend period
        must not starve reads)."""
        self._check_reads()
        rs = self._reads
        if rs is None or msg.n != rs.n or not 0 < msg.round <= rs.round or src not in self.peers:
            self.stats["dropped_stale_read_ack"] += 1
            return
        if msg.round > rs.acked.get(src, 0):
            rs.acked[src] = msg.round
        self._check_read_quorum()

    def _reads_tick(self: "SequencePaxos") -> None:
        """Fail reads of a lost leadership or waiting too long; probe again when the newest round is old."""
        self._check_reads()
        rs = self._reads
        if rs is None or not rs.groups:
            return
        give_up = self._ticks - GIVE_UP_RESENDS * self.cfg.resend_ticks
        for r in [r for r, (tick, _) in rs.groups.items() if tick <= give_up]:
            self._fail_reads(list(rs.groups.pop(r)[1]))
        if (rs.groups or rs.waiting) and self._ticks - rs.started >= self.cfg.resend_ticks:
            self.stats["read_rounds_resent"] += 1
            self._start_read_round()
