"""membership.json: the configuration a node runs survives restarts, and StopSign metadata is checked."""
import pytest

from omni.actors import membership as ms


def test_membership_survives_a_save_and_load(tmp_path):
    m = ms.initial(1, "tcp://127.0.0.1:7001", "tcp://127.0.0.1:8001", {2: "tcp://127.0.0.1:7002"})
    ms.save(tmp_path, m)
    assert ms.load(tmp_path) == m
    assert not (tmp_path / (ms.FILE_NAME + ".tmp")).exists()


def test_missing_file_means_no_configuration_yet(tmp_path):
    assert ms.load(tmp_path) is None


def test_next_configuration_starts_after_the_stopsign_slot():
    first = ms.Membership(1, {1: ms.Member("a", "ca"), 2: ms.Member("b", "cb")}, base=10)
    meta = ms.to_metadata({1: ms.Member("a", "ca"), 3: ms.Member("c", "cc")})
    second = first.next(meta, stopsign_idx=5, config_id=2, nodes=(1, 3))
    assert second.pids == (1, 3) and second.base == 16 and second.config_id == 2
    assert second.peers_of(1) == {3: "c"}


@pytest.mark.parametrize("bad", [None, [], [[0, "a", "b"]], [[1, "a"]], [["1", "a", "b"]], [[1, 2, "b"]], "x"])
def test_malformed_metadata_is_refused(bad):
    with pytest.raises(ValueError):
        ms.from_metadata(bad)


def test_metadata_that_disagrees_with_the_stopsign_nodes_is_refused():
    first = ms.Membership(1, {1: ms.Member("a")})
    with pytest.raises(ValueError):
        first.next(ms.to_metadata({1: ms.Member("a")}), 0, 2, nodes=(1, 2))


def _three():
    return ms.Membership(1, {p: ms.Member(f"tcp://h:{7100 + p}", f"tcp://h:{7200 + p}") for p in (1, 2, 3)})


def test_plan_change_adds_and_removes():
    members = ms.plan_change(_three(), [[4, "tcp://h:7104", "tcp://h:7204"]], [2])
    assert sorted(members) == [1, 3, 4] and members[4] == ms.Member("tcp://h:7104", "tcp://h:7204")


def test_plan_change_is_idempotent_for_a_retry():
    current = _three()
    assert ms.plan_change(current, [[3, "tcp://h:7103", "tcp://h:7203"]], [9]) == current.members


@pytest.mark.parametrize("add, remove", [
    ([[2, "tcp://elsewhere:1", "tcp://h:2"]], []),  # same id, other address
    ([[4, "p", "c"]], [4]),  # both added and removed
    ([], [1, 2, 3]),  # nobody left
    ([[4, "p", ""]], []),  # no client endpoint
    ("4", []), ([], [0]), ([], ["2"]),
])
def test_plan_change_refuses_nonsense(add, remove):
    with pytest.raises(ValueError):
        ms.plan_change(_three(), add, remove)
