"""Linearizable reads without a log entry (ReadIndex, as in Raft/etcd): the leader half.

The host registers a read at the leader with `read(token)`. The read's index ``idx`` is the leader's
accepted log length (StopSign slot included) at that moment. The leader then proves it still leads with a
*confirmation round*: `ReadProbe(n, round)` to every peer, and a quorum of acks, itself included, counting
only `ReadAck(n, round)` of its ballot and the round in flight. Once confirmed, the read is returned in
`Ready.reads` as ``(token, idx)`` and the host serves it from its state machine once it has applied
``idx`` entries. No clocks, no leases.

Rules:
- A read is confirmed only by a round that *started after* it was registered. Reads registered while a
  round is in flight wait for the next one, which starts as soon as the current one completes: under load
  one round trip confirms a whole batch of reads.
- A round in flight for ``resend_ticks`` ticks is replaced by a new round (a new number) covering every
  unconfirmed read; acks of the old round are ignored from then on.
- Reads are registered only at the leader in the Accept phase whose log holds no StopSign; they are
  confirmed only while it still leads that ballot in the Accept phase and the StopSign is not decided.
  When that stops being true (it obeyed a higher Prepare, BLE gave it a new ballot of its own, the
  StopSign was decided) every unconfirmed read goes to `Ready.failed_reads`: the host answers
  "unavailable, retry". `_check_reads` is that single test, wherever the role or phase changed: it runs
  on every input that could confirm a read and before every `take_ready`, so a read is never confirmed
  after the leader was deposed and never vanishes while the node lives (a crash loses it with the rest
  of the memory; its client times out).

Why a confirmed read is linearizable. Leader L with ballot n registers a read at time t with idx = its
log length. A follower acks a probe sent after t only if, when it acks (after t), it has promised nothing
above n; L has not either (promising more deposes it, so the read would fail). A decision at a ballot
n' > n needs a majority that promised n', and that majority intersects L + the acking majority: so
nothing was decided at a higher ballot before t. Entries decided at ballot n were proposed by L, so they
are in its log; entries decided at lower ballots were adopted by L in its Prepare phase (it is in the
Accept phase). So every entry decided before t has an index < idx, and serving the state once applied
>= idx (only decided entries are applied) is linearizable. Across configurations: the next configuration
decides nothing before this one's StopSign is decided, and a StopSign decided before t would be in L's
log at t; hence a read is refused when L's log holds a StopSign.

Why a stale ack cannot be mistaken for a fresh one: acks are matched by (ballot, round). Round numbers
grow for the node's whole life, and a node leads a ballot at most once even across restarts, since with
peers it reaches the Accept phase only after a peer promised it, i.e. after its Prepare, which is sent
only once its own promise is durable (then `handle_leader` refuses that ballot for ever).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .messages import Ballot, ReadAck, ReadProbe
from .roles import Phase, Role

if TYPE_CHECKING:  # pragma: no cover
    from .sequence_paxos import SequencePaxos


class ReadRounds:
    """A leader's unconfirmed reads under one ballot: those of the round in flight and those waiting."""

    __slots__ = ("n", "round", "started", "acks", "in_flight", "waiting")

    def __init__(self, n: Ballot):
        self.n = n
        self.round = 0  # the number of the round in flight (meaningful while ``in_flight`` is not empty)
        self.started = 0  # the tick it started at
        self.acks: set[int] = set()
        self.in_flight: dict = {}  # token -> idx: confirmed when the current round completes
        self.waiting: dict = {}  # token -> idx: registered after the current round started

    def tokens(self) -> list:
        return list(self.in_flight) + list(self.waiting)


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
        if token in rs.in_flight or token in rs.waiting:
            raise ValueError(f"read {token!r} is already pending")
        rs.waiting[token] = self.log.accepted_idx
        if not rs.in_flight:
            self._start_read_round()

    def pending_reads(self: "SequencePaxos") -> int:
        """How many registered reads are neither confirmed nor failed yet."""
        rs = self._reads
        return 0 if rs is None else len(rs.in_flight) + len(rs.waiting)

    def _serving_reads(self: "SequencePaxos", n: Ballot) -> bool:
        """Reads registered under ``n`` may still be confirmed: leading ``n``, Accept phase, not sealed."""
        return (self.role is Role.LEADER and self.phase is Phase.ACCEPT and self.leader_state.n == n
                and not self.log.stopsign_decided)

    def _check_reads(self: "SequencePaxos") -> None:
        """Fail every unconfirmed read once its ballot's leadership is over (see the module docstring)."""
        rs = self._reads
        if rs is not None and not self._serving_reads(rs.n):
            self._ready.failed_reads.extend(rs.tokens())
            self.stats["failed_reads"] += len(rs.in_flight) + len(rs.waiting)
            self._reads = None

    def _start_read_round(self: "SequencePaxos") -> None:
        """A new round for every unconfirmed read: registered before it starts, so it may confirm them."""
        rs = self._reads
        rs.in_flight.update(rs.waiting)
        rs.waiting = {}
        self._read_round += 1
        rs.round, rs.started, rs.acks = self._read_round, self._ticks, {self.pid}
        for peer in self.peers:
            self._send(peer, ReadProbe(rs.n, rs.round))
        self._check_read_quorum()

    def _read_round_confirmed(self: "SequencePaxos", rs: ReadRounds) -> bool:
        return len(rs.acks) >= self.quorum

    def _check_read_quorum(self: "SequencePaxos") -> None:
        rs = self._reads
        if not self._read_round_confirmed(rs):
            return
        self._ready.reads.extend(rs.in_flight.items())
        rs.in_flight = {}
        if rs.waiting:
            self._start_read_round()

    def _on_read_ack(self: "SequencePaxos", src: int, msg: ReadAck) -> None:
        self._check_reads()
        rs = self._reads
        if rs is None or not rs.in_flight or msg.n != rs.n or msg.round != rs.round:
            self.stats["dropped_stale_read_ack"] += 1
            return
        rs.acks.add(src)
        self._check_read_quorum()

    def _reads_tick(self: "SequencePaxos") -> None:
        """Fail reads of a lost leadership; replace a round in flight too long (a probe or ack was lost)."""
        self._check_reads()
        rs = self._reads
        if rs is not None and rs.in_flight and self._ticks - rs.started >= self.cfg.resend_ticks:
            self.stats["read_rounds_resent"] += 1
            self._start_read_round()
