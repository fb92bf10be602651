"""Reconfiguration under crashes and operator mistakes (review of 57a77a2): each test names the window or
mistake it checks and what must hold afterwards."""
from types import SimpleNamespace

import pytest

from omni.actors import membership as ms
from omni.actors.applier import ApplierActor
from omni.actors.messages import Apply
from omni.actors.node import NodeConfig
from omni.actors.reconfiguration import ConfigManager
from omni.actors.snapshots import SnapshotStore
from omni.paxos import StopSign
from omni.paxos.messages import Ballot
from omni.paxos.sequence_paxos import DecidedEntries
from omni.paxos.storage import SetPromise
from omni.statemachines.kv import KVStateMachine

from .test_snapshots import FakeNode, put

META = [[p, f"tcp://h:{7100 + p}", f"tcp://h:{7200 + p}"] for p in (1, 2, 3, 4)]


class ConfigNode(FakeNode):
    """A FakeNode that records the configurations the Applier starts."""

    config_id = 1

    def __init__(self):
        super().__init__()
        self.started = []

    def configuration_decided(self, stopsign, base):
        self.started.append((stopsign, base))


def apply_once(node, store_dir, items):
    ref = ApplierActor.start(node, KVStateMachine(), snapshots=SnapshotStore(store_dir))
    try:
        ref.ask(Apply(tuple(items)))
    finally:
        ref.stop()


def test_a_crash_after_the_stopsign_snapshot_but_before_membership_json_still_starts_the_next_configuration(
        tmp_path):
    """Window: the Applier wrote the snapshot at the StopSign (durable), then kill -9 before
    membership.json. At restart the snapshot covers the StopSign, so the Applier must not skip it silently:
    the next configuration must still start, or the node stays in a sealed configuration for ever (a
    whole cluster restarted in that window would never make progress again)."""
    ss = StopSign(2, (1, 2, 3, 4), META)
    items = [DecidedEntries(0, (put(0), put(1), ss))]
    first = ConfigNode()
    apply_once(first, tmp_path, items)
    assert first.started == [(ss, 3)]
    assert SnapshotStore(tmp_path).newest() == 3
    restarted = ConfigNode()  # same disk, membership.json never written: the old log replays the StopSign
    apply_once(restarted, tmp_path, items)
    assert restarted.started == [(ss, 3)]


def test_a_member_restarted_with_join_on_its_command_line_keeps_its_log(tmp_path):
    """The log file a node runs must follow from its durable membership only: an original member restarted
    with --join (a unit file copied from a joiner) must not open a fresh, empty log and forget its promise."""
    cfg = NodeConfig(1, "tcp://127.0.0.1:7101", "tcp://127.0.0.1:7201", {2: "tcp://127.0.0.1:7102"},
                     data_dir=tmp_path)
    membership = ms.initial(1, cfg.listen, cfg.client, cfg.peers)
    store = ConfigManager(SimpleNamespace(config=cfg)).open_log(membership)
    store.write([(SetPromise(Ballot(7, 0, 2)),)])
    store.close()
    cfg_join = NodeConfig(1, cfg.listen, cfg.client, data_dir=tmp_path, join="tcp://127.0.0.1:7202")
    store = ConfigManager(SimpleNamespace(config=cfg_join)).open_log(membership)
    try:
        assert store.load().promise == Ballot(7, 0, 2)
    finally:
        store.close()


def test_a_change_that_keeps_no_current_member_is_refused():
    """New members get the state as a snapshot from the members they know, i.e. the new configuration's;
    when no current member stays, none of them has it and the new configuration never applies anything."""
    current = ms.Membership(1, {p: ms.Member(f"tcp://h:{7100 + p}", f"tcp://h:{7200 + p}") for p in (1, 2, 3)})
    new = [[p, f"tcp://h:{7100 + p}", f"tcp://h:{7200 + p}"] for p in (4, 5, 6)]
    with pytest.raises(ValueError):
        ms.plan_change(current, new, [1, 2, 3])
    assert sorted(ms.plan_change(current, new, [1, 2])) == [3, 4, 5, 6]
