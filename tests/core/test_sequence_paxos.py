"""Sequence Paxos claims, one test each: message guards, durability ordering, sync, compaction, StopSign."""
import pytest

from omni.paxos import (
    AcceptDecide, Accepted, AcceptSync, Ballot, Compaction, CompactionError, Decide, Envelope, LogSync,
    NotAccepted, PaxosConfig, Phase, Prepare, PrepareReq, Promise, ProposalForward, ProposalRejected, Role,
    SequenceNumber, SequencePaxos, StopSign,
)
from omni.paxos.storage import AppendOnPrefix, SetDecidedIdx, SetPromise

from .net import Net


class ListSnapshotter:
    def create(self, entries):
        return tuple(entries)

    def merge(self, base, delta):
        return (base or ()) + tuple(delta)


def sent(net, kind):
    return [e for e in net.delivered if isinstance(e.msg, kind)]


def steady(pids=(1, 2, 3), leader=3, **config):
    net = Net(pids, **config)
    net.lead(leader)
    return net


# ---- election and replication ------------------------------------------------------------------------

def test_entries_proposed_at_leader_are_decided_on_every_node():
    net = steady()
    net.propose(3, "a", "b")
    net.propose(3, "c")
    assert all(net.applied[p] == ["a", "b", "c"] for p in (1, 2, 3))


def test_proposal_at_follower_is_forwarded_and_decided():
    net = steady()
    net.propose(1, "x")
    assert sent(net, ProposalForward)
    assert net.applied[2] == ["x"]


def test_proposals_before_any_leader_wait_and_are_decided_once_one_exists():
    net = Net()
    net.nodes[1].propose(["early"])
    net.pump()
    assert net.applied[1] == []
    net.lead(2)
    assert all(net.applied[p] == ["early"] for p in (1, 2, 3))


def test_duplicated_forward_is_decided_once():
    net = steady()
    net.block = lambda env: False
    fwd = Envelope(1, 3, 1, ProposalForward(("once",), (0, 1)))
    net.nodes[3].handle(fwd)
    net.nodes[3].handle(fwd)
    net.pump()
    assert net.applied[3] == ["once"]
    assert net.nodes[3].stats["dropped_duplicate_forward"] == 1


def test_new_leader_adopts_most_up_to_date_promised_log():
    net = steady()
    net.propose(3, "a")
    # Entry "b" reaches only node 2 before leader 3 dies: it is accepted there, not decided.
    net.block = lambda env: env.dst == 1 or (env.src == 2 and env.dst == 3)
    net.propose(3, "b")
    net.down.add(3)
    net.block = lambda env: False
    assert net.nodes[2].log.accepted_idx == 2 and net.nodes[1].log.accepted_idx == 1
    net.lead(1, n=2)  # node 1 has the stale log; it must adopt node 2's
    net.propose(1, "c")
    assert net.applied[1] == ["a", "b", "c"] and net.applied[2] == ["a", "b", "c"]


# ---- durability ordering -----------------------------------------------------------------------------

def test_promise_is_sent_only_with_the_promise_write_in_the_same_ready():
    sp = SequencePaxos(PaxosConfig(1, (1, 2, 3)))
    sp.handle(Envelope(2, 1, 1, Prepare(Ballot(1, 0, 2), 0, Ballot(), 0)))
    ready = sp.take_ready()
    assert ready.writes == [(SetPromise(Ballot(1, 0, 2)),)]
    assert [type(e.msg) for e in ready.messages] == [Promise]


def test_accepted_is_sent_only_with_the_entries_write_in_the_same_ready():
    net = steady()
    follower = net.nodes[1]
    seq = follower.current_seq
    follower.handle(Envelope(3, 1, 1, AcceptDecide(Ballot(1, 0, 3), SequenceNumber(seq.session, seq.counter + 1),
                                                   0, ("e",))))
    ready = follower.take_ready()
    assert ready.writes == [(AppendOnPrefix(0, ("e",)),)]
    assert [e.msg for e in ready.messages] == [Accepted(Ballot(1, 0, 3), 1)]


