"""Linearizable reads without a log entry (ReadIndex, paxos/reads.py), one claim per test."""
import pytest

from omni.paxos import (
    Accepted, Ballot, Decide, Envelope, PaxosConfig, Prepare, ProposalRejected, ReadAck, ReadProbe, ReadRejected,
    Ready, SequencePaxos,
)

from omni.paxos.reads import GIVE_UP_RESENDS

from .net import Net

B1 = Ballot(1, 0, 3)


class Held:
    """Lose nothing, deliver later: messages of ``kind`` are kept back until `release`."""

    def __init__(self, net, kind):
        self.net, self.envs = net, []
        net.block = lambda env: isinstance(env.msg, kind) and (self.envs.append(env) or True)

    def release(self, envs=None):
        envs = self.envs if envs is None else envs
        self.envs = [e for e in self.envs if e not in envs]
        for env in envs:
            self.net.nodes[env.dst].handle(env)
        self.net.pump()


def steady(pids=(1, 2, 3), leader=3, **config):
    net = Net(pids, **config)
    net.lead(leader)
    return net


def probes(net, src):
    return [e for e in net.delivered if isinstance(e.msg, ReadProbe) and e.src == src]


def test_read_is_confirmed_only_after_a_quorum_acks():
    net = steady((1, 2, 3, 4, 5), leader=5)
    net.propose(5, "a")
    acks = Held(net, ReadAck)
    net.nodes[5].read(1)
    net.pump()
    assert len(acks.envs) == 4 and net.reads[5] == []
    acks.release([e for e in acks.envs if e.src == 1])
    assert net.reads[5] == [], "the leader and one follower are 2 of 5: no quorum"
    acks.release([e for e in acks.envs if e.src == 2])
    assert net.reads[5] == [(1, 1)]
    acks.release()
    assert net.reads[5] == [(1, 1)], "late acks confirm nothing twice"


def test_read_index_covers_every_entry_decided_before_it():
    net = steady()
    net.block = lambda env: isinstance(env.msg, Decide)
    net.propose(3, "a", "b")  # decided at 3 only; 1 and 2 have accepted them but never heard they are
    net.down.add(3)
    net.block = lambda env: isinstance(env.msg, Accepted)  # the new leader can decide nothing
    net.lead(1, n=2)
    decided_anywhere = max(sp.decided_idx for sp in net.nodes.values())
    assert net.nodes[1].decided_idx < decided_anywhere == 2
    net.nodes[1].read(7)
    net.pump()
    (token, idx), = net.reads[1]
    assert token == 7 and idx >= decided_anywhere, "entries adopted in the Prepare phase count"
    net.nodes[1].propose(["c"])  # accepted, never decided
    net.nodes[1].read(8)
    net.pump()
    assert net.reads[1][-1] == (8, 2), "an entry this leader has not decided completed no write: not waited for"


def test_follower_does_not_ack_a_probe_of_another_ballot():
    net = steady()
    follower = net.nodes[1]
    for src, probe in [(2, ReadProbe(Ballot(2, 0, 2), 1)),  # higher than promised
                       (3, ReadProbe(Ballot(0, 5, 3), 1)),  # lower than promised
                       (2, ReadProbe(B1, 1)),  # the promised ballot, but not from its leader
                       (3, ReadProbe(("junk",), 1))]:
        follower.handle(Envelope(src, 1, 1, probe))
    ready = follower.take_ready()
    assert not ready.early and not ready.messages
    assert follower.stats["dropped_read_probe"] == 4
    follower.handle(Envelope(3, 1, 1, ReadProbe(B1, 9)))
    assert [e.msg for e in follower.take_ready().early] == [ReadAck(B1, 9)]


def test_probes_and_acks_vouch_for_no_write_and_go_out_early():
    net = steady()
    net.nodes[3].read(1)
    ready = net.nodes[3].take_ready()
    assert {type(e.msg) for e in ready.early} == {ReadProbe} and not ready.messages and not ready.writes


