"""The ClientGateway folds the entries of many requests into one Propose per mailbox drain (adaptive
batching) without delaying or dropping anything else it is told meanwhile."""
from __future__ import annotations

import time

import msgpack

from omni.actors import gateway as gateway_module
from omni.actors.gateway import MAX_PROPOSE_BATCH, GatewayActor
from omni.actors.messages import (
    ClientFrame, ClientFrames, LinearizableReads, LocalQueries, NodeStatus, PeerRequest, Propose, Reply, Tick,
)
from omni.paxos import Ballot
from omni.statemachines.kv import KVStateMachine


class Recorder:
    def __init__(self):
        self.told = []

    def tell(self, message):
        self.told.append(message)


class Outbox:
    def __init__(self):
        self.sent, self.node_messages = [], []

    def send_client(self, route, body):
        self.sent.append((route, msgpack.unpackb(body, raw=False)))

    def send_node(self, dst, message):
        self.node_messages.append((dst, message))

    def send_clients(self, replies):
        for route, body in replies:
            self.send_client(route, body)

    def close_thread_socket(self):
        pass


class FakeNode:
    pid, incarnation, config_id, members, state_machine_name = 1, 7, 1, (1, 2, 3), "kv"
    removed = False
    stopping = False
    local_reads_answered = 0

    def __init__(self):
        self.sequence_paxos, self.applier, self.outbox = Recorder(), Recorder(), Outbox()


def gateway():
    node = FakeNode()
    gw = GatewayActor(node, KVStateMachine(None), 0.01)  # not started: on_receive is called directly
    gw.on_receive(NodeStatus(leader=1, role="leader", ballot=Ballot(1, 0, 1), decided_idx=0, config_id=1,
                             members=(1, 2, 3), accepting=True))
    return node, gw


def put_frame(i):
    return ClientFrame((b"c%d" % i,), msgpack.packb({"op": "put", "key": f"k{i}", "value": i, "id": i}))


def proposals(node):
    return [m for m in node.sequence_paxos.told if isinstance(m, Propose)]


def test_an_idle_gateway_proposes_each_request_at_once():
    node, gw = gateway()
    gw.on_receive(put_frame(1))
    assert [len(p.entries) for p in proposals(node)] == [1]


def test_a_busy_gateway_folds_requests_into_one_propose_and_still_handles_replies_and_ticks():
    node, gw = gateway()
    gw.actor_inbox.put("more to come")  # the mailbox is not empty: keep gathering
    for i in range(3):
        gw.on_receive(put_frame(i))
    assert proposals(node) == []
    req = next(iter(gw.pending))
    gw.on_receive(Reply(req, True, {"revision": 1}))  # anything else first lets the gathered entries go
    assert [len(p.entries) for p in proposals(node)] == [3]
    assert [e["w"]["key"] for e in proposals(node)[0].entries] == ["k0", "k1", "k2"]
    assert node.outbox.sent and node.outbox.sent[0][1]["ok"] is True  # the reply was not dropped
    gw.on_receive(put_frame(9))
    now = gw.now
    gw.on_receive(Tick())
    assert gw.now == now + 1 and [len(p.entries) for p in proposals(node)] == [3, 1]


def test_a_full_batch_goes_even_while_the_mailbox_is_busy():
    node, gw = gateway()
    gw.actor_inbox.put("more to come")
    for i in range(MAX_PROPOSE_BATCH + 1):
        gw.on_receive(put_frame(i))
    assert [len(p.entries) for p in proposals(node)] == [MAX_PROPOSE_BATCH]


def test_a_local_read_goes_to_the_applier_with_its_route_and_is_not_tracked():
    """The Applier answers a ``local`` read on the client's route itself: the gateway keeps nothing for it."""
    node, gw = gateway()
    body = msgpack.packb({"op": "get", "key": "k", "consistency": "local", "id": 9, "timeout": 2})
    gw.on_receive(ClientFrame((b"c1",), body))
    (message,) = node.applier.told
    ((route, rid, request, deadline),) = message.queries
    assert isinstance(message, LocalQueries) and route == (b"c1",) and rid == 9
    assert request == {"op": "get", "key": "k"} and 0 < deadline - time.monotonic() <= 2
    assert gw.pending == {} and proposals(node) == [] and node.outbox.sent == []


def test_local_reads_of_one_drain_reach_the_applier_in_one_tell():
    node, gw = gateway()
    frames = tuple(ClientFrame((b"c%d" % i,), msgpack.packb({"op": "get", "key": "k", "consistency": "local",
                                                              "id": i})) for i in range(5))
    gw.on_receive(ClientFrames(frames))
    (message,) = node.applier.told
    assert [q[1] for q in message.queries] == [0, 1, 2, 3, 4]


