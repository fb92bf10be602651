"""The harness end to end on real node processes (kept short for CI: about a minute in all).

1. An iptables partition is real: isolating the leader makes the others elect a new one, and after the
   heal the old leader follows the new one.
2. A short torture run with a kill, a pause and a partition: faults were really injected, the history is
   linearizable, no acknowledged write was lost, the cluster recovered and every node stayed up.
3. A leader cut off from the others, which may still believe it leads, never answers a linearizable read
   with a value the new majority has overwritten (its ReadIndex round cannot reach a quorum).
"""
import random
import time

from omni.client import Client, OmniError
from omni.jepsen import nemesis as nem
from omni.jepsen.cluster import Cluster
from omni.jepsen.netfilter import Firewall
from omni.jepsen.runner import Config, run


def _wait(predicate, deadline=60.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return None


def test_isolating_the_leader_really_cuts_it_off(tmp_path):
    with Firewall() as fw, Cluster(tmp_path, 3) as cluster:
        cluster.start()
        old = cluster.leader()
        nemesis = nem.Nemesis(cluster, fw, random.Random(1))
        fault = nemesis.partition(nem.isolate_leader(cluster.pids, old, random.Random(1)))
        assert len(fw.rules()) > 1

        def new_leader():
            views = [cluster.status(p) for p in cluster.pids if p != old]
            leaders = {v["leader"] for v in views if v}
            return len(leaders) == 1 and None not in views and leaders != {old} and leaders.pop()

        elected = _wait(new_leader)
        assert elected and elected != old, cluster.tail_logs()
        nemesis.heal(fault)
        assert _wait(lambda: (s := cluster.status(old)) is not None and s["leader"] not in (0, old)), \
            cluster.tail_logs()


def test_short_torture_run_finds_no_anomaly(tmp_path):
    config = Config(time=25, nodes=3, clients=4, keys=6, nemeses=("kill", "pause", "partition"), seed=7,
                    quiet=(1.5, 2.5), hold=(3.0, 4.0), work_dir=tmp_path, check_timeout=120)
    report = run(config, log=lambda line: None)
    summary = report.summary()
    names = [f.name for f in report.faults]
    assert "kill" in names and "pause" in names, summary
    assert set(names) & set(nem.GENERIC_PARTITIONS), summary
    assert report.verdict.result == "ok", summary
    assert report.anomalies == 0, summary
    assert report.lost == [] and report.set_acked > 0, summary
    assert report.final_errors == [] and report.crashes == [], summary
    assert len(report.history.ops) > 100, summary
    assert "anomalies=0" in summary and "acknowledged writes lost=0" in summary


def test_isolated_old_leader_never_answers_a_stale_linearizable_read(tmp_path):
    with Firewall() as fw, Cluster(tmp_path, 3) as cluster:
        cluster.start()
        old = cluster.leader()
        with cluster.client() as c:
            c.put("k", "before")
        nemesis = nem.Nemesis(cluster, fw, random.Random(1))
        fault = nemesis.partition(nem.isolate_leader(cluster.pids, old, random.Random(1)))
        majority = [cluster.endpoint(p) for p in cluster.pids if p != old]
        with Client(majority, timeout=1.0, retries=None, deadline=60.0) as c:
            c.put("k", "after")  # the majority elects a new leader and decides it
        answers = []
        with Client([cluster.endpoint(old)], timeout=2.0, retries=0) as lone:
            for _ in range(3):
                try:
                    answers.append(lone.get("k")["value"])
                except OmniError as exc:
                    answers.append(exc.code)
        assert "before" not in answers, (answers, cluster.tail_logs())
        nemesis.heal(fault)

        def old_node_reads_the_new_value():
            try:
                with Client([cluster.endpoint(old)], timeout=1.0, retries=0) as again:
                    return again.get("k")["value"] == "after"
            except OmniError:
                return False

        assert _wait(old_node_reads_the_new_value), cluster.tail_logs()
