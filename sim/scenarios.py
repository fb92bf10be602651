"""The three partial-connectivity scenarios of the OmniPaxos paper (EuroSys'23), run in the simulator.

Each scenario starts a healthy cluster under a steady load (one proposal per tick at a chosen node), cuts
links, and measures in election timeouts how long the cluster goes without deciding a new proposal:
- quorum-loss (5 nodes): the leader keeps a link only to A, and A is the only node linked to everyone;
- constrained election (5 nodes): the leader is isolated; A, the only quorum-connected node, has a stale
  log (it was cut off from the leader for a while first);
- chained (3 nodes): the link between the leader and C is cut; C is unhappy but B is happy, so nobody
  takes over and progress never stops.
Run `python -m omni.sim.scenarios` for a report.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cluster import SimCluster

ELECTION_TICKS = 10


@dataclass
class ScenarioResult:
    name: str
    recovery_timeouts: float  # election timeouts from the cut until a proposal made after it is decided
    leader_before: int
    leader_after: int
    leader_changes: int


def _healthy(pids, offset=0) -> SimCluster:
    """A settled cluster; ``offset`` ticks shift where in a heartbeat round the cut will fall."""
    cluster = SimCluster(pids, seed=offset, election_ticks=ELECTION_TICKS)
    cluster.run(3 * ELECTION_TICKS + offset)
    return cluster


def _load_until_decided(cluster: SimCluster, proposer: int, max_timeouts: int = 30) -> tuple[float, int]:
    """Propose at ``proposer`` every tick; return timeouts until the first post-cut proposal is decided."""
    start, count = cluster.now, 0
    fresh = set()
    changes, last_leader = 0, cluster.leader()
    while cluster.now - start < max_timeouts * ELECTION_TICKS:
        count += 1
        entry = f"after-cut-{count}"
        if cluster.propose(proposer, entry):
            fresh.add(entry)
        cluster.step()
        leader = cluster.leader()
        if leader is not None and leader != last_leader:
            changes, last_leader = changes + 1, leader
        if fresh.intersection(cluster.checker.chosen.get(1, ())):
            return (cluster.now - start) / ELECTION_TICKS, changes
    return float("inf"), changes


def _steady_load(cluster: SimCluster, proposer: int, ticks: int) -> None:
    for i in range(ticks):
        cluster.propose(proposer, f"before-cut-{cluster.now}-{i}")
        cluster.step()


def quorum_loss(offset: int = 0) -> ScenarioResult:
    pids = [1, 2, 3, 4, 5]
    cluster = _healthy(pids, offset)
    leader, a = cluster.leader(), 1
    _steady_load(cluster, a, 2 * ELECTION_TICKS)
    for x in pids:
        for y in pids:
            if x < y and a not in (x, y):
                cluster.cut(x, y)
    recovery, changes = _load_until_decided(cluster, a)
    return ScenarioResult("quorum-loss", recovery, leader, cluster.leader(), changes)


def constrained_election(offset: int = 0) -> ScenarioResult:
    pids = [1, 2, 3, 4, 5]
    cluster = _healthy(pids, offset)
    leader, a = cluster.leader(), 1
    cluster.cut(leader, a)  # A falls behind first
    _steady_load(cluster, 2, 2 * ELECTION_TICKS)
    stale = cluster.decided_len(a) < cluster.decided_len(2)
    cluster.isolate(leader)
    for x in (2, 3, 4):
        for y in (2, 3, 4):
            if x < y:
                cluster.cut(x, y)
    recovery, changes = _load_until_decided(cluster, a)
    if not stale:
        raise AssertionError("constrained election: A's log was meant to lag before the cut")
    return ScenarioResult("constrained-election", recovery, leader, cluster.leader(), changes)


def chained(offset: int = 0, observe_timeouts: int = 50) -> ScenarioResult:
    pids = [1, 2, 3]
    cluster = _healthy(pids, offset)
    leader = cluster.leader()
    c = min(pids)
    b = next(p for p in pids if p not in (leader, c))
    _steady_load(cluster, b, ELECTION_TICKS)
    cluster.cut(leader, c)
    recovery, changes = _load_until_decided(cluster, b)
    decided_before = cluster.decided_len(b)
    for _ in range(observe_timeouts * ELECTION_TICKS):
        cluster.propose(b, f"chained-{cluster.now}")
        cluster.step()
        if cluster.leader() != leader:
            changes += 1
            leader = cluster.leader()
    if cluster.decided_len(b) <= decided_before:
        raise AssertionError("chained: no progress while the leader-C link was cut")
    return ScenarioResult("chained", recovery, leader, cluster.leader(), changes)


def main() -> None:
    print(f"election timeout = {ELECTION_TICKS} ticks; recovery = timeouts from the cut to the first decided "
          f"proposal made after it")
    for scenario in (quorum_loss, constrained_election, chained):
        runs = [scenario(offset) for offset in range(ELECTION_TICKS)]
        worst = max(runs, key=lambda r: r.recovery_timeouts)
        best = min(r.recovery_timeouts for r in runs)
        print(f"{worst.name:22} recovery {best:.1f}-{worst.recovery_timeouts:.1f} timeouts over {len(runs)} cut "
              f"offsets  leader {worst.leader_before} -> {worst.leader_after}  "
              f"leader changes<={max(r.leader_changes for r in runs)}")


if __name__ == "__main__":
    main()
