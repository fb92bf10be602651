"""Claims of the `kv` state machine (statemachines/kv.py): etcd-like ops, revisions, errors, snapshots."""
import random

import msgpack
import pytest

from omni.statemachines import StateMachineError
from omni.statemachines.kv import KVStateMachine


class Log:
    """Feeds commands to a machine with consecutive indexes, as the Applier does."""

    def __init__(self, sm):
        self.sm = sm

    def __call__(self, op, **args):
        return self.sm.apply(self.sm.applied_index, {"op": op, **args})


@pytest.fixture
def kv():
    return KVStateMachine()


@pytest.fixture
def log(kv):
    return Log(kv)


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63, 1.5, "text", b"\x00\xffbytes", [1, [2, "x"]],
    {"nested": {"a": [1, 2.5, None]}, "b": b"x"}, "",
])
def test_put_then_get_returns_value_exactly_as_stored(kv, log, value):
    log("put", key="k", value=value)
    got = kv.query({"op": "get", "key": "k"})["value"]
    assert got == value and type(got) is type(value)


def test_get_missing_key_returns_none_and_mod_revision_zero(kv, log):
    log("put", key="other", value=1)
    assert kv.query({"op": "get", "key": "missing"}) == {"value": None, "revision": 1, "mod_revision": 0}


def test_revision_increments_on_each_successful_mutation_only(kv, log):
    assert log("put", key="a", value=1) == {"revision": 1}
    assert log("put", key="a", value=2) == {"revision": 2}
    assert log("delete", key="missing") == {"deleted": False, "revision": 2}
    assert log("cas", key="a", expected=99, value=3)["revision"] == 2
    assert log("cas", key="a", expected=2, value=3)["revision"] == 3
    assert log("delete", key="a") == {"deleted": True, "revision": 4}
    assert kv.query({"op": "get", "key": "a"})["revision"] == 4


def test_mod_revision_is_the_revision_of_the_last_change_to_the_key(kv, log):
    log("put", key="a", value=1)
    log("put", key="b", value=1)
    log("put", key="a", value=2)
    assert kv.query({"op": "get", "key": "a"})["mod_revision"] == 3
    assert kv.query({"op": "get", "key": "b"})["mod_revision"] == 2


def test_delete_removes_the_key_and_reports_whether_it_existed(kv, log):
    log("put", key="a", value=1)
    assert log("delete", key="a")["deleted"] is True
    assert kv.query({"op": "get", "key": "a"})["value"] is None
    assert log("delete", key="a")["deleted"] is False


def test_cas_with_expected_none_requires_absent_key(kv, log):
    assert log("cas", key="lock", expected=None, value="me") == {"succeeded": True, "value": "me", "revision": 1}
    assert log("cas", key="lock", expected=None, value="you") == {"succeeded": False, "value": "me", "revision": 1}
    assert kv.query({"op": "get", "key": "lock"})["value"] == "me"


def test_cas_with_value_requires_equal_current_value(kv, log):
    log("put", key="a", value={"x": 1, "y": [1, 2]})
    assert log("cas", key="a", expected={"y": [1, 2], "x": 1}, value="new")["succeeded"] is True
    assert log("cas", key="missing", expected="anything", value=1) == \
        {"succeeded": False, "value": None, "revision": 2}


@pytest.mark.parametrize("stored, expected", [(1, 1.0), (1, True), (0, False), ("a", b"a"), ([1], [1.0])])
def test_cas_compares_values_by_msgpack_type(kv, log, stored, expected):
    log("put", key="a", value=stored)
    result = log("cas", key="a", expected=expected, value="changed")
    assert result["succeeded"] is False and result["value"] == stored


def test_range_prefix_returns_matching_keys_sorted(kv, log):
    for key in ["b/2", "a/1", "b/1", "b", "c", "b/10", "b0"]:
        log("put", key=key, value=key.upper())
    result = kv.query({"op": "range", "prefix": "b/"})
    assert result["items"] == [["b/1", "B/1"], ["b/10", "B/10"], ["b/2", "B/2"]]
    assert result["more"] is False


