"""Claims of omni.client (client/client.py) against fake nodes: failover, exactly-once envelopes, errors."""
import pytest
from omni.client import MAX_FRAME, Client, OmniError, Unavailable

from .fakenode import dead_endpoint

# silent nodes cost one timeout each; 0.5 s keeps a loaded machine's real answers well inside it
FAST = {"timeout": 0.5, "backoff": 0.001}


def test_a_write_retried_after_silence_goes_to_the_next_endpoint_with_the_same_client_and_seq(node):
    silent, good = node(1, "silent"), node(2)
    with Client([silent.endpoint, good.endpoint], **FAST) as client:
        assert client.put("k", "v") == {"revision": 1}
    first, retry = silent.requests[0], good.requests[0]
    assert retry["op"] == "put" and retry["key"] == "k" and retry["value"] == "v"
    assert (retry["client"], retry["seq"]) == (first["client"], first["seq"])


def test_a_write_refused_as_unavailable_is_retried_on_the_next_endpoint_with_the_same_client_and_seq(node):
    refusing, good = node(1, "unavailable"), node(2)
    with Client([refusing.endpoint, good.endpoint], **FAST) as client:
        client.delete("k")
    assert len(refusing.requests) == 1 and len(good.requests) == 1
    assert refusing.requests[0]["seq"] == good.requests[0]["seq"]
    assert refusing.requests[0]["client"] == good.requests[0]["client"] == client.client_id


def test_a_node_timeout_error_is_retried_on_the_next_endpoint(node):
    timing_out, good = node(1, "timeout"), node(2)
    with Client([timing_out.endpoint, good.endpoint], **FAST) as client:
        assert client.ping() == {"node": 2}


def test_a_write_retried_on_the_same_endpoint_keeps_its_seq_and_takes_only_the_new_attempts_reply(node):
    slow = node(1, slow_first=1, delay=2.0)  # answers the first attempt after the client gave up on it
    with Client([slow.endpoint], **FAST) as client:
        assert client.put("k", "v") == {"revision": 2}  # the fake's revision counts requests: the 2nd's
        assert client.ping() == {"node": 1}  # the late answer to the 1st attempt is never read as this one
    first, second = slow.requests[0], slow.requests[1]
    assert first["seq"] == second["seq"]
    assert first["id"] != second["id"]