def test_reads_registered_during_a_round_wait_for_the_next_round():
    net = steady()
    leader = net.nodes[3]
    acks = Held(net, ReadAck)
    leader.read(1)
    net.pump()
    first_round = {e.msg.round for e in acks.envs}
    net.propose(3, "a")
    leader.read(2)  # registered while the first round is in flight
    net.pump()
    assert len(probes(net, 3)) == 2, "no new round while one is in flight"
    acks.release()
    assert net.reads[3] == [(1, 0)], "the first round confirms only the read registered before it"
    second = {e.msg.round for e in acks.envs}
    assert len(second) == 1 and min(second) > max(first_round), "the waiting read started the next round"
    acks.release()
    assert net.reads[3] == [(1, 0), (2, 1)]


def test_many_reads_share_one_round():
    net = steady()
    acks = Held(net, ReadAck)
    net.nodes[3].read(0)
    for token in range(1, 50):
        net.nodes[3].read(token)
    net.pump()
    acks.release()
    acks.release()
    assert [t for t, _ in net.reads[3]] == list(range(50))
    assert len(probes(net, 3)) == 4, "two rounds of two probes: one for the first read, one for the rest"


def test_lost_probe_is_resent_after_resend_ticks():
    net = steady(resend_ticks=5)
    net.block = lambda env: isinstance(env.msg, ReadProbe)
    net.nodes[3].read(1)
    net.pump()
    net.tick(4)
    assert len(probes(net, 3)) == 0 and net.reads[3] == []
    sent = len(net.delivered)
    net.block = lambda env: False
    net.tick(1)
    rounds = {e.msg.round for e in net.delivered[sent:] if isinstance(e.msg, ReadProbe)}
    assert rounds == {2}, "a new round (a new number) replaces the lost one"
    assert net.reads[3] == [(1, 0)]


def test_an_ack_of_an_older_round_confirms_only_reads_registered_before_that_round():
    net = steady(resend_ticks=5)
    leader = net.nodes[3]
    acks = Held(net, ReadAck)
    leader.read(1)
    net.pump()
    round_1 = list(acks.envs)
    net.tick(5)  # round 2: a resend, no new read
    leader.read(2)  # registered after rounds 1 and 2 started
    net.tick(5)  # round 3 carries read 2
    later = [e for e in acks.envs if e not in round_1]
    assert {e.msg.round for e in round_1} == {1} and {e.msg.round for e in later} == {2, 3}
    acks.release(round_1)
    assert net.reads[3] == [(1, 0)], "a round-1 ack speaks for read 1, registered before round 1"
    acks.release([e for e in later if e.msg.round == 2])
    assert net.reads[3] == [(1, 0)], "round 2 started before read 2 was registered: it cannot confirm it"
    leader.handle(Envelope(1, 3, 1, ReadAck(Ballot(0, 9, 3), 3)))  # the right round of another ballot
    net.pump()
    assert net.reads[3] == [(1, 0)] and leader.stats["dropped_stale_read_ack"] >= 1
    acks.release([e for e in later if e.msg.round == 3][:1])
    assert net.reads[3] == [(1, 0), (2, 0)]


def test_a_round_trip_longer_than_the_resend_period_still_confirms_reads():
    """Every ack arrives only after the next round was sent: the acks of older rounds must still count."""
    net = steady(resend_ticks=5)
    acks = Held(net, ReadAck)
    net.nodes[3].read(1)
    net.pump()
    for _ in range(4):
        oldest = [e for e in acks.envs if e.msg.round == min(x.msg.round for x in acks.envs)]
        net.tick(5)  # a newer round goes out before the older acks come back
        acks.release(oldest)
    assert net.reads[3] == [(1, 0)] and net.nodes[3].pending_reads() == 0


def test_a_leader_that_hears_from_no_quorum_fails_its_reads_after_giving_up():
    """A leader cut off from everyone may still believe it leads: its reads fail, they are not kept for ever."""
    net = steady(resend_ticks=5)
    net.block = lambda env: 3 in (env.src, env.dst)
    net.nodes[3].read(1)
    net.tick(GIVE_UP_RESENDS * 5 - 1)
    assert net.failed_reads[3] == [] and net.nodes[3].pending_reads() == 1
    net.tick(1)
    assert net.failed_reads[3] == [1] and net.nodes[3].pending_reads() == 0 and net.reads[3] == []
    assert net.nodes[3].is_accepting_leader(), "nothing deposed it: it failed the read because it waited too long"


