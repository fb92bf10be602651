"""The OmniPaxos paper's partial-connectivity scenarios, at every phase of the heartbeat round.

The paper's claim is recovery within at most four election timeouts where Raft, VR or Multi-Paxos may
deadlock; measured here: quorum-loss 2.5-3.4, constrained 2.6-3.6, chained never stops
(`python -m omni.sim.scenarios`).
"""
import pytest

from omni.sim.scenarios import ELECTION_TICKS, chained, constrained_election, quorum_loss

OFFSETS = range(ELECTION_TICKS)


@pytest.mark.parametrize("offset", OFFSETS)
def test_quorum_loss_recovers_within_four_election_timeouts(offset):
    result = quorum_loss(offset)
    assert result.leader_after == 1, "A, the only quorum-connected node, must take over"
    assert result.recovery_timeouts <= 4, result


@pytest.mark.parametrize("offset", OFFSETS)
def test_constrained_election_stale_quorum_connected_node_leads_within_four_timeouts(offset):
    result = constrained_election(offset)
    assert result.leader_after == 1 and result.leader_changes == 1
    assert result.recovery_timeouts <= 4, result


@pytest.mark.parametrize("offset", OFFSETS)
def test_chained_keeps_its_leader_and_never_stops_deciding(offset):
    result = chained(offset)
    assert result.leader_changes == 0 and result.leader_after == result.leader_before
    assert result.recovery_timeouts < 1, result