def test_range_prefix_handles_keys_beyond_the_basic_plane(kv, log):
    for key in ["a", "a\uffff", "a\U0010ffff", "b"]:
        log("put", key=key, value=1)
    assert [k for k, _ in kv.query({"op": "range", "prefix": "a"})["items"]] == ["a", "a\uffff", "a\U0010ffff"]


def test_range_start_end_is_end_exclusive_and_end_none_is_open(kv, log):
    for key in "abcde":
        log("put", key=key, value=key)
    assert [k for k, _ in kv.query({"op": "range", "start": "b", "end": "d"})["items"]] == ["b", "c"]
    assert [k for k, _ in kv.query({"op": "range", "start": "c", "end": None})["items"]] == ["c", "d", "e"]
    assert [k for k, _ in kv.query({"op": "range", "start": ""})["items"]] == list("abcde")


def test_range_limit_truncates_and_reports_more(kv, log):
    for key in "abcde":
        log("put", key=key, value=key)
    assert kv.query({"op": "range", "prefix": "", "limit": 2}) == \
        {"items": [["a", "a"], ["b", "b"]], "more": True, "revision": 5}
    assert kv.query({"op": "range", "start": "d", "limit": 2})["more"] is False
    assert len(kv.query({"op": "range", "prefix": "", "limit": 0})["items"]) == 5


