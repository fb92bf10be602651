"""Messages the node's actors tell each other (never ask): frozen dataclasses, one line each on who sends it.
The two that exist once per client request (`ClientFrame`, `Reply`) are NamedTuples instead: as immutable,
and built in a third of the time of a frozen dataclass, which the leader pays several times per request.

These never leave the process. Protocol messages between nodes are `omni.paxos` messages inside an
`Envelope`; node-level messages between nodes (a read forwarded to the leader and its answer, a snapshot
chunk pulled from a peer's Applier and its answer) are `PeerRequest` / `PeerReply`, which the transport
carries as plain msgpack maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from omni.paxos import Ballot, Envelope, Ready

MAX_TIMEOUT = 300.0  # seconds: the longest timeout a client request may ask for (longer ones are refused)


@dataclass(frozen=True)
class Tick:
    """Ticker to BLE, SequencePaxos, ClientGateway and Applier, every tick interval."""


@dataclass(frozen=True)
class Inbound:
    """Transport to BLE or SequencePaxos: a decoded protocol message from a peer (or from this node)."""

    env: Envelope


@dataclass(frozen=True)
class Reconnected:
    """Transport to SequencePaxos: the link to ``pid`` was re-established; messages may have been lost."""

    pid: int


@dataclass(frozen=True)
class LeadWith:
    """BLE to SequencePaxos: this node should lead with ``ballot``."""

    ballot: Ballot


@dataclass(frozen=True)
class PromiseChanged:
    """SequencePaxos to BLE: the ballot it has now promised."""

    ballot: Ballot


@dataclass(frozen=True)
class Propose:
    """ClientGateway to SequencePaxos: entries to append to the log."""

    entries: tuple


@dataclass(frozen=True)
class LinearizableReads:
    """ClientGateway to SequencePaxos, at the leader: ``(req, request)`` reads to confirm with a quorum
    (ReadIndex) before the Applier answers them from its state; folded per mailbox drain like Propose."""

    reads: tuple


@dataclass(frozen=True)
class Persist:
    """SequencePaxos to Storage: a Ready batch to make durable, then release (send, apply).

    ``base``: the global index where the configuration's log starts (actors/membership.py)."""

    ready: Ready
    base: int = 0


@dataclass(frozen=True)
class Apply:
    """Storage to Applier: decided items (DecidedEntries / DecidedSnapshot), now durable, in log order;
    their indexes are local to the configuration whose log starts at global index ``base``."""

    items: tuple
    base: int = 0


@dataclass(frozen=True)
class SwitchConfig:
    """Node to SequencePaxos / BLE: run this configuration's core from now on (None: this node was removed).

    SequencePaxos first tells Storage to switch to ``store`` (the new configuration's log), so every
    batch of the old core is written to the old log and every batch of the new one to the new log."""

    core: object
    store: object = None
    base: int = 0


@dataclass(frozen=True)
class SwitchLog:
    """SequencePaxos to Storage: batches from now on go to ``store``; the old log is closed and deleted."""

    store: object


@dataclass(frozen=True)
class Reconfigure:
    """ClientGateway to SequencePaxos: propose the StopSign that moves the cluster to ``nodes``."""

    req: int
    nodes: tuple
    metadata: object
    config_id: int


@dataclass(frozen=True)
class ConfigChanged:
    """Node to ClientGateway: this node now runs (or, removed, no longer runs) ``membership``."""

    membership: object
    removed: bool = False


@dataclass(frozen=True)
class CompactLog:
    """Applier to SequencePaxos: a durable snapshot file covers the log below ``idx``; it may be compacted."""

    idx: int


@dataclass(frozen=True)
class Query:
    """ClientGateway (a `leader` read) or SequencePaxos (a confirmed linearizable read, inside `Queries`) to
    Applier: a read-only request to answer from the current state once ``min_applied`` entries are applied."""

    req: int
    request: dict
    min_applied: int = 0  # answer only once this many entries are applied


@dataclass(frozen=True)
class LocalQueries:
    """ClientGateway to Applier: the ``local`` reads of one mailbox drain, each ``(route, rid, request,
    deadline)`` with the deadline in `time.monotonic` seconds. The Applier answers them on their routes
    itself (nothing waits for them in the gateway) and counts them in ``node.local_reads_answered``."""

    queries: tuple


@dataclass(frozen=True)
class Queries:
    """SequencePaxos to Applier: the linearizable reads one Ready confirmed (`Query` each), in one tell."""

    queries: tuple


class Reply(NamedTuple):
    """Applier (or a peer, via the transport) to ClientGateway: the outcome of request ``req``."""

    req: int
    ok: bool
    result: Any = None
    code: str = ""
    message: str = ""

    def to_client(self, rid) -> dict:
        """The reply map of the client protocol (DESIGN.md section 5), with the request's ``id``."""
        if self.ok:
            return {"ok": True, "result": self.result, "id": rid}
        return {"ok": False, "error": {"code": self.code, "message": self.message}, "id": rid}


@dataclass(frozen=True)
class NodeStatus:
    """SequencePaxos to ClientGateway, whenever it changes: what `status` reports."""

    leader: int
    role: str
    ballot: Ballot
    decided_idx: int
    config_id: int
    members: tuple
    accepting: bool = False  # leading, with everything earlier leaders decided applied here: serves `leader` reads


class ClientFrame(NamedTuple):
    """Transport to ClientGateway: one request frame from the client socket, with its routing envelope."""

    route: tuple  # ZeroMQ routing frames to send the reply back on
    body: bytes


@dataclass(frozen=True)
class ClientFrames:
    """Transport to ClientGateway: the client frames one poll drained, in arrival order (one tell, not N)."""

    frames: tuple


@dataclass(frozen=True)
class Replies:
    """Applier to ClientGateway: the outcomes of the requests one decided batch answered, in log order."""

    replies: tuple


@dataclass(frozen=True)
class PeerRequest:
    """ClientGateway to the leader's ClientGateway (over the transport): serve this read at the leader.

    With ``request["op"] == "_omni.snapshot"`` it is an Applier asking a peer's Applier for a snapshot
    chunk instead (actors/snapshots.py); the node routes it there."""

    origin: int
    req: int
    request: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PeerReply:
    """The leader's ClientGateway back to the origin node: the answer to a PeerRequest (a snapshot chunk,
    under the key "_omni.snapshot", when the request was for one: routed to the Applier)."""

    req: int
    reply: dict = field(default_factory=dict)