def _higher_prepare(net):
    net.nodes[3].handle(Envelope(1, 3, 1, Prepare(Ballot(2, 0, 1), 0, Ballot(), 0)))


def _new_round_of_its_own(net):
    net.nodes[3].handle_leader(Ballot(2, 0, 3))


def _stopsign_decided(net):
    net.nodes[3].reconfigure((1, 2, 3, 4))


@pytest.mark.parametrize("event", [_higher_prepare, _new_round_of_its_own, _stopsign_decided],
                         ids=lambda f: f.__name__.strip("_"))
def test_pending_reads_fail_when_leadership_is_lost(event):
    net = steady()
    acks = Held(net, ReadAck)
    net.nodes[3].read(1)
    net.nodes[3].read(2)  # waits for the next round
    net.pump()
    event(net)
    net.block = lambda env: isinstance(env.msg, ReadAck)
    net.pump()
    assert sorted(net.failed_reads[3]) == [1, 2]
    acks.release()
    assert net.reads[3] == [], "acks of the lost ballot confirm nothing"
    assert net.nodes[3].pending_reads() == 0


def test_deposed_leader_never_confirms_a_read():
    net = steady(resend_ticks=5)
    net.propose(3, "a")
    net.block = lambda env: 3 in (env.src, env.dst)  # the leader is cut off, and does not know it
    net.lead(1, n=2)
    net.propose(1, "b", "c")
    assert net.nodes[1].decided_idx == 3 and net.nodes[3].is_accepting_leader()
    net.nodes[3].read(9)  # its log still ends at 1: a confirmation would serve a stale state
    net.tick(7)
    # Heal the read traffic first: its probes meet followers of ballot 2, and it hears of no Prepare yet.
    net.block = lambda env: 3 in (env.src, env.dst) and not isinstance(env.msg, (ReadProbe, ReadAck))
    net.tick(12)
    assert len(probes(net, 3)) >= 2 and net.reads[3] == [] and net.nodes[3].is_accepting_leader()
    net.block = lambda env: False
    net.tick(10)
    assert net.reads[3] == [] and net.failed_reads[3] == [9]
    assert not net.nodes[3].is_accepting_leader() and net.applied[3] == ["a", "b", "c"]


def test_read_at_a_follower_is_rejected():
    net = steady()
    with pytest.raises(ReadRejected, match="not the leader"):
        net.nodes[1].read(1)
    assert issubclass(ReadRejected, ProposalRejected)


def test_read_is_rejected_before_the_accept_phase_and_while_reconfiguring():
    net = Net()
    with pytest.raises(ReadRejected):
        net.nodes[3].read(1)  # no leader yet
    net.block = lambda env: isinstance(env.msg, Prepare)
    net.lead(3)
    with pytest.raises(ReadRejected):
        net.nodes[3].read(1)  # leader, still preparing
    net.block = lambda env: isinstance(env.msg, Accepted)  # the StopSign below stays undecided
    net.tick(20)  # the leader resends its Prepare
    assert net.nodes[3].is_accepting_leader()
    net.nodes[3].reconfigure((1, 2))
    net.pump()
    with pytest.raises(ReadRejected, match="reconfigured"):
        net.nodes[3].read(2)


def test_a_token_still_pending_is_refused_locally():
    net = steady()
    net.block = lambda env: isinstance(env.msg, ReadAck)
    net.nodes[3].read(1)
    with pytest.raises(ValueError):
        net.nodes[3].read(1)


def test_single_node_confirms_at_once():
    sp = SequencePaxos(PaxosConfig(7, (7,)))
    sp.handle_leader(Ballot(1, 0, 7))
    sp.propose(["x"])
    for env in sp.take_ready().messages:  # its own Accepted, after the (here imaginary) fsync: decided
        sp.handle(env)
    sp.take_ready()
    sp.read(1)
    ready = sp.take_ready()
    assert ready.reads == [(1, 1)] and not ready.early


def test_reads_alone_make_a_ready_worth_taking():
    assert Ready(reads=[(1, 0)]) and Ready(failed_reads=[1]) and not Ready()
