"""The history recorder: status mapping per PROTOCOL.md section 7, timestamps, results, persistence."""
from omni.client import OmniError, Unavailable
from omni.jepsen.history import FAIL, INFO, OK, History, classify


def test_error_codes_map_to_definite_and_indefinite_outcomes():
    for code in ("BAD_REQUEST", "UNKNOWN_OP", "SQL_ERROR", "TOO_LARGE", "UNAUTHORIZED"):
        assert classify("put", code) == FAIL, code
    assert classify("put", "TIMEOUT") == INFO
    assert classify("put", "UNAVAILABLE") == INFO       # a write may have happened
    assert classify("get", "UNAVAILABLE") == FAIL       # a read refused did nothing
    assert classify("cas", "BAD_REQUEST", "sequence number 3 of client x is too old to tell") == INFO
    assert classify("put", "BAD_REPLY") == INFO
    assert classify("get", "UNAVAILABLE", client_gave_up=True) == INFO
    assert classify("delete", "UNAVAILABLE", client_gave_up=True) == INFO


def _raise(exc):
    def call():
        raise exc
    return call


def test_perform_records_outcomes_and_normalised_results():
    h = History()
    ok = h.perform(1, "cas", "k", ["a", "b"], lambda: {"succeeded": False, "value": "z", "revision": 4})
    assert (ok.status, ok.result) == (OK, [False, "z"])
    got = h.perform(1, "get", "k", None, lambda: {"value": "z", "revision": 4})
    assert (got.status, got.result) == (OK, "z")
    gone = h.perform(1, "delete", "k", None, lambda: {"deleted": True})
    assert gone.result is True
    lost = h.perform(2, "put", "k", "v", _raise(Unavailable("no node answered")))
    assert (lost.status, lost.error) == (INFO, "UNAVAILABLE")
    bad = h.perform(2, "put", "k", "w", _raise(OmniError("BAD_REQUEST", "missing key")))
    assert bad.status == FAIL
    odd = h.perform(3, "put", "k", "x", _raise(RuntimeError("socket gone")))
    assert odd.status == INFO
    for op in h.ops:
        assert op.call <= op.ret
    assert [op.index for op in h.ops] == list(range(6))
    assert h.counts() == {"ok": 3, "info": 2, "fail": 1}


def test_pending_ops_become_info_and_histories_round_trip(tmp_path):
    h = History()
    h.perform(1, "put", "k", "v", lambda: {"revision": 1})
    h.invoke(2, "put", "k", "w")  # never completed
    h.finish_pending()
    assert [op.status for op in h.ops] == [OK, INFO]
    h.dump(tmp_path / "h.jsonl")
    back = History.load(tmp_path / "h.jsonl")
    assert back.origin == h.origin
    assert [(o.f, o.key, o.value, o.status, o.call, o.ret) for o in back.ops] == \
        [(o.f, o.key, o.value, o.status, o.call, o.ret) for o in h.ops]