def test_local_reads_the_applier_has_not_answered_count_against_the_in_flight_cap(monkeypatch):
    """A flood of pipelined local reads must not pile up in the Applier's mailbox without bound."""
    monkeypatch.setattr(gateway_module, "MAX_IN_FLIGHT", 3)
    node, gw = gateway()
    local = [ClientFrame((b"c%d" % i,), msgpack.packb({"op": "get", "key": "k", "consistency": "local", "id": i}))
             for i in range(5)]
    gw.on_receive(ClientFrames(tuple(local[:4])))
    (message,) = node.applier.told
    assert len(message.queries) == 3  # the fourth was refused
    ((_, refused),) = node.outbox.sent
    assert refused["id"] == 3 and refused["error"]["code"] == "UNAVAILABLE"
    gw.on_receive(put_frame(1))  # a write is refused alike while the Applier owes three answers
    assert proposals(node) == [] and node.outbox.sent[-1][1]["error"]["code"] == "UNAVAILABLE"
    node.local_reads_answered = 3  # the Applier answered them
    gw.on_receive(local[4])
    assert len(node.applier.told) == 2 and len(node.outbox.sent) == 2


def test_linearizable_reads_go_to_the_leader_core_after_the_writes_that_arrived_before_them():
    node, gw = gateway()
    get = msgpack.packb({"op": "get", "key": "k1", "id": 100})
    gw.on_receive(ClientFrames((put_frame(1), ClientFrame((b"r",), get), put_frame(2))))
    propose, reads = node.sequence_paxos.told
    assert isinstance(propose, Propose) and [e["w"]["key"] for e in propose.entries] == ["k1", "k2"]
    assert isinstance(reads, LinearizableReads) and [r[1] for r in reads.reads] == [{"op": "get", "key": "k1"}]
    assert reads.reads[0][0] in gw.pending  # answered when the Applier has applied the confirmed index


def test_a_follower_forwards_a_linearizable_read_to_the_leader():
    node, gw = gateway()
    gw.on_receive(NodeStatus(leader=2, role="follower", ballot=Ballot(2, 0, 2), decided_idx=0, config_id=1,
                             members=(1, 2, 3)))
    gw.on_receive(ClientFrame((b"r",), msgpack.packb({"op": "get", "key": "k", "id": 1, "timeout": 60})))
    ((dst, request),) = node.outbox.node_messages
    assert dst == 2 and request.request == {"op": "get", "key": "k", "consistency": "linearizable", "timeout": 60}
    assert node.sequence_paxos.told == []


def test_the_leader_confirms_a_forwarded_read_and_keeps_the_clients_timeout():
    node, gw = gateway()  # the leader, 10 ms ticks
    gw.on_receive(PeerRequest(2, 41, {"op": "get", "key": "k", "consistency": "linearizable", "timeout": 0.05}))
    (reads,) = node.sequence_paxos.told
    ((req, request),) = reads.reads
    assert request == {"op": "get", "key": "k"} and gw.pending[req].peer == (2, 41)
    for _ in range(5):
        gw.on_receive(Tick())
    ((dst, reply),) = node.outbox.node_messages
    assert dst == 2 and reply.req == 41 and reply.reply["error"]["code"] == "TIMEOUT"


def test_an_unanswered_request_gets_timeout_after_its_ticks_and_an_answered_one_never_does():
    node, gw = gateway()  # 10 ms ticks
    for i, timeout in ((1, 0.05), (2, 0.05)):
        body = msgpack.packb({"op": "put", "key": f"k{i}", "value": i, "id": i, "timeout": timeout})
        gw.on_receive(ClientFrame((b"c%d" % i,), body))
    (first, second) = [e["r"] for p in proposals(node) for e in p.entries]
    gw.on_receive(Reply(second, True, {"revision": 1}))
    for _ in range(4):
        gw.on_receive(Tick())
    assert [reply["id"] for _, reply in node.outbox.sent] == [2]  # only the answer so far
    gw.on_receive(Tick())
    assert [(reply["id"], reply.get("error", {}).get("code")) for _, reply in node.outbox.sent] == \
        [(2, None), (1, "TIMEOUT")]
    for _ in range(600):
        gw.on_receive(Tick())
    assert len(node.outbox.sent) == 2 and gw.pending == {} and gw.deadlines == {}
