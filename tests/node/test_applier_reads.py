"""Claims of the Applier's read paths: `local` reads are answered on the client's route (or TIMEOUT once their
deadline passed) and counted for the gateway's in-flight cap; a query waiting for an index that is never
applied is dropped once no request can still be waiting for it, while one that can still be answered stays."""
from __future__ import annotations

import time

import msgpack

from omni.actors import applier as applier_module
from omni.actors.applier import ApplierActor
from omni.actors.messages import MAX_TIMEOUT, Apply, LocalQueries, Queries, Query, Replies, Reply, Tick
from omni.paxos.sequence_paxos import DecidedEntries
from omni.statemachines.kv import KVStateMachine


class FakeNode:
    pid, incarnation, config_id = 1, 7, 1
    stopping = False

    def __init__(self):
        self.local_reads_answered = 0
        self.told, self.client_replies = [], []
        self.outbox = self.gateway = self

    def tell(self, message):
        self.told.append(message)

    def send_clients(self, replies):
        self.client_replies += [(route, msgpack.unpackb(body, raw=False)) for route, body in replies]

    def close_thread_socket(self):
        pass


def applier_with(key: str, value) -> tuple[FakeNode, ApplierActor]:
    node = FakeNode()
    actor = ApplierActor(node, KVStateMachine())  # not started: on_receive is called directly
    entry = {"w": {"op": "put", "key": key, "value": value}, "o": 2, "i": 1, "r": 1}
    actor.on_receive(Apply((DecidedEntries(0, (entry,)),)))
    return node, actor


def test_local_reads_are_answered_on_their_routes_and_counted_as_answered():
    node, actor = applier_with("k", "v")
    later = time.monotonic() + 5
    actor.on_receive(LocalQueries((((b"a",), 1, {"op": "get", "key": "k"}, later),
                                   ((b"b",), 2, {"op": "get", "key": "nope"}, later),
                                   ((b"c",), 3, {"op": "get"}, later))))
    (a, b, c) = node.client_replies
    assert a == ((b"a",), {"ok": True, "result": {"value": "v", "revision": 1, "mod_revision": 1}, "id": 1})
    assert b[1]["ok"] is True and b[1]["result"]["value"] is None and b[1]["id"] == 2
    assert c[1]["ok"] is False and c[1]["error"]["code"] == "BAD_REQUEST" and c[1]["id"] == 3
    assert node.local_reads_answered == 3 and node.told == []


def test_a_local_read_that_waited_past_its_deadline_gets_timeout_instead_of_an_answer():
    node, actor = applier_with("k", "v")
    actor.on_receive(LocalQueries((((b"a",), 1, {"op": "get", "key": "k"}, time.monotonic() - 0.001),)))
    ((route, reply),) = node.client_replies
    assert route == (b"a",) and reply["ok"] is False and reply["error"]["code"] == "TIMEOUT" and reply["id"] == 1
    assert node.local_reads_answered == 1


def test_a_query_for_an_index_never_applied_is_dropped_after_the_longest_timeout(monkeypatch):
    """Its client got TIMEOUT from the gateway long before; the Applier must not keep it for ever."""
    node, actor = applier_with("k", "v")
    clock = [1000.0]
    monkeypatch.setattr(applier_module.time, "monotonic", lambda: clock[0])
    actor.on_receive(Queries((Query(41, {"op": "get", "key": "k"}, min_applied=5),)))
    clock[0] += 1.0
    actor.on_receive(Queries((Query(42, {"op": "get", "key": "k"}, min_applied=5),)))
    clock[0] += MAX_TIMEOUT + 0.5  # 41 has waited longer than any request may; 42 not quite
    actor.on_receive(Tick())
    assert [q.req for q in actor.waiting] == [42] and list(actor.waiting_since) == [42]
    more = [{"w": {"op": "put", "key": "k", "value": i}, "o": 2, "i": 1, "r": i} for i in range(2, 6)]
    actor.on_receive(Apply((DecidedEntries(1, tuple(more)),)))  # index 5 applied: 42 is answered
    (reply,) = [m for m in node.told if isinstance(m, (Reply, Replies))]
    assert isinstance(reply, Reply) and reply.req == 42 and reply.result["value"] == 5
    assert actor.waiting == [] and actor.waiting_since == {}


class RecordingKV(KVStateMachine):
    """A kv machine that logs the Applier's batch calls and applies between them."""

    def __init__(self, node):
        super().__init__()
        self.node, self.calls = node, []

    def begin_batch(self):
        self.calls.append(("begin", len(self.node.told)))

    def apply(self, index, command):
        self.calls.append(("apply", index))
        return super().apply(index, command)

    def end_batch(self):
        self.calls.append(("end", len(self.node.told)))


def test_a_decided_run_is_applied_between_one_begin_batch_and_one_end_batch_before_anyone_is_answered():
    node = FakeNode()
    sm = RecordingKV(node)
    actor = ApplierActor(node, sm)
    mine = [{"w": {"op": "put", "key": f"k{i}", "value": i}, "o": 1, "i": 7, "r": 10 + i} for i in range(3)]
    actor.on_receive(Apply((DecidedEntries(0, tuple(mine[:2])), DecidedEntries(2, tuple(mine[2:])))))
    assert sm.calls == [("begin", 0), ("apply", 0), ("apply", 1), ("apply", 2), ("end", 0)]
    (replies,) = node.told  # told after end_batch: the writes were durable before anyone heard of them
    assert [r.req for r in replies.replies] == [10, 11, 12]


def test_a_single_decided_entry_is_applied_without_a_batch():
    node = FakeNode()
    sm = RecordingKV(node)
    actor = ApplierActor(node, sm)
    actor.on_receive(Apply((DecidedEntries(0, ({"w": {"op": "put", "key": "k", "value": 1}, "o": 1, "i": 7,
                                                 "r": 5},)),)))
    assert sm.calls == [("apply", 0)]  # its own commit is durable: a batch would add a second one