def test_leader_counts_itself_only_after_its_own_accepted_comes_back():
    net = steady()
    leader = net.nodes[3]
    net.block = lambda env: env.src != env.dst  # followers never answer
    leader.propose(["e"])
    ready = leader.take_ready()
    assert Envelope(3, 3, 1, Accepted(Ballot(1, 0, 3), 1)) in ready.messages
    assert leader.decided_idx == 0
    leader.handle(Envelope(1, 3, 1, Accepted(Ballot(1, 0, 3), 1)))
    assert leader.decided_idx == 0, "one follower is not a quorum without the leader's own fsync"
    leader.handle(Envelope(3, 3, 1, Accepted(Ballot(1, 0, 3), 1)))
    assert leader.decided_idx == 1


def test_leader_replicates_before_its_own_write_but_counts_itself_after_it():
    """AcceptDecide vouches for nothing on the leader's disk, so it goes out before the fsync (early);
    the leader's own Accepted stays behind the write that holds the entries."""
    net = steady()
    leader = net.nodes[3]
    leader.propose(["e"])
    ready = leader.take_ready()
    assert ready.writes == [(AppendOnPrefix(0, ("e",)),)]
    assert {e.dst for e in ready.early if isinstance(e.msg, AcceptDecide)} == {1, 2}
    assert [e for e in ready.messages if e.dst == 3] == [Envelope(3, 3, 1, Accepted(Ballot(1, 0, 3), 1))]
    assert not any(e.dst == 3 for e in ready.early)


def test_prepare_waits_for_the_leaders_own_promise_write():
    """A Prepare relies on the leader's own promise (it counts itself in the prepare quorum), so it is never
    early: otherwise a crash could lose a promise that a quorum was built on."""
    sp = SequencePaxos(PaxosConfig(1, (1, 2, 3)))
    sp.handle_leader(Ballot(1, 0, 1))
    ready = sp.take_ready()
    assert ready.writes == [(SetPromise(Ballot(1, 0, 1)),)]
    assert {e.dst for e in ready.messages if isinstance(e.msg, Prepare)} == {2, 3}
    assert ready.early == []


def test_promises_and_accepteds_are_never_early():
    sp = SequencePaxos(PaxosConfig(1, (1, 2, 3)))
    sp.handle(Envelope(2, 1, 1, Prepare(Ballot(1, 0, 2), 0, Ballot(), 0)))
    assert sp.take_ready().early == []
    net = steady()
    follower = net.nodes[1]
    seq = follower.current_seq
    follower.handle(Envelope(3, 1, 1, AcceptDecide(Ballot(1, 0, 3), SequenceNumber(seq.session, seq.counter + 1),
                                                   0, ("e",))))
    assert follower.take_ready().early == []


def test_decided_index_is_persisted_in_the_ready_that_reports_the_entries():
    net = steady()
    leader = net.nodes[3]
    leader.propose(["e"])
    net.disks[3].write(leader.take_ready().writes)
    leader.handle(Envelope(3, 3, 1, Accepted(Ballot(1, 0, 3), 1)))
    leader.handle(Envelope(1, 3, 1, Accepted(Ballot(1, 0, 3), 1)))
    ready = leader.take_ready()
    assert (SetDecidedIdx(1),) in ready.writes and ready.decided[0].entries == ("e",)


def test_restart_from_storage_enters_recover_and_sends_prepare_req():
    net = steady()
    net.propose(3, "a")
    net.crash_and_restart(1)
    node = net.nodes[1]
    assert node.phase is Phase.RECOVER and node.log.decided_idx == 1
    assert {e.dst for e in node.take_ready().messages if isinstance(e.msg, PrepareReq)} == {2, 3}


def test_restarted_follower_is_resynced_and_reapplies_from_its_storage():
    net = steady()
    net.propose(3, "a", "b")
    net.crash_and_restart(2)
    net.pump()
    net.propose(3, "c")
    assert net.applied[2] == ["a", "b", "c"]


