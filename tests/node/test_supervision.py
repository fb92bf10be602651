"""SupervisedActor: the mailbox every Omni actor runs on, and what a failing actor does to its node."""
from __future__ import annotations

import threading

import pykka
import pytest

from omni.actors.supervision import SupervisedActor

from ..integration.cluster import wait_for


class FakeOutbox:
    def close_thread_socket(self) -> None:
        pass


class FakeNode:
    def __init__(self):
        self.stopping = False
        self.fatal_calls: list[str] = []
        self.outbox = FakeOutbox()
        self.refs: list = []

    def start(self, *args):
        ref = Recorder.start(self, *args)
        self.refs.append(ref)
        return ref

    def fatal(self, reason: str, detail: str = "") -> None:
        self.fatal_calls.append(reason)


class Recorder(SupervisedActor):
    def __init__(self, node, gate: threading.Event | None = None):
        super().__init__(node)
        self.seen: list = []
        self.gate = gate

    def on_receive(self, message):
        if message == "block":
            self.gate.wait(5)
        elif message == "boom":
            raise RuntimeError("boom")
        elif message == "seen":
            return list(self.seen)
        else:
            self.seen.append(message)


@pytest.fixture
def node():
    node = FakeNode()
    yield node
    for ref in node.refs:  # only this test's actors: other tests' nodes are theirs to stop
        ref.stop(block=False)


def test_mailbox_keeps_each_senders_order(node):
    ref = node.start()

    def sender(name):
        for i in range(2000):
            ref.tell((name, i))

    threads = [threading.Thread(target=sender, args=(name,)) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = ref.ask("seen", timeout=10)
    assert len(seen) == 4000
    for name in "ab":
        assert [i for who, i in seen if who == name] == list(range(2000))


def test_asks_queued_behind_a_stop_fail_instead_of_hanging(node):
    gate = threading.Event()
    ref = node.start(gate)
    ref.tell("block")
    stopped = ref.stop(block=False)
    late = ref.ask("seen", block=False)
    gate.set()
    stopped.get(timeout=5)
    with pytest.raises(pykka.ActorDeadError):
        late.get(timeout=5)


def test_an_actor_that_raises_stops_the_node(node):
    ref = node.start()
    ref.tell("boom")
    wait_for(lambda: node.fatal_calls, deadline=10, what="the node told of the failure")
    assert node.fatal_calls == ["Recorder failed: boom"]
    assert not ref.is_alive()
