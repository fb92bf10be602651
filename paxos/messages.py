"""Every message the protocol core sends or receives, as frozen dataclasses.

Messages travel inside an `Envelope` that names the sender, the receiver and the configuration they belong
to; Sequence Paxos messages carry no configuration of their own (as in OmniPaxos), so the envelope keeps
configurations apart and a core drops envelopes for another configuration. Entries are opaque to the core:
any value the host can encode (the node uses msgpack-compatible values). The codec that turns these into
bytes lives in `omni.transport`; nothing here knows about bytes.

Indices follow OmniPaxos: the log is 0-based, and ``decided_idx`` / ``accepted_idx`` are lengths (0 means
nothing). A StopSign takes one slot after the last entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True, order=True)
class Ballot:
    """A leader's round: ordered by (n, priority, pid). pid 0 means "no leader"."""

    n: int = 0
    priority: int = 0
    pid: int = 0


ZERO_BALLOT = Ballot()


@dataclass(frozen=True, order=True)
class SequenceNumber:
    """Position of an Accept-phase message in the leader's stream to one follower."""

    session: int = 0
    counter: int = 0


@dataclass(frozen=True)
class StopSign:
    """The last entry of a configuration: names the next configuration's id and members."""

    config_id: int
    nodes: tuple[int, ...]
    metadata: Any = None


@dataclass(frozen=True)
class SnapshotSync:
    """The compacted part of a log sync: a complete snapshot, a delta from ``from_idx``, or a bare trim."""

    kind: str  # "complete" | "delta" | "trimmed"
    data: Any = None
    from_idx: int = 0


@dataclass(frozen=True)
class LogSync:
    """A log suffix to install: replace everything from ``sync_idx`` with ``suffix`` (after ``snapshot``)."""

    sync_idx: int
    suffix: tuple = ()
    snapshot: Optional[SnapshotSync] = None
    stopsign: Optional[StopSign] = None


# ---- Ballot Leader Election ------------------------------------------------------------------------


@dataclass(frozen=True)
class HeartbeatRequest:
    """BLE, every node to every peer at the start of each heartbeat round."""

    round: int


@dataclass(frozen=True)
class HeartbeatReply:
    """BLE, reply to a HeartbeatRequest: the replier's ballot, the leader it follows, and whether it is happy."""

    round: int
    ballot: Ballot
    leader: Ballot
    happy: bool


# ---- Sequence Paxos ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareReq:
    """Follower to a (presumed) leader after restart, reconnect or a sequence gap: please Prepare me."""

    n: Ballot


@dataclass(frozen=True)
class Prepare:
    """New leader to every peer (and again to peers that have not promised, or asked by PrepareReq)."""

    n: Ballot
    decided_idx: int
    n_accepted: Ballot
    accepted_idx: int


@dataclass(frozen=True)
class Promise:
    """Follower to leader after persisting the promise; carries the part of its log the leader may lack."""

    n: Ballot
    n_accepted: Ballot
    decided_idx: int
    accepted_idx: int
    log_sync: Optional[LogSync] = None


@dataclass(frozen=True)
class AcceptSync:
    """Leader to a promised follower: the log to adopt. ``base`` echoes the Promise it answers.

    The follower installs it only while its (accepted round, accepted index) still equal ``base``, so a
    delayed or duplicated AcceptSync computed against an older state can never truncate the log.
    """

    n: Ballot
    seq: SequenceNumber
    decided_idx: int
    log_sync: LogSync
    base: tuple[Ballot, int]


@dataclass(frozen=True)
class AcceptDecide:
    """Leader to followers in the Accept phase: new entries to append, with the leader's decided index."""

    n: Ballot
    seq: SequenceNumber
    decided_idx: int
    entries: tuple


@dataclass(frozen=True)
class Accepted:
    """Follower to leader (and the leader to itself) once entries up to ``accepted_idx`` are on disk."""

    n: Ballot
    accepted_idx: int


@dataclass(frozen=True)
class NotAccepted:
    """Follower to the sender of a message whose ballot is lower than the follower's promise."""

    n: Ballot


@dataclass(frozen=True)
class Decide:
    """Leader to followers: entries up to ``decided_idx`` are decided (also resent as an idle heartbeat)."""

    n: Ballot
    seq: SequenceNumber
    decided_idx: int


@dataclass(frozen=True)
class ProposalForward:
    """A non-leader to the leader it promised: proposals made at it. ``fid`` makes duplicates detectable."""

    entries: tuple
    fid: tuple[int, int] = (0, 0)  # (sender incarnation, counter)


@dataclass(frozen=True)
class Compaction:
    """Leader after a trim (``kind`` "trim"), or any node after a shared snapshot (``kind`` "snapshot")."""

    kind: str
    idx: int


@dataclass(frozen=True)
class AcceptStopSign:
    """Leader to promised followers: accept this StopSign into the slot after the last entry."""

    n: Ballot
    seq: SequenceNumber
    ss: StopSign


@dataclass(frozen=True)
class ForwardStopSign:
    """A non-leader to its leader: a reconfiguration was requested here."""

    ss: StopSign


@dataclass(frozen=True)
class ReadProbe:
    """Leader in the Accept phase to every peer when a round of linearizable reads starts: still mine?"""

    n: Ballot
    round: int


@dataclass(frozen=True)
class ReadAck:
    """Follower to the leader of ``n``, answering its ReadProbe, iff it has promised exactly ``n``."""

    n: Ballot
    round: int


BLE_MESSAGES = (HeartbeatRequest, HeartbeatReply)
SP_MESSAGES = (
    PrepareReq, Prepare, Promise, AcceptSync, AcceptDecide, Accepted, NotAccepted, Decide,
    ProposalForward, Compaction, AcceptStopSign, ForwardStopSign, ReadProbe, ReadAck,
)


@dataclass(frozen=True)
class Envelope:
    """One message in flight: from ``src`` to ``dst`` within configuration ``config_id``."""

    src: int
    dst: int
    config_id: int
    msg: Any = field(compare=True)
