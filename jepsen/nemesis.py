"""The nemesis: faults injected into a running `Cluster`, one at a time, each with a matching heal.

Menu (names as `omni torture --nemesis` takes them):
- kill / kill-leader: SIGKILL a node (random, or the leader); heal restarts it from its data directory;
- kill-all: SIGKILL every node at once (a whole-cluster crash); heal restarts them all;
- pause / pause-leader: SIGSTOP a node; heal sends SIGCONT.
- partition: one of halves, isolate-leader, ring, bridge, chosen at random each time;
- halves: a random minority cut off from the majority (both directions);
- isolate-leader: the leader cut off from everyone;
- ring: nodes on a random ring keep only links to their ring neighbours, so each node sees a majority but
  no two see the same one (5 nodes); with 3 nodes a ring is complete, so a line a-b-c is used instead;
- bridge: two halves that see each other only through one bridge node;
- oneway-leader: the leader cannot send to anyone but still hears everyone (directed cuts);
- quorum-loss, constrained, chained: the OmniPaxos paper's partial-connectivity scenarios, with the link
  patterns of sim/scenarios.py (omnipaxos.md section 1.5): quorum-loss keeps every link of one follower A
  and cuts every other link; constrained first cuts leader-A, lets A's log fall behind for two election
  timeouts, then isolates the leader and cuts every link among the others except A's; chained cuts the
  leader-C link only (3 nodes in the paper). They need 5 nodes to mean what the paper means (3 for
  chained); with 3 nodes quorum-loss and chained coincide.
Partition plans are pure functions of (nodes, leader, rng) returning directed links to cut, so their
shapes are unit-tested without processes. `Fault.injected_at` is the time the full fault is in place
(the last stage of a staged partition); `healed_at` the time the heal finished.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .cluster import Cluster
from .netfilter import Firewall

Links = set[tuple[int, int]]  # (a, b): messages from a to b are dropped


@dataclass
class Plan:
    name: str
    detail: str
    stages: list[Links]
    stage_gap: float = 0.0  # election timeouts between stages


@dataclass
class Fault:
    name: str
    detail: str
    injected_at: float = 0.0
    healed_at: float | None = None
    undo: Callable[[], None] | None = field(default=None, repr=False)


# --- partition plans ---------------------------------------------------------------------------------

def both(a: int, b: int) -> Links:
    return {(a, b), (b, a)}


def between(left, right) -> Links:
    return {link for a in left for b in right for link in both(a, b)}


def _others(pids, leader):
    return [p for p in pids if p != leader]


def halves(pids, leader, rng) -> Plan:
    minority = sorted(rng.sample(list(pids), len(pids) // 2))
    majority = [p for p in pids if p not in minority]
    return Plan("halves", f"minority {minority} | majority {majority} (leader {leader})",
                [between(minority, majority)])


def isolate_leader(pids, leader, rng) -> Plan:
    return Plan("isolate-leader", f"leader {leader} isolated", [between([leader], _others(pids, leader))])


def ring(pids, leader, rng) -> Plan:
    order = list(pids)
    rng.shuffle(order)
    n = len(order)
    if n <= 3:  # a 3-ring is complete: use the line order[0] - order[1] - order[2]
        return Plan("ring", f"line {order}", [both(order[0], order[-1])] if n == 3 else [set()])
    adjacent = {frozenset((order[i], order[(i + 1) % n])) for i in range(n)}
    cut = {link for a in order for b in order if a < b and frozenset((a, b)) not in adjacent
           for link in both(a, b)}
    return Plan("ring", f"ring {order}", [cut])


def bridge(pids, leader, rng) -> Plan:
    order = list(pids)
    rng.shuffle(order)
    mid = len(order) // 2
    left, node, right = order[:mid], order[mid], order[mid + 1:]
    return Plan("bridge", f"{left} | bridge {node} | {right}", [between(left, right)])


def oneway_leader(pids, leader, rng) -> Plan:
    return Plan("oneway-leader", f"leader {leader} cannot send (still hears)",
                [{(leader, p) for p in _others(pids, leader)}])


def quorum_loss(pids, leader, rng) -> Plan:
    a = rng.choice(_others(pids, leader))
    cut = {link for x in pids for y in pids if x < y and a not in (x, y) for link in both(x, y)}
    return Plan("quorum-loss", f"only {a} keeps its links; leader {leader} keeps only {a}", [cut])


def constrained(pids, leader, rng) -> Plan:
    a = rng.choice(_others(pids, leader))
    rest = [p for p in _others(pids, leader) if p != a]
    first = both(leader, a)
    full = first | between([leader], rest) | {link for x in rest for y in rest if x < y for link in both(x, y)}
    return Plan("constrained", f"{a} lags (cut from leader {leader}), then leader isolated and only {a} "
                               f"linked to {rest}", [first, full], stage_gap=2.0)


def chained(pids, leader, rng) -> Plan:
    c = rng.choice(_others(pids, leader))
    return Plan("chained", f"link leader {leader} - {c} cut", [both(leader, c)])


PARTITIONS = {f.__name__.replace("_", "-"): f for f in
              (halves, isolate_leader, ring, bridge, oneway_leader, quorum_loss, constrained, chained)}
GENERIC_PARTITIONS = ("halves", "isolate-leader", "ring", "bridge")
PROCESS_FAULTS = ("kill", "kill-leader", "kill-all", "pause", "pause-leader")
NAMES = PROCESS_FAULTS + ("partition",) + tuple(PARTITIONS)


def parse(spec: str) -> list[str]:
    """A comma-separated nemesis list ("all" for every one) checked against the menu."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if "all" in names:
        return list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise ValueError(f"unknown nemesis {', '.join(unknown) or '(none given)'}; choose from {', '.join(NAMES)}")
    return names


