"""Ballot Leader Election claims: who leads, when a takeover happens, and what is ignored."""
from omni.paxos import Ballot, BallotLeaderElection, Envelope, HeartbeatReply, HeartbeatRequest


class BleNet:
    """BLE nodes on a network whose links can be cut; one `round` is one election timeout."""

    def __init__(self, pids, priorities=None, ticks=3):
        self.ble = {p: BallotLeaderElection(p, list(pids), priority=(priorities or {}).get(p, 0),
                                            election_ticks=ticks) for p in pids}
        self.cut: set = set()
        self.down: set = set()
        self.ticks = ticks
        self.led: dict = {}

    def round(self):
        for _ in range(self.ticks):
            for pid, ble in self.ble.items():
                if pid in self.down:
                    continue
                ballot = ble.tick()
                if ballot is not None:
                    self.led[pid] = ballot
            self._flush()

    def _flush(self):
        while True:
            out = [e for p, b in self.ble.items() if p not in self.down for e in b.take_outgoing()]
            out = [e for e in out if e.dst not in self.down and (e.src, e.dst) not in self.cut]
            if not out:
                return
            for env in out:
                self.ble[env.dst].handle(env)

    def leaders(self):
        return {p for p, b in self.ble.items() if p not in self.down and b.is_leader}

    def isolate(self, pid):
        for other in self.ble:
            self.cut |= {(pid, other), (other, pid)}


def test_highest_pid_leads_after_the_first_round_without_a_ballot_increase():
    net = BleNet([5, 6, 7])
    net.round()
    assert net.leaders() == {7}
    assert net.ble[7].ballot == Ballot(1, 0, 7)
    assert all(b.leader == Ballot(1, 0, 7) for b in net.ble.values())


def test_priority_outranks_pid():
    net = BleNet([1, 2, 3], priorities={1: 10})
    net.round()
    assert net.leaders() == {1}


def test_leader_crash_leaves_one_new_leader_within_four_election_timeouts():
    # The round under way at the crash already heard the leader; the next notices; in the third both
    # survivors take over (distinct ballots); by the fourth they agree on the higher one.
    net = BleNet([1, 2, 3])
    net.round()
    net.down.add(3)
    for _ in range(4):
        net.round()
    assert net.leaders() == {2}
    assert net.ble[2].ballot == Ballot(2, 0, 2) and net.ble[1].leader == Ballot(2, 0, 2)


def test_node_without_a_quorum_never_takes_over():
    net = BleNet([1, 2, 3])
    net.round()
    net.isolate(1)
    for _ in range(5):
        net.round()
    assert not net.ble[1].is_leader and net.ble[1].stats["takeovers"] == 0


def test_no_takeover_while_a_peer_is_happy_chained():
    net = BleNet([1, 2, 3])
    net.round()
    net.cut |= {(3, 1), (1, 3)}  # leader 3 loses node 1; node 2 still hears both and is happy
    for _ in range(10):
        net.round()
    assert net.leaders() == {3} and net.ble[1].stats["takeovers"] == 0


def test_stale_and_foreign_replies_are_dropped_and_counted():
    ble = BallotLeaderElection(1, [1, 2, 3], election_ticks=1)
    ble.handle(Envelope(2, 1, 1, HeartbeatReply(99, Ballot(1, 0, 2), Ballot(1, 0, 2), True)))
    ble.handle(Envelope(2, 1, 2, HeartbeatRequest(1)))
    ble.handle(Envelope(8, 1, 1, HeartbeatRequest(1)))
    ble.handle(Envelope(2, 1, 1, HeartbeatReply(1, Ballot(1, 0, 3), Ballot(1, 0, 3), True)))  # forged pid
    assert ble.stats["dropped_stale_reply"] == 2 and ble.stats["dropped_foreign"] == 2
    assert ble.replies == []


def test_recovered_node_starts_at_round_zero_following_its_promise():
    ble = BallotLeaderElection(2, [1, 2, 3], recovered_promise=Ballot(4, 0, 2))
    assert ble.ballot == Ballot(0, 0, 2) and ble.leader == Ballot(4, 0, 2) and not ble.is_leader


def test_leader_learns_a_higher_promise_from_sequence_paxos():
    net = BleNet([1, 2, 3])
    net.round()
    net.ble[1].observe_promise(Ballot(9, 0, 2))
    net.round()
    assert net.ble[1].leader == Ballot(9, 0, 2)


def test_leader_outbids_a_dead_ballot_a_restarted_peer_still_follows():
    net = BleNet([1, 2, 3])
    net.round()
    # Node 1 crashed while leading with (7,0,1) that no one else saw; it restarts promised to it.
    net.ble[1] = BallotLeaderElection(1, [1, 2, 3], election_ticks=net.ticks, recovered_promise=Ballot(7, 0, 1))
    net.round()
    net.round()
    assert net.ble[3].is_leader and net.ble[3].ballot > Ballot(7, 0, 1)
    assert net.ble[3].stats["outbid_stale_promise"] == 1
