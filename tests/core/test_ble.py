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


def test_a_start_round_that_heard_nobody_costs_no_ballot_and_no_false_leader():
    # On real sockets the first round's requests are sent before any connection is up and are lost. A node
    # that has heard nobody since it started has no evidence about anyone: it must neither claim to lead
    # (every node would Prepare with its own ballot) nor turn unhappy (the others would read that and take
    # over with n=2). Once the links are up, the highest pid leads with its first ballot.
    net = BleNet([1, 2, 3])
    net.cut = {(a, b) for a in net.ble for b in net.ble if a != b}
    net.round()
    net.round()
    assert net.led == {} and all(b.happy for b in net.ble.values())
    net.cut = set()
    net.round()  # its requests went out under the cut: one more round that heard nobody
    assert net.led == {}
    net.round()
    assert net.leaders() == {3} and set(net.led) == {3}
    assert net.ble[3].ballot == Ballot(1, 0, 3)
    for _ in range(3):
        net.round()
    assert set(net.led) == {3} and all(b.leader == Ballot(1, 0, 3) for b in net.ble.values())


def test_start_up_grace_ends_at_the_first_reply():
    # The grace covers only rounds that heard nobody before the first reply: a node that heard a peer once
    # and then loses everyone turns unhappy as the paper's rules say.
    net = BleNet([1, 2, 3])
    net.round()
    assert net.leaders() == {3}
    net.isolate(3)
    net.round()
    net.round()
    assert not net.ble[3].happy


def test_single_node_cluster_leads_at_its_first_round():
    net = BleNet([4])
    net.round()
    assert net.leaders() == {4} and net.led == {4: Ballot(1, 0, 4)}
