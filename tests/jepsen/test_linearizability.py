"""The linearizability checker on hand-written and generated KV histories.

Hand-written histories pin the model's rules (stale reads, lost writes, duplicated cas, unknown outcomes,
overlapping ops that are fine in some order); generated ones come from a simulated atomic register
(linearizable by construction) and from the same histories with one result broken on purpose.
Times are small integers; the checker only compares them.
"""
from omni.jepsen.history import FAIL, INFO, OK, Op
from omni.jepsen.linearizability import ILLEGAL, OK_VERDICT, UNKNOWN, check
from omni.jepsen.synthetic import (
    corrupt_future_read,
    corrupt_stale_read,
    register_history,
)


class H:
    """A tiny history builder: H().put(p, key, v, call, ret).get(p, key, v, call, ret) ..."""

    def __init__(self):
        self.ops = []

    def _add(self, process, f, key, value, call, ret, status, result):
        self.ops.append(Op(len(self.ops), process, f, key, value, call, ret, status, result))
        return self

    def put(self, p, key, v, call, ret, status=OK):
        return self._add(p, "put", key, v, call, ret, status, 1 if status == OK else None)

    def get(self, p, key, v, call, ret, status=OK):
        return self._add(p, "get", key, None, call, ret, status, v)

    def cas(self, p, key, expected, new, call, ret, succeeded=True, current=None, status=OK):
        result = [succeeded, new if succeeded else current] if status == OK else None
        return self._add(p, "cas", key, [expected, new], call, ret, status, result)

    def delete(self, p, key, call, ret, deleted=True, status=OK):
        return self._add(p, "delete", key, None, call, ret, status, deleted if status == OK else None)

    def check(self, **kwargs):
        return check(self.ops, **kwargs)


def test_sequential_history_is_linearizable():
    h = H().put(1, "k", "a", 0, 1).get(1, "k", "a", 2, 3).put(2, "k", "b", 4, 5).get(3, "k", "b", 6, 7)
    assert h.check().result == OK_VERDICT


def test_stale_read_after_a_completed_write_is_illegal():
    h = H().put(1, "k", "a", 0, 1).put(1, "k", "b", 2, 3).get(2, "k", "a", 4, 5)
    verdict = h.check()
    assert verdict.result == ILLEGAL
    text = verdict.explain()
    assert "'k'" in text and "get('k')" in text and "'a'" in text


def test_read_concurrent_with_a_write_may_see_old_or_new():
    for seen in ("a", "b"):
        h = H().put(1, "k", "a", 0, 1).put(1, "k", "b", 2, 10).get(2, "k", seen, 3, 4)
        assert h.check().result == OK_VERDICT, seen


def test_lost_write_is_illegal():
    # b was acknowledged, yet every later read still sees a
    h = H().put(1, "k", "a", 0, 1).put(2, "k", "b", 2, 3).get(3, "k", "a", 4, 5).get(1, "k", "a", 6, 7)
    assert h.check().result == ILLEGAL
    # ... or sees nothing at all
    h = H().put(1, "k", "b", 0, 1).get(2, "k", None, 2, 3)
    assert h.check().result == ILLEGAL


def test_duplicated_cas_from_the_same_expected_value_is_illegal():
    h = H().put(1, "k", "a", 0, 1).cas(1, "k", "a", "b", 2, 3).cas(2, "k", "a", "c", 4, 5)
    assert h.check().result == ILLEGAL
    # even when the two overlap, only one of them can have found "a"
    h = H().put(1, "k", "a", 0, 1).cas(1, "k", "a", "b", 2, 6).cas(2, "k", "a", "c", 3, 7)
    assert h.check().result == ILLEGAL
    # one succeeding and the other failing (seeing the first one's value) is fine
    h = H().put(1, "k", "a", 0, 1).cas(1, "k", "a", "b", 2, 6).cas(2, "k", "a", "c", 3, 7, False, "b")
    assert h.check().result == OK_VERDICT


def test_failed_cas_must_report_a_value_that_is_not_the_expected_one():
    h = H().put(1, "k", "a", 0, 1).cas(1, "k", "a", "b", 2, 3, succeeded=False, current="a")
    assert h.check().result == ILLEGAL
    h = H().put(1, "k", "a", 0, 1).cas(1, "k", "x", "b", 2, 3, succeeded=False, current="a")
    assert h.check().result == OK_VERDICT


def test_cas_with_expected_none_means_absent():
    h = H().cas(1, "k", None, "a", 0, 1).get(1, "k", "a", 2, 3)
    assert h.check().result == OK_VERDICT
    h = H().put(1, "k", "a", 0, 1).cas(1, "k", None, "b", 2, 3)
    assert h.check().result == ILLEGAL


def test_delete_semantics():
    h = H().put(1, "k", "a", 0, 1).delete(1, "k", 2, 3, True).get(2, "k", None, 4, 5).delete(2, "k", 6, 7, False)
    assert h.check().result == OK_VERDICT
    assert H().delete(1, "k", 0, 1, True).check().result == ILLEGAL  # nothing was there to delete