# ---- guards on every handler -------------------------------------------------------------------------

def test_follower_rejects_stale_ballot_with_not_accepted():
    net = steady()
    net.lead(2, n=2)
    follower = net.nodes[1]
    follower.handle(Envelope(3, 1, 1, AcceptDecide(Ballot(1, 0, 3), SequenceNumber(1, 2), 0, ("old",))))
    ready = follower.take_ready()
    assert follower.log.log_len == 0
    assert [e.msg for e in ready.messages] == [NotAccepted(Ballot(2, 0, 2))]


def test_follower_ignores_duplicated_accept_decide():
    net = steady()
    follower, seq = net.nodes[1], net.nodes[1].current_seq
    msg = AcceptDecide(Ballot(1, 0, 3), SequenceNumber(seq.session, seq.counter + 1), 0, ("e",))
    follower.handle(Envelope(3, 1, 1, msg))
    follower.handle(Envelope(3, 1, 1, msg))
    assert follower.log.entries == ["e"]
    assert follower.stats["dropped_duplicate_seq"] == 1


def test_gap_in_sequence_numbers_makes_follower_recover_with_prepare_req():
    net = steady()
    follower, seq = net.nodes[1], net.nodes[1].current_seq
    follower.handle(Envelope(3, 1, 1, AcceptDecide(Ballot(1, 0, 3), SequenceNumber(seq.session, seq.counter + 2),
                                                   0, ("skipped-one",))))
    assert follower.log.log_len == 0 and follower.phase is Phase.RECOVER
    assert [e.msg for e in follower.take_ready().messages] == [PrepareReq(Ballot(1, 0, 3))]


def test_lost_accept_decide_is_repaired_through_resend_and_resync():
    net = steady(resend_ticks=1)
    net.block = lambda env: env.dst == 1 and isinstance(env.msg, (AcceptDecide, Decide))
    net.propose(3, "a")
    net.block = lambda env: False
    assert net.applied[1] == [] and net.applied[2] == ["a"]
    net.nodes[3].tick()  # the leader's idle Decide exposes the gap; node 1 asks to be re-synced
    net.pump()
    assert net.nodes[1].stats["sequence_gaps"] == 1
    assert net.applied[1] == ["a"]


def test_leader_ignores_promise_from_an_older_round():
    net = steady()
    net.lead(3, n=2)
    leader = net.nodes[3]
    leader.handle(Envelope(1, 3, 1, Promise(Ballot(1, 0, 3), Ballot(), 0, 0)))
    assert leader.stats["dropped_stale_promise"] == 1


def test_message_with_unpromised_higher_ballot_gets_prepare_req():
    net = steady()
    follower = net.nodes[1]
    follower.handle(Envelope(2, 1, 1, Decide(Ballot(5, 0, 2), SequenceNumber(1, 1), 0)))
    assert [e.msg for e in follower.take_ready().messages] == [PrepareReq(Ballot(1, 0, 3))]


def test_stale_accept_sync_never_truncates_the_log():
    net = steady()
    net.propose(3, "a", "b")
    follower = net.nodes[1]
    stale = AcceptSync(Ballot(1, 0, 3), SequenceNumber(9, 1), 0, LogSync(0, ()), base=(Ballot(), 0))
    follower.phase = Phase.PREPARE  # even while preparing, a sync computed for another log is refused
    follower.handle(Envelope(3, 1, 1, stale))
    assert follower.log.entries == ["a", "b"]
    assert follower.stats["dropped_stale_accept_sync"] == 1


def test_messages_of_another_configuration_or_sender_are_dropped_and_counted():
    sp = SequencePaxos(PaxosConfig(1, (1, 2, 3)))
    sp.handle(Envelope(2, 1, 7, Prepare(Ballot(1, 0, 2), 0, Ballot(), 0)))
    sp.handle(Envelope(9, 1, 1, Prepare(Ballot(1, 0, 9), 0, Ballot(), 0)))
    sp.handle(Envelope(2, 1, 1, "not a message"))
    assert sp.stats["dropped_foreign"] == 2 and sp.stats["dropped_unknown"] == 1
    assert sp.log.promise == Ballot()


