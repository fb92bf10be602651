#!/usr/bin/env python3
"""Recovery times of a real cluster under each fault scenario (a measurement, not a test).

For every scenario, `--runs` times: wait for a healthy cluster (an agreed leader and a successful write),
inject the fault, and measure the seconds from the moment the whole fault is in place until the first
successful write *called after it* (probe writers: `--probes` threads per node, one attempt each, through
every node; clients are never partitioned). The fault is held until then (at most `--limit` seconds), then
healed, and the time from the heal to the next successful write is measured too. Times are also given in
election timeouts (ET = tick x election ticks: 10 ms x 20 = 200 ms here, as the test harness runs nodes;
the node's default is 10 ms x 30 = 300 ms).

Scenarios (nodes): kill-leader, pause-leader, isolate-leader (3); minority-with-leader (5: the leader and
one follower cut from the other three), majority-with-leader (5: two followers cut off, the leader keeps a
majority); quorum-loss, constrained (5) and chained (3), the OmniPaxos paper's partial-connectivity cases
(see omni.jepsen.nemesis). Partitions are iptables rules (root needed). A run after whose heal no write
succeeds within `--limit` is counted as "wedged"; that cluster is left on disk for a post-mortem and a
fresh one serves the remaining runs.

    python bench/recovery.py [--runs 3] [--election-ticks 20] [--out bench/recovery_results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from omni.jepsen import nemesis as nem
from omni.jepsen.cluster import Cluster
from omni.jepsen.netfilter import Firewall
from omni.jepsen.workload import Probe


def _minority_with_leader(pids, leader, rng):
    other = rng.choice([p for p in pids if p != leader])
    minority = [leader, other]
    return nem.Plan("minority-with-leader", f"{minority} cut from the rest",
                    [nem.between(minority, [p for p in pids if p not in minority])])


def _majority_with_leader(pids, leader, rng):
    minority = rng.sample([p for p in pids if p != leader], len(pids) // 2)
    return nem.Plan("majority-with-leader", f"{minority} cut from the rest",
                    [nem.between(minority, [p for p in pids if p not in minority])])


#: name -> (nodes, how to inject: a process fault name or a partition plan function)
SCENARIOS = {
    "kill-leader": (3, "kill-leader"),
    "pause-leader": (3, "pause-leader"),
    "isolate-leader": (3, nem.isolate_leader),
    "minority-with-leader": (5, _minority_with_leader),
    "majority-with-leader": (5, _majority_with_leader),
    "quorum-loss": (5, nem.quorum_loss),
    "constrained": (5, nem.constrained),
    "chained": (3, nem.chained),
}


def _wait_first_ok(probe: Probe, since: float, limit: float) -> float | None:
    end = since + limit
    while time.monotonic() < end:
        got = probe.first_ok(since)
        if got is not None:
            return got
        time.sleep(0.05)
    return probe.first_ok(since)


def _healthy(cluster: Cluster, probe: Probe, limit: float) -> int:
    cluster.leader(deadline=limit)
    if _wait_first_ok(probe, time.monotonic(), limit) is None:
        raise TimeoutError("the cluster did not accept a write after healing")
    time.sleep(3 * cluster.election_timeout)  # let followers settle before the next cut
    return cluster.leader(deadline=limit)


def _one_run(name, how, cluster, nemesis, probe, limit, rng) -> dict:
    leader = _healthy(cluster, probe, limit)
    if isinstance(how, str):
        fault = nemesis.inject(how)
    else:
        fault = nemesis.partition(how(cluster.pids, leader, rng))
    recovery = _wait_first_ok(probe, fault.injected_at, limit)
    leader_during = cluster.current_leader()
    nemesis.heal(fault)
    after_heal = _wait_first_ok(probe, fault.healed_at, limit)
    et = cluster.election_timeout
    return {"scenario": name, "nodes": len(cluster.pids), "detail": fault.detail, "leader_before": leader,
            "leader_during": leader_during, "recovery_s": recovery,
            "recovery_et": None if recovery is None else recovery / et,
            "after_heal_s": after_heal, "held_s": fault.healed_at - fault.injected_at}


class Harness:
    """One cluster with its nemesis and probes; replaced by a fresh one when a fault leaves it wedged."""

    def __init__(self, nodes, args, firewall, rng):
        self.cluster = Cluster(Path(tempfile.mkdtemp(prefix="omni-recovery-")), nodes, tick_ms=args.tick_ms,
                               election_ticks=args.election_ticks)
        self.cluster.start()
        self.cluster.leader(deadline=args.limit * 4)
        self.nemesis = nem.Nemesis(self.cluster, firewall, rng)
        self.probe = Probe(self.cluster.endpoints(), per_node=args.probes, timeout=0.6, pause=0.01).start()

    def close(self, keep: bool = False) -> None:
        self.probe.stop()
        self.cluster.stop()
        if not keep:
            shutil.rmtree(self.cluster.root, ignore_errors=True)


def run_group(names, nodes, args, firewall, rng) -> list[dict]:
    rows, h = [], Harness(nodes, args, firewall, rng)
    try:
        for name in names:
            for i in range(args.runs):
                try:
                    row = _one_run(name, SCENARIOS[name][1], h.cluster, h.nemesis, h.probe, args.limit, rng)
                except TimeoutError as exc:  # the previous fault left the cluster unable to write
                    row = {"scenario": name, "nodes": nodes, "detail": f"not run: {exc}", "recovery_s": None,
                           "recovery_et": None, "after_heal_s": None}
                row["run"] = i + 1
                h.nemesis.heal_all()
                row["wedged"] = row["after_heal_s"] is None
                rows.append(row)
                print(f"  {name:22} run {i + 1}: {_fmt(row['recovery_s'], row['recovery_et'])}"
                      f"  after heal {_fmt(row['after_heal_s'])}  ({row['detail']})", flush=True)
                if row["wedged"]:
                    print(f"  (no write succeeded after the heal: cluster kept in {h.cluster.root}, "
                          f"starting a fresh one)", flush=True)
                    h.close(keep=True)
                    h = Harness(nodes, args, firewall, rng)
    finally:
        h.close()
    return rows


def _fmt(seconds, et=None) -> str:
    if seconds is None:
        return "none"
    return f"{seconds:.2f}s" + ("" if et is None else f" ({et:.1f} ET)")


def table(rows: list[dict], et: float) -> str:
    lines = ["| scenario | nodes | runs | recovery min / median / max (s) | median (ET) | after heal median (s) |",
             "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["scenario"] for r in rows):
        group = [r for r in rows if r["scenario"] == name]
        got = [r["recovery_s"] for r in group if r["recovery_s"] is not None]
        heal = [r["after_heal_s"] for r in group if r["after_heal_s"] is not None]
        rec = f"{min(got):.2f} / {statistics.median(got):.2f} / {max(got):.2f}" if got else "none"
        med = f"{statistics.median(got) / et:.1f}" if got else "-"
        wedged = sum(1 for r in group if r.get("wedged"))
        missing = f" ({len(group) - len(got)} never, {wedged} wedged)" if len(got) < len(group) else ""
        heal_med = f"{statistics.median(heal):.2f}" if heal else "none"
        lines.append(f"| {name} | {group[0]['nodes']} | {len(group)} | {rec}{missing} | {med} | {heal_med} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tick-ms", type=float, default=10.0)
    parser.add_argument("--election-ticks", type=int, default=20)
    parser.add_argument("--probes", type=int, default=4, help="probe threads per node")
    parser.add_argument("--limit", type=float, default=20.0, help="longest wait for a write, seconds")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/recovery_results.json"))
    args = parser.parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    rng = random.Random(args.seed)
    et = args.tick_ms * args.election_ticks / 1000
    rows = []
    with Firewall() as firewall:
        for nodes in sorted({SCENARIOS[n][0] for n in names}):
            group = [n for n in names if SCENARIOS[n][0] == nodes]
            print(f"{nodes} nodes: {', '.join(group)}", flush=True)
            rows += run_group(group, nodes, args, firewall, rng)
    meta = {"tick_ms": args.tick_ms, "election_ticks": args.election_ticks, "election_timeout_s": et,
            "runs": args.runs, "probes_per_node": args.probes, "load_average": os.getloadavg(),
            "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"\nrecovery = seconds from the full fault to the first successful write called after it; "
          f"ET = {et * 1000:.0f} ms; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(table(rows, et))
    print(f"(raw results in {args.out})")


if __name__ == "__main__":
    main()
