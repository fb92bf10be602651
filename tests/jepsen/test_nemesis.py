"""Nemesis partition plans (their link shapes) and the iptables firewall on real loopback sockets."""
import random
import socket
import subprocess
import sys

import pytest
from omni.jepsen import nemesis as nem
from omni.jepsen.netfilter import PREFIX, Firewall, _chains, _run, sweep

FIVE, THREE = (1, 2, 3, 4, 5), (1, 2, 3)


def linked(pids, cuts):
    """Undirected pairs still connected both ways."""
    return {frozenset((a, b)) for a in pids for b in pids if a < b and (a, b) not in cuts and (b, a) not in cuts}


def neighbours(pids, cuts, p):
    return {q for q in pids if q != p and frozenset((p, q)) in linked(pids, cuts)}


def plans(fn, pids, seeds=20):
    for seed in range(seeds):
        leader = random.Random(seed).choice(pids)
        yield leader, fn(pids, leader, random.Random(seed))


def test_halves_cut_a_minority_from_a_majority_both_ways():
    for _, plan in plans(nem.halves, FIVE):
        cuts = plan.stages[-1]
        assert all((b, a) in cuts for a, b in cuts)
        groups = {frozenset({p} | neighbours(FIVE, cuts, p)) for p in FIVE}
        assert sorted(len(g) for g in groups) == [2, 3]


def test_isolate_leader_leaves_the_others_connected():
    for leader, plan in plans(nem.isolate_leader, FIVE):
        cuts = plan.stages[-1]
        assert neighbours(FIVE, cuts, leader) == set()
        for p in FIVE:
            if p != leader:
                assert neighbours(FIVE, cuts, p) == set(FIVE) - {p, leader}


def test_ring_gives_every_node_a_different_majority():
    for _, plan in plans(nem.ring, FIVE):
        cuts = plan.stages[-1]
        views = [frozenset({p} | neighbours(FIVE, cuts, p)) for p in FIVE]
        assert all(len(v) == 3 for v in views)
        assert len(set(views)) == 5
    for _, plan in plans(nem.ring, THREE):  # a 3-ring is complete, so a line: one link cut
        assert len(linked(THREE, plan.stages[-1])) == 2


def test_bridge_connects_two_halves_through_one_node():
    for _, plan in plans(nem.bridge, FIVE):
        cuts = plan.stages[-1]
        full = [p for p in FIVE if neighbours(FIVE, cuts, p) == set(FIVE) - {p}]
        assert len(full) == 1
        rest = [p for p in FIVE if p != full[0]]
        assert sorted(len(neighbours(FIVE, cuts, p)) for p in rest) == [2, 2, 2, 2]


def test_oneway_leader_cuts_only_what_the_leader_sends():
    for leader, plan in plans(nem.oneway_leader, FIVE):
        cuts = plan.stages[-1]
        assert cuts == {(leader, p) for p in FIVE if p != leader}


def test_quorum_loss_keeps_one_follower_linked_to_everyone():
    for leader, plan in plans(nem.quorum_loss, FIVE):
        cuts = plan.stages[-1]
        hubs = [p for p in FIVE if neighbours(FIVE, cuts, p) == set(FIVE) - {p}]
        assert len(hubs) == 1 and hubs[0] != leader
        assert neighbours(FIVE, cuts, leader) == set(hubs)
        for p in FIVE:
            if p not in hubs:
                assert neighbours(FIVE, cuts, p) == set(hubs)


def test_constrained_first_lags_one_follower_then_isolates_the_leader():
    for leader, plan in plans(nem.constrained, FIVE):
        first, full = plan.stages
        assert len(linked(FIVE, first)) == 9  # only leader-A is cut
        (a,) = set(FIVE) - {leader} - neighbours(FIVE, first, leader)
        assert neighbours(FIVE, full, leader) == set()
        assert neighbours(FIVE, full, a) == set(FIVE) - {a, leader}
        for p in set(FIVE) - {a, leader}:
            assert neighbours(FIVE, full, p) == {a}
        assert plan.stage_gap > 0


def test_chained_cuts_only_the_leader_to_one_follower_link():
    for leader, plan in plans(nem.chained, THREE):
        cuts = plan.stages[-1]
        assert len(linked(THREE, cuts)) == 2
        assert len(neighbours(THREE, cuts, leader)) == 1


def test_nemesis_names_are_checked():
    assert "quorum-loss" in nem.parse("all") and "kill" in nem.parse("all")
    assert nem.parse("kill, pause,partition") == ["kill", "pause", "partition"]
    with pytest.raises(ValueError):
        nem.parse("kill,meteor")


# --- the firewall, on real sockets ---

def _connects(src: str, dst: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        s.bind((src, 0))
        try:
            s.connect((dst, port))
            return True
        except OSError:
            return False


def test_firewall_blocks_one_link_only_and_cleans_up():
    server = socket.socket()
    server.bind(("127.0.0.21", 0))
    server.listen(16)
    port = server.getsockname()[1]
    try:
        with Firewall() as fw:
            assert fw.chain in _chains()
            assert _connects("127.0.0.22", "127.0.0.21", port)
            fw.block("127.0.0.22", "127.0.0.21", port)
            assert not _connects("127.0.0.22", "127.0.0.21", port)
            assert _connects("127.0.0.23", "127.0.0.21", port)   # another node
            assert _connects("127.0.0.1", "127.0.0.21", port)    # a client
            assert len(fw.rules()) == 3  # the chain itself and two rules
            fw.heal()
            assert _connects("127.0.0.22", "127.0.0.21", port)
        assert fw.chain not in _chains()
        assert f"-j {fw.chain}" not in _run("-S", "INPUT").stdout
    finally:
        server.close()


def test_chains_left_by_dead_processes_are_swept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    chain = f"{PREFIX}{int(dead.stdout)}"
    _run("-N", chain)
    _run("-I", "INPUT", "-i", "lo", "-j", chain)
    assert chain in sweep()
    assert chain not in _chains()
    assert f"-j {chain}" not in _run("-S", "INPUT").stdout