def test_range_over_a_million_keys_returns_the_exact_slice(kv):
    n, batch = 1_000_000, 10_000
    for b in range(n // batch):
        ops = [{"op": "put", "key": f"k{i:07d}", "value": i} for i in range(b * batch, (b + 1) * batch)]
        kv.apply(b, {"op": "batch", "ops": ops})
    assert kv.query({"op": "range", "prefix": "k004321"})["items"] == \
        [[f"k{i:07d}", i] for i in range(43210, 43220)]
    result = kv.query({"op": "range", "start": "k0999998", "limit": 5})
    assert result["items"] == [["k0999998", 999998], ["k0999999", 999999]] and result["more"] is False


def test_batch_applies_all_ops_in_order_in_one_entry(kv, log):
    result = log("batch", ops=[
        {"op": "put", "key": "a", "value": 1},
        {"op": "cas", "key": "a", "expected": 1, "value": 2},
        {"op": "cas", "key": "a", "expected": 1, "value": 3},
        {"op": "delete", "key": "b"},
    ])
    assert result == {"results": [
        {"revision": 1},
        {"succeeded": True, "value": 2, "revision": 2},
        {"succeeded": False, "value": 2, "revision": 2},
        {"deleted": False, "revision": 2},
    ]}
    assert kv.applied_index == 1


@pytest.mark.parametrize("bad_op", [
    {"op": "put", "key": 5, "value": 1},
    {"op": "put", "key": "z"},
    {"op": "get", "key": "z"},
    {"op": "batch", "ops": []},
    "not a map",
])
def test_batch_with_an_invalid_op_applies_nothing(kv, log, bad_op):
    log("put", key="a", value=0)
    ops = [{"op": "put", "key": "a", "value": 1}, {"op": "delete", "key": "a"}, bad_op]
    with pytest.raises(StateMachineError) as err:
        log("batch", ops=ops)
    assert err.value.code == "BAD_REQUEST" and "ops[2]" in err.value.message
    assert kv.query({"op": "get", "key": "a"}) == {"value": 0, "revision": 1, "mod_revision": 1}


@pytest.mark.parametrize("command", [
    {"op": "put", "key": 1, "value": 1},
    {"op": "put", "key": b"bytes", "value": 1},
    {"op": "put", "key": "", "value": 1},
    {"op": "put", "key": "k"},
    {"op": "delete"},
    {"op": "cas", "key": "k", "value": 1},
    {"op": "cas", "key": "k", "expected": 1},
    {"op": "batch"},
    {"op": "batch", "ops": {"op": "put"}},
    {"op": "get", "key": None},
    {"op": "range"},
    {"op": "range", "prefix": "a", "start": "a"},
    {"op": "range", "prefix": 1},
    {"op": "range", "start": "a", "end": 3},
    {"op": "range", "prefix": "", "limit": -1},
    {"op": "range", "prefix": "", "limit": True},
    {"op": 7},
    {"key": "k"},
])
def test_missing_or_wrongly_typed_fields_are_bad_request(kv, command):
    with pytest.raises(StateMachineError) as err:
        kv.apply(0, command)
    assert err.value.code == "BAD_REQUEST"


def test_write_refused_in_prepare_before_consensus(kv):
    with pytest.raises(StateMachineError) as err:
        kv.prepare({"op": "put", "key": 42, "value": 1})
    assert err.value.code == "BAD_REQUEST"
    request = {"op": "put", "key": "k", "value": 1}
    assert kv.prepare(request) == request


@pytest.mark.parametrize("call", ["apply", "query", "is_write", "prepare"])
def test_unknown_op_is_unknown_op_everywhere(kv, call):
    request = {"op": "frobnicate", "key": "k"}
    with pytest.raises(StateMachineError) as err:
        kv.apply(0, request) if call == "apply" else getattr(kv, call)(request)
    assert err.value.code == "UNKNOWN_OP" and "frobnicate" in err.value.message


def test_is_write_classifies_ops(kv):
    writes = {op: kv.is_write({"op": op}) for op in ["put", "delete", "cas", "batch", "get", "range"]}
    assert writes == {"put": True, "delete": True, "cas": True, "batch": True, "get": False, "range": False}


def test_query_refuses_writes(kv):
    with pytest.raises(StateMachineError) as err:
        kv.query({"op": "put", "key": "k", "value": 1})
    assert err.value.code == "BAD_REQUEST"
    assert kv.query({"op": "get", "key": "k"})["value"] is None


def test_failed_command_still_advances_applied_index(kv):
    with pytest.raises(StateMachineError):
        kv.apply(0, {"op": "put", "key": 1, "value": 1})
    assert kv.applied_index == 1
    kv.apply(1, {"op": "put", "key": "k", "value": 1})
    assert kv.applied_index == 2


def test_apply_refuses_an_already_applied_index(kv):
    kv.apply(0, {"op": "put", "key": "k", "value": 1})
    with pytest.raises(ValueError):
        kv.apply(0, {"op": "put", "key": "k", "value": 2})
    assert kv.query({"op": "get", "key": "k"})["value"] == 1


def test_read_through_the_log_is_answered_and_counted(kv, log):
    log("put", key="k", value="v")
    assert log("get", key="k")["value"] == "v"
    assert kv.applied_index == 2


def test_snapshot_restore_roundtrip_kv(kv, log):
    for i in range(50):
        log("put", key=f"k{i % 7}", value={"i": i, "b": bytes([i])})
    log("delete", key="k3")
    other = KVStateMachine()
    other.restore(kv.snapshot())
    assert other.applied_index == kv.applied_index == 51
    for key in [f"k{i}" for i in range(7)]:
        assert other.query({"op": "get", "key": key}) == kv.query({"op": "get", "key": key})
    # both continue identically from the restored point
    command = {"op": "put", "key": "new", "value": 1}
    assert other.apply(51, command) == kv.apply(51, command) == {"revision": 52}
    assert other.snapshot() == kv.snapshot()


def test_snapshot_is_msgpack_and_restore_rejects_garbage_without_change(kv, log):
    log("put", key="k", value=1)
    assert msgpack.unpackb(kv.snapshot())["revision"] == 1
    for garbage in [b"", b"\xc1", msgpack.packb({"format": "other"}), msgpack.packb([1, 2])]:
        with pytest.raises(ValueError):
            kv.restore(garbage)
    assert kv.query({"op": "get", "key": "k"})["value"] == 1


def test_a_snapshot_packed_in_chunks_is_the_same_map_as_one_packed_whole():
    """A large state is packed a chunk of items per call (so no single call holds the GIL for long): the
    bytes must still be one plain msgpack map of the three columns, and restore to the same state."""
    kv = KVStateMachine()
    for i in range(10_000):
        kv.apply(i, {"op": "put", "key": f"k{(i * 7919) % 9_000:05d}", "value": bytes([i % 256]) * (i % 40)})
    kv.apply(10_000, {"op": "delete", "key": "k00003"})
    data = kv.snapshot()
    pairs = list(dict.values(kv._data))
    assert data == msgpack.packb({"format": "omni.kv/1", "revision": kv._revision, "applied_index": 10_001,
                                  "keys": list(dict.keys(kv._data)), "values": [v for v, _ in pairs],
                                  "mod_revisions": [m for _, m in pairs]}, use_bin_type=True)
    other = KVStateMachine()
    other.restore(data)
    assert other.snapshot() == data
    assert other.query({"op": "range", "prefix": "k0000"}) == kv.query({"op": "range", "prefix": "k0000"})


def test_a_snapshot_captured_before_more_applies_encodes_the_state_at_capture():
    """The Applier captures the state between two entries and encodes it on another thread while it applies
    on: nothing applied after the capture may leak into the file."""
    kv, reference = KVStateMachine(), KVStateMachine()
    for i in range(5000):
        command = {"op": "put", "key": f"k{i % 3000}", "value": [i]}
        kv.apply(i, command)
        reference.apply(i, command)
    encode = kv.snapshot_later()
    kv.apply(5000, {"op": "put", "key": "k1", "value": "changed"})
    kv.apply(5001, {"op": "delete", "key": "k2"})
    kv.apply(5002, {"op": "put", "key": "new", "value": 1})
    assert encode() == reference.snapshot()


def _random_kv_command(rng):
    key = f"k{rng.randrange(30)}"
    roll = rng.random()
    if roll < 0.35:
        return {"op": "put", "key": key, "value": rng.choice([rng.randrange(5), str(rng.random()), None])}
    if roll < 0.5:
        return {"op": "delete", "key": key}
    if roll < 0.75:
        return {"op": "cas", "key": key, "expected": rng.choice([None, rng.randrange(5)]), "value": rng.randrange(5)}
    if roll < 0.9:
        return {"op": "batch", "ops": [_random_kv_command(rng) for _ in range(rng.randrange(4))]}
    return rng.choice([{"op": "put", "key": 3, "value": 1}, {"op": "nope"}, {"op": "get", "key": key}])


def test_two_kv_replicas_fed_the_same_commands_end_identical():
    rng = random.Random(20240611)
    commands = [_random_kv_command(rng) for _ in range(3000)]
    a, b = KVStateMachine(), KVStateMachine()
    results = {"a": [], "b": []}
    for index, command in enumerate(commands):
        for name, sm in (("a", a), ("b", b)):
            try:
                results[name].append(sm.apply(index, command))
            except StateMachineError as e:
                results[name].append(("error", e.code))
        if index == 1500:  # replica b is rebuilt from a's snapshot half way
            b = KVStateMachine()
            b.restore(a.snapshot())
    assert results["a"] == results["b"]
    assert a.snapshot() == b.snapshot()
    assert any(r == ("error", "BAD_REQUEST") for r in results["a"])  # the workload did exercise failures


def test_range_lists_exactly_the_keys_present_after_puts_deletes_cas_and_a_restore():
    """The sorted key index (kept beside the items) never drifts from the items: a range over everything
    equals what a get of every possible key finds, in key order."""
    rng = random.Random(20261204)
    kv = KVStateMachine()
    names = sorted(f"k{n}" for n in range(30))
    for index in range(3000):
        try:
            kv.apply(index, _random_kv_command(rng))
        except StateMachineError:
            pass
        if index == 1500:
            restored = KVStateMachine()
            restored.restore(kv.snapshot())
            kv = restored
        if index % 50 == 0:
            found = [(k, kv.query({"op": "get", "key": k})) for k in names]
            present = [[k, got["value"]] for k, got in found if got["mod_revision"] > 0]
            assert kv.query({"op": "range", "prefix": ""})["items"] == present
            assert kv.query({"op": "range", "start": "k1", "end": "k2"})["items"] == \
                [item for item in present if "k1" <= item[0] < "k2"]
