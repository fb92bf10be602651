"""The role and phase of a Sequence Paxos node (shared by the leader and follower halves)."""
import enum


class Role(enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"


class Phase(enum.Enum):
    NONE = "none"        # fresh: no leader heard of yet
    PREPARE = "prepare"  # promised (follower) or collecting promises (leader)
    ACCEPT = "accept"    # replicating in the promised round
    RECOVER = "recover"  # restarted or lost messages: waiting to be prepared again
