"""The Applier's session table: per client the outcomes of its last writes, a floor below which a seq is too
old to tell, and the least recently writing clients forgotten first. Every replica builds it from the log,
so these rules must hold exactly (a retry must get the same answer on every node)."""
from __future__ import annotations

import pytest

from omni.actors.applier import Sessions
from omni.statemachines import StateMachineError


def ok(n):
    return (True, {"revision": n}, "", "")


def test_a_recorded_write_is_found_and_an_unknown_one_is_not():
    table = Sessions()
    table.record("a", 1, ok(1))
    assert table.lookup("a", 1) == ok(1)
    assert table.lookup("a", 2) is None
    assert table.lookup("b", 1) is None


def test_a_client_keeps_only_its_last_seqs_and_older_ones_are_refused_not_reapplied():
    table = Sessions(seqs_per_client=3)
    for seq in range(1, 6):
        table.record("a", seq, ok(seq))
    assert [table.lookup("a", s) for s in (3, 4, 5)] == [ok(3), ok(4), ok(5)]
    for too_old in (1, 2):
        with pytest.raises(StateMachineError):
            table.lookup("a", too_old)


def test_the_floor_never_goes_down_when_an_old_seq_arrives_late():
    table = Sessions(seqs_per_client=2)
    for seq in (5, 6, 7):
        table.record("a", seq, ok(seq))  # 5 dropped: floor 6
    table.record("a", 1, ok(1))  # a stray low seq pushes 6 out: the floor becomes 7, not 2
    with pytest.raises(StateMachineError):
        table.lookup("a", 6)
    assert table.lookup("a", 7) == ok(7)


def test_the_least_recently_writing_client_is_forgotten_first():
    table = Sessions(max_clients=2)
    table.record("a", 1, ok(1))
    table.record("b", 1, ok(2))
    table.record("a", 2, ok(3))  # a is now the most recent
    table.record("c", 1, ok(4))  # evicts b
    assert table.lookup("b", 1) is None
    assert table.lookup("a", 2) == ok(3) and table.lookup("c", 1) == ok(4)
    assert list(table.clients) == ["a", "c"]


def test_a_dumped_table_loads_into_one_that_behaves_the_same():
    table = Sessions(seqs_per_client=2, max_clients=3)
    for i in range(20):
        table.record(f"c{i % 4}", i, ok(i))
    copy = Sessions.load(table.dump())
    copy.seqs_per_client, copy.max_clients = 2, 3
    assert copy.dump() == table.dump()
    for table_ in (table, copy):
        table_.record("c1", 99, ok(99))
        table_.record("new", 1, ok(100))
    assert copy.dump() == table.dump()