def test_not_accepted_from_higher_round_stops_accepts_to_that_follower():
    net = steady()
    leader = net.nodes[3]
    leader.handle(Envelope(1, 3, 1, NotAccepted(Ballot(4, 0, 2))))
    leader.propose(["e"])
    assert {e.dst for e in leader.take_ready().early if isinstance(e.msg, AcceptDecide)} == {2}


def test_proposals_in_one_batch_share_one_accept_decide_per_follower():
    net = steady()
    leader = net.nodes[3]
    for i in range(100):
        leader.propose([i])
    ready = leader.take_ready()
    batches = [e.msg for e in ready.early if isinstance(e.msg, AcceptDecide)]
    assert len(batches) == 2 and all(len(b.entries) == 100 for b in batches)
    assert len(ready.writes) == 1


def test_followers_batches_and_the_leaders_append_share_one_entries_tuple():
    # The host encodes a tuple once (transport/codec.pack_entries), so the same entries must be the same object.
    net = steady()
    leader = net.nodes[3]
    for i in range(10):
        leader.propose([{"i": i}])
    ready = leader.take_ready()
    (append,), = ready.writes
    batches = [e.msg.entries for e in ready.early if isinstance(e.msg, AcceptDecide)]
    assert len(batches) == 2 and all(b is append.entries for b in batches)


def test_a_follower_batch_that_differs_gets_its_own_tuple():
    net = steady(entry_size=len, max_batch_bytes=10)
    leader = net.nodes[3]
    for word in ("aaaa", "bbbb", "cccc"):
        leader.propose([word])
    ready = leader.take_ready()
    first, second = [e.msg.entries for e in ready.early if isinstance(e.msg, AcceptDecide) and e.dst == 1]
    assert (first, second) == (("aaaa", "bbbb"), ("cccc",))
    same = [e.msg.entries for e in ready.early if isinstance(e.msg, AcceptDecide) and e.dst == 2]
    assert same[0] is first and same[1] is second


# ---- compaction ---------------------------------------------------------------------------------------

def test_trim_works_with_node_ids_five_six_seven():
    """Upstream bug: leader state indexed by pid - 1 made trim a no-op for ids other than 1..N."""
    net = steady(pids=(5, 6, 7), leader=7)
    net.propose(7, *"abcdef")
    assert net.nodes[7].trim() == 6
    net.pump()
    assert all(net.disks[p].load().compacted_idx == 6 for p in (5, 6, 7))


def test_trim_refuses_entries_not_accepted_by_every_member():
    net = steady()
    net.down.add(1)
    net.propose(3, "a", "b")
    with pytest.raises(CompactionError):
        net.nodes[3].trim(2)
    assert net.nodes[3].trim() == 0


def test_trim_is_leader_only():
    net = steady()
    with pytest.raises(CompactionError):
        net.nodes[1].trim()


def test_delta_snapshot_catch_up_keeps_every_decided_entry():
    """Upstream bug: a delta merged onto a base built with the leader's decided index dropped entries."""
    net = steady(snapshotter=ListSnapshotter())
    net.propose(3, "e0", "e1", "e2", "e3")
    net.nodes[1].snapshot(3, local_only=True)  # follower: decided 4, compacted 3 (e3 only in its log)
    net.pump()
    net.down.add(1)
    net.propose(3, "e4")
    net.down.discard(1)
    net.nodes[1].reconnected(3)
    net.pump()
    sync = [e.msg for e in sent(net, AcceptSync) if e.dst == 1][-1]
    assert sync.log_sync.snapshot.kind == "delta" and sync.log_sync.snapshot.from_idx == 4
    expected = ["e0", "e1", "e2", "e3", "e4"]
    assert net.decided_log(1) == expected
    for idx, entry in enumerate(expected):
        assert net.decided_log(1)[idx] == entry


