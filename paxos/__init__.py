"""The OmniPaxos protocol core: Ballot Leader Election and Sequence Paxos as plain, deterministic objects.

Nothing in this package performs I/O, reads a clock, starts a thread or draws random numbers (a test parses
every file here and fails if one imports such a module). Hosts feed the objects messages and ticks and carry
out what they return: the actors in `omni.actors` for a real node, `omni.sim` for the simulator.
"""
from .ble import BallotLeaderElection
from .messages import (
    ZERO_BALLOT, AcceptDecide, Accepted, AcceptStopSign, AcceptSync, Ballot, Compaction, Decide, Envelope,
    ForwardStopSign, HeartbeatReply, HeartbeatRequest, LogSync, NotAccepted, Prepare, PrepareReq, Promise,
    ProposalForward, ReadAck, ReadProbe, SequenceNumber, SnapshotSync, StopSign,
)
from .roles import Phase, Role
from .sequence_paxos import (
    CompactionError, DecidedEntries, DecidedSnapshot, PaxosConfig, ProposalRejected, ReadRejected, Ready,
    SequencePaxos, Snapshotter,
)
from .storage import LogState, MemoryStorage, Storage

__all__ = [
    "ZERO_BALLOT", "AcceptDecide", "Accepted", "AcceptStopSign", "AcceptSync", "Ballot", "BallotLeaderElection",
    "Compaction", "CompactionError", "Decide", "DecidedEntries", "DecidedSnapshot", "Envelope", "ForwardStopSign",
    "HeartbeatReply", "HeartbeatRequest", "LogState", "LogSync", "MemoryStorage", "NotAccepted", "PaxosConfig",
    "Phase", "Prepare", "PrepareReq", "Promise", "ProposalForward", "ProposalRejected", "ReadAck", "ReadProbe",
    "ReadRejected", "Ready", "Role", "SequenceNumber", "SequencePaxos", "SnapshotSync", "Snapshotter", "StopSign",
    "Storage",
]