# --- injecting -----------------------------------------------------------------------------------------

class Nemesis:
    """Injects named faults into ``cluster`` (partitions through ``firewall``) and heals them."""

    def __init__(self, cluster: Cluster, firewall: Firewall | None, rng: random.Random):
        self.cluster, self.firewall, self.rng = cluster, firewall, rng

    def leader(self) -> int:
        leader = self.cluster.current_leader()
        if leader is None:
            leader = self.rng.choice(self._running() or list(self.cluster.pids))
        return leader

    def inject(self, name: str) -> Fault:
        if name == "partition":
            name = self.rng.choice(GENERIC_PARTITIONS)
        if name in PARTITIONS:
            return self.partition(PARTITIONS[name](self.cluster.pids, self.leader(), self.rng))
        if name == "kill-all":
            return self._kill_all()
        target = self.leader() if name.endswith("-leader") else self.rng.choice(self._running())
        if name.startswith("kill"):
            self.cluster.kill(target)
            return Fault(name, f"kill -9 node {target}", time.monotonic(), undo=lambda: self.cluster.start(target))
        if name.startswith("pause"):
            self.cluster.pause(target)
            return Fault(name, f"SIGSTOP node {target}", time.monotonic(), undo=lambda: self.cluster.resume(target))
        raise ValueError(f"unknown nemesis {name!r}")

    def _kill_all(self) -> Fault:
        pids = [p for p in self.cluster.pids if self.cluster.alive(p)]
        for pid in pids:
            self.cluster.kill(pid)
        return Fault("kill-all", f"kill -9 nodes {pids}", time.monotonic(), undo=lambda: self.cluster.start(*pids))

    def _running(self) -> list[int]:
        """Nodes up and not paused; when none is (nodes that died on their own), every node, so the run
        goes on and the end of run reports the crashes instead of the harness failing."""
        running = [p for p in self.cluster.pids if self.cluster.alive(p) and p not in self.cluster.paused]
        return running or list(self.cluster.pids)

    def partition(self, plan: Plan) -> Fault:
        if self.firewall is None:
            raise RuntimeError("partitions need a Firewall")
        for i, links in enumerate(plan.stages):
            if i:
                time.sleep(plan.stage_gap * self.cluster.election_timeout)
            self.cut(links)
        return Fault(plan.name, plan.detail, time.monotonic(), undo=self.firewall.heal)

    def cut(self, links: Links) -> None:
        c = self.cluster
        for a, b in sorted(links):
            self.firewall.block(c.host[a], c.host[b], c.peer_port[b])

    def heal(self, fault: Fault) -> None:
        if fault.undo is not None:
            fault.undo()
        fault.healed_at = time.monotonic()

    def heal_all(self) -> None:
        """Whatever is still broken: partitions, paused and dead nodes."""
        if self.firewall is not None:
            self.firewall.heal()
        for pid in list(self.cluster.paused):
            self.cluster.resume(pid)
        dead = [p for p in self.cluster.pids if not self.cluster.alive(p)]
        if dead:
            self.cluster.start(*dead)