def test_unknown_outcome_write_may_or_may_not_have_happened():
    base = lambda: H().put(1, "k", "a", 0, 1).put(2, "k", "b", 2, 3, status=INFO)
    assert base().get(3, "k", "b", 4, 5).check().result == OK_VERDICT      # it happened
    assert base().get(3, "k", "a", 4, 5).check().result == OK_VERDICT      # it did not (yet)
    assert base().get(3, "k", "a", 4, 5).get(3, "k", "b", 6, 7).check().result == OK_VERDICT  # it did, late
    # seen, then unseen again with no other write: impossible whichever way it went
    assert base().get(3, "k", "b", 4, 5).get(3, "k", "a", 6, 7).check().result == ILLEGAL


def test_unknown_outcome_write_cannot_take_effect_before_it_was_called():
    h = H().put(1, "k", "a", 0, 1).get(3, "k", "b", 2, 3).put(2, "k", "b", 4, 5, status=INFO)
    assert h.check().result == ILLEGAL


def test_failed_write_did_not_happen():
    h = H().put(1, "k", "a", 0, 1).put(2, "k", "c", 2, 3, status=FAIL).get(3, "k", "c", 4, 5)
    assert h.check().result == ILLEGAL
    # a failed or unknown read is no evidence of anything
    h = H().put(1, "k", "a", 0, 1).get(2, "k", "zzz", 2, 3, status=FAIL).get(2, "k", "yyy", 4, 5, status=INFO)
    assert h.check().result == OK_VERDICT


def test_concurrent_overlapping_ops_fine_in_some_order():
    # a and b overlap; the reads force b before a, which their intervals allow
    h = (H().put(1, "k", "a", 0, 10).put(2, "k", "b", 1, 11)
         .get(3, "k", "b", 2, 3).get(3, "k", "a", 4, 5).get(4, "k", "a", 12, 13))
    assert h.check().result == OK_VERDICT
    # but once both have returned and a was read after b, b cannot come back
    h = (H().put(1, "k", "a", 0, 10).put(2, "k", "b", 1, 11)
         .get(3, "k", "b", 2, 3).get(3, "k", "a", 4, 5).get(4, "k", "b", 12, 13))
    assert h.check().result == ILLEGAL


def test_touching_intervals_count_as_overlapping():
    # the write returns at 5 and the read is called at 5: closed intervals, so either order is allowed
    h = H().put(1, "k", "a", 0, 1).put(1, "k", "b", 2, 5).get(2, "k", "a", 5, 6)
    assert h.check().result == OK_VERDICT


def test_keys_are_checked_independently_and_the_bad_one_is_named():
    h = (H().put(1, "good", "a", 0, 1).get(2, "good", "a", 2, 3)
         .put(1, "bad", "x", 0, 1).put(1, "bad", "y", 2, 3).get(2, "bad", "x", 4, 5))
    verdict = h.check()
    assert verdict.result == ILLEGAL and verdict.keys == 2
    assert [k.key for k in verdict.illegal] == ["bad"]


def test_many_unknown_writes_stay_cheap():
    # 40 unknown writes all pending at once, then 100 reads that never see them: without the token and
    # interchangeable-op reductions this is 2^40 states; with them, a few thousand
    h = H().put(0, "k", "a", 0, 1)
    for i in range(40):
        h.put(i + 1, "k", f"lost{i}", 2 + i, 200, status=INFO)
    for i in range(100):
        h.get(99, "k", "a", 300 + 2 * i, 301 + 2 * i)
    verdict = h.check(max_states=50_000, timeout=120)
    assert verdict.result == OK_VERDICT


def test_unknown_writes_that_were_read_are_placed_in_order():
    h = H().put(0, "k", "a", 0, 1)
    for i in range(12):
        h.put(i + 1, "k", f"w{i}", 2 + i, 200, status=INFO)
    for i in range(12):  # each unknown write turns out to have happened, in order
        h.get(99, "k", f"w{i}", 300 + 2 * i, 301 + 2 * i)
    assert h.check(max_states=200_000, timeout=120).result == OK_VERDICT
    h.get(99, "k", "w3", 400, 401)  # an earlier one cannot come back
    assert h.check(max_states=200_000, timeout=120).result == ILLEGAL


def test_budget_exhausted_is_unknown_not_ok():
    h = H().put(1, "k", "a", 0, 1).get(2, "k", "a", 2, 3)
    assert h.check(timeout=0).result == UNKNOWN


def test_generated_linearizable_histories_pass():
    for seed in range(25):
        history = register_history(seed, clients=6, keys=4, ops=400, p_info=0.05)
        verdict = check(history, timeout=120)
        assert verdict.result == OK_VERDICT, (seed, verdict.explain())


def test_generated_histories_with_one_result_broken_fail():
    for seed in range(25):
        history = register_history(seed, clients=6, keys=4, ops=400, p_info=0.05)
        for corrupt in (corrupt_future_read, corrupt_stale_read):
            broken = corrupt(history)
            assert broken is not None, (seed, corrupt.__name__)
            ops, changed = broken
            verdict = check(ops, timeout=120)
            assert verdict.result == ILLEGAL, (seed, corrupt.__name__)
            assert [k.key for k in verdict.illegal] == [changed.key]


def test_ten_thousand_op_history_is_checked():
    history = register_history(7, clients=8, keys=15, ops=10_000, p_info=0.02)
    verdict = check(history, timeout=600)
    assert verdict.result == OK_VERDICT, verdict.explain()
    assert verdict.ops == 10_000