def test_each_new_write_carries_a_higher_seq_and_the_same_client(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client:
        client.put("a", 1)
        client.cas("a", 1, 2)
        client.execute("INSERT INTO t VALUES (1)")
    seqs = [r["seq"] for r in good.requests]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert {r["client"] for r in good.requests} == {client.client_id}


def test_every_write_op_carries_client_and_seq(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client:
        client.put("a", 1)
        client.delete("a")
        client.cas("a", None, 1)
        client.execute("INSERT INTO t VALUES (?)", [1])
        client.execute_many(["DELETE FROM t", ("INSERT INTO t VALUES (?)", [2])])
    assert [r["op"] for r in good.requests] == ["put", "delete", "cas", "execute", "execute"]
    assert all("client" in r and "seq" in r for r in good.requests)
    assert good.requests[-1]["statements"] == [["DELETE FROM t"], ["INSERT INTO t VALUES (?)", [2]]]


def test_reads_carry_no_seq_and_no_client(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client:
        client.get("a")
        client.range(prefix="a")
        client.query("SELECT 1")
        client.ping()
        client.status()
    assert len(good.requests) == 5
    assert not any("seq" in r or "client" in r for r in good.requests)


def test_two_clients_have_different_client_ids():
    assert Client(["tcp://127.0.0.1:1"]).client_id != Client(["tcp://127.0.0.1:1"]).client_id


def test_an_error_reply_raises_omnierror_with_its_code_without_trying_other_nodes(node):
    refusing, good = node(1, "error:BAD_REQUEST"), node(2)
    with Client([refusing.endpoint, good.endpoint], **FAST) as client, pytest.raises(OmniError) as raised:
        client.put("k", "v")
    assert raised.value.code == "BAD_REQUEST"
    assert "refused by the fake node" in raised.value.message
    assert not isinstance(raised.value, Unavailable)
    assert good.requests == []


def test_unavailable_is_raised_once_the_retry_budget_is_spent_having_gone_round_robin(node):
    a, b = node(1, "silent"), node(2, "silent")
    with Client([a.endpoint, b.endpoint], retries=3, **FAST) as client, pytest.raises(Unavailable) as raised:
        client.put("k", "v")
    assert raised.value.code == "UNAVAILABLE" and isinstance(raised.value, OmniError)
    assert len(a.requests) == 2 and len(b.requests) == 2
    assert len({(r["client"], r["seq"]) for r in a.requests + b.requests}) == 1


def test_unavailable_is_raised_when_nobody_listens_and_the_deadline_passes():
    with Client([dead_endpoint(), dead_endpoint()], retries=None, deadline=0.5, **FAST) as client:
        with pytest.raises(Unavailable):
            client.get("k")


def test_unavailable_replies_until_the_budget_ends_raise_unavailable(node):
    a = node(1, "unavailable")
    with Client([a.endpoint], retries=2, **FAST) as client, pytest.raises(Unavailable) as raised:
        client.ping()
    assert len(a.requests) == 3
    assert "node 1 says unavailable" in raised.value.message


def test_a_reply_with_a_mismatched_id_is_dropped_and_the_request_retried(node):
    liar, good = node(1, "wrong_id"), node(2)
    with Client([liar.endpoint, good.endpoint], **FAST) as client:
        assert client.ping() == {"node": 2}
    assert len(liar.requests) == 1


def test_each_attempt_of_a_request_has_its_own_id(node):
    a, b = node(1, "silent"), node(2)
    with Client([a.endpoint, b.endpoint], **FAST) as client:
        client.get("k")
    assert a.requests[0]["id"] != b.requests[0]["id"]


def test_the_client_stays_on_the_endpoint_that_answered(node):
    a, b = node(1, "silent"), node(2)
    with Client([a.endpoint, b.endpoint], **FAST) as client:
        client.ping()
        client.ping()
    assert len(a.requests) == 1 and len(b.requests) == 2


def test_consistency_is_sent_only_when_given(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client:
        client.get("k")
        client.get("k", consistency="local")
        client.range(prefix="", consistency="leader")
        client.query("SELECT 1", consistency="linearizable")
    assert "consistency" not in good.requests[0]
    assert [r.get("consistency") for r in good.requests[1:]] == ["local", "leader", "linearizable"]


def test_an_unknown_consistency_level_is_refused_before_sending(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client, pytest.raises(ValueError):
        client.get("k", consistency="eventual")
    assert good.requests == []


def test_range_without_arguments_asks_for_every_key_and_start_end_are_sent_as_given(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client:
        client.range()
        client.range(start="b", end="d", limit=10)
    assert good.requests[0]["prefix"] == ""
    assert (good.requests[1]["start"], good.requests[1]["end"], good.requests[1]["limit"]) == ("b", "d", 10)
    assert "prefix" not in good.requests[1]


def test_values_keep_their_msgpack_type_both_ways(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client:
        client.put("b", b"\x00\xff")
        client.put("s", "text")
        assert client.get("b")["value"] == b"\x00\xff"
        assert client.get("s")["value"] == "text"
        client.put("m", {"n": [1, 2.5, None, True]})
        assert client.get("m")["value"] == {"n": [1, 2.5, None, True]}


def test_cas_with_expected_none_sends_nil(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client:
        client.cas("k", None, "v")
    assert "expected" in good.requests[0] and good.requests[0]["expected"] is None


def test_a_request_larger_than_the_frame_limit_is_refused_before_sending(node):
    good = node(1)
    with Client([good.endpoint], **FAST) as client, pytest.raises(OmniError) as raised:
        client.put("k", "x" * MAX_FRAME)
    assert raised.value.code == "TOO_LARGE"
    assert good.requests == []


def test_envelope_keys_cannot_be_passed_as_arguments():
    with Client(["tcp://127.0.0.1:1"]) as client, pytest.raises(ValueError):
        client.request("put", key="k", value="v", seq=7)


def test_a_declared_plugin_write_op_gets_client_and_seq(node):
    good = node(1)
    with Client([good.endpoint], write_ops={"incr"}, **FAST) as client, pytest.raises(OmniError) as raised:
        client.request("incr", by=2)
    assert raised.value.code == "UNKNOWN_OP"  # the fake node has no incr; the envelope is what matters
    assert good.requests[0]["seq"] == 1 and good.requests[0]["client"] == client.client_id


def test_from_env_reads_comma_separated_omni_endpoints(monkeypatch):
    monkeypatch.setenv("OMNI_ENDPOINTS", "tcp://10.0.0.1:7201, 10.0.0.2:7202")
    assert Client.from_env().endpoints == ["tcp://10.0.0.1:7201", "tcp://10.0.0.2:7202"]


def test_a_closed_client_refuses_requests():
    client = Client(["tcp://127.0.0.1:1"])
    client.close()
    with pytest.raises(ValueError):
        client.ping()