def test_lagging_follower_beyond_compaction_gets_complete_snapshot():
    net = steady(snapshotter=ListSnapshotter())
    net.down.add(1)
    net.propose(3, *"abcd")
    net.nodes[3].snapshot(4)
    net.pump()
    net.down.discard(1)
    net.nodes[1].reconnected(3)
    net.pump()
    sync = [e.msg for e in sent(net, AcceptSync) if e.dst == 1][-1]
    assert sync.log_sync.snapshot.kind == "complete"
    assert net.applied[1] == list("abcd") and net.decided_log(1) == list("abcd")


def test_compaction_beyond_decided_index_is_dropped():
    net = steady(snapshotter=ListSnapshotter())
    net.propose(3, "a")
    net.nodes[1].handle(Envelope(3, 1, 1, Compaction("trim", 5)))
    assert net.nodes[1].log.compacted_idx == 0
    assert net.nodes[1].stats["dropped_undecided_compaction"] == 1


# ---- reconfiguration ------------------------------------------------------------------------------

def test_stopsign_is_decided_and_seals_the_log():
    net = steady()
    net.propose(3, "a")
    ss = net.nodes[3].reconfigure([1, 2, 3, 4])
    net.pump()
    assert all(net.nodes[p].decided_stopsign() == ss for p in (1, 2, 3))
    assert net.applied[1] == ["a", ss]
    with pytest.raises(ProposalRejected):
        net.nodes[2].propose(["late"])


def test_stopsign_proposed_at_follower_is_forwarded_and_decided():
    net = steady()
    ss = net.nodes[1].reconfigure([1, 2, 4], metadata={"why": "replace 3"})
    net.pump()
    assert ss == StopSign(2, (1, 2, 4), {"why": "replace 3"})
    assert all(net.nodes[p].decided_stopsign() == ss for p in (1, 2, 3))


def test_second_reconfiguration_is_refused_while_one_is_pending():
    net = steady()
    net.nodes[3].reconfigure([1, 2, 3, 4])
    with pytest.raises(ProposalRejected):
        net.nodes[3].reconfigure([1, 2])


def test_invalid_configuration_raises_locally():
    with pytest.raises(ValueError):
        PaxosConfig(1, (2, 3))
    with pytest.raises(ValueError):
        PaxosConfig(1, (1, 1, 2))
    sp = SequencePaxos(PaxosConfig(1, (1, 2, 3)))
    with pytest.raises(ValueError):
        sp.reconfigure([0, -1])


def test_single_node_cluster_decides_alone():
    net = Net(pids=(9,))
    net.lead(9)
    net.propose(9, "solo")
    assert net.applied[9] == ["solo"] and net.nodes[9].role is Role.LEADER


def test_accept_decide_batches_are_bounded_by_bytes_too():
    net = steady(entry_size=len, max_batch_bytes=10)
    leader = net.nodes[3]
    for word in ("aaaa", "bbbb", "cccc", "dd"):
        leader.propose([word])
    batches = [e.msg.entries for e in leader.take_ready().early if isinstance(e.msg, AcceptDecide) and e.dst == 1]
    assert batches == [("aaaa", "bbbb"), ("cccc", "dd")]


def test_leader_serves_leader_reads_only_after_deciding_what_it_adopted():
    net = steady()
    # "a" and "b" are decided at node 3 only; node 2 accepted them but never hears they are decided.
    net.block = lambda env: env.dst == 1 or isinstance(env.msg, Decide)
    net.propose(3, "a", "b")
    assert net.nodes[2].decided_idx == 0 and net.nodes[2].log.accepted_idx == 2
    net.down.add(3)
    net.block = lambda env: isinstance(env.msg, (Accepted, Decide))  # the new leader cannot decide yet
    net.lead(1, n=2)
    assert net.nodes[1].is_accepting_leader() and not net.nodes[1].leader_has_caught_up()
    net.block = lambda env: False
    net.nodes[1].tick()
    net.pump()
    net.propose(1, "c")
    assert net.nodes[1].leader_has_caught_up() and net.applied[1] == ["a", "b", "c"]
