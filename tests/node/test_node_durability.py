"""Durability rules at the node level (the core's Ready order is tested in tests/core)."""
import logging


from omni.actors import reconfiguration  # where the node opens its logs
from omni.actors.log_store import SQLiteLogStore
from omni.actors.messages import Apply, Inbound, Persist
from omni.actors.node import EXIT_FATAL, Node, NodeConfig
from omni.actors.storage import StorageActor
from omni.client import Client, OmniError
from omni.paxos import Accepted, Ballot, Envelope, Ready
from omni.paxos.sequence_paxos import DecidedEntries
from omni.paxos.storage import AppendOnPrefix

from ..integration.cluster import free_ports


class Recorder:
    """Stands in for the node, the store and the outbox: every call lands in one ordered list."""

    def __init__(self):
        self.events = []
        self.pid = 1
        self.outbox = self
        self.sequence_paxos = self.applier = self

    def write(self, groups):
        self.events.append(("write", len(groups)))

    def send_core(self, env):
        self.events.append(("send", env.dst))

    def tell(self, message):
        self.events.append(("self" if isinstance(message, Inbound) else "apply", type(message).__name__))

    def close_thread_socket(self):
        pass

    def close(self):
        pass


def test_storage_actor_sends_and_applies_only_after_the_write_is_durable():
    rec = Recorder()
    ready = Ready(writes=[(AppendOnPrefix(0, ("e",)),)],
                  messages=[Envelope(1, 2, 1, Accepted(Ballot(1, 0, 2), 1)),
                            Envelope(1, 1, 1, Accepted(Ballot(1, 0, 1), 1))],
                  decided=[DecidedEntries(0, ("e",))])
    ref = StorageActor.start(rec, rec)
    try:
        ref.ask(Persist(ready))
    finally:
        ref.stop()
    assert rec.events[0] == ("write", 1)
    assert rec.events[1:] == [("send", 2), ("self", "Inbound"), ("apply", "Apply")]


def test_storage_actor_commits_queued_batches_together():
    rec = Recorder()
    ref = StorageActor.start(rec, rec)
    try:
        proxy_ready = [Ready(writes=[(AppendOnPrefix(i, (i,)),)]) for i in range(3)]
        for r in proxy_ready[:-1]:
            ref.tell(Persist(r))
        ref.ask(Persist(proxy_ready[-1]))
        commits = ref.proxy().commits.get()
    finally:
        ref.stop()
    writes = [e for e in rec.events if e[0] == "write"]
    assert sum(n for _, n in writes) == 3 and commits == len(writes) <= 3


class TinyDiskStore(SQLiteLogStore):
    """A real SQLite store whose file may not grow past a few pages: SQLite then fails with SQLITE_FULL."""

    def load(self):
        state = super().load()
        conn = self._conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        return state


def test_failed_disk_write_stops_the_node_with_exit_code_70(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reconfiguration, "SQLiteLogStore", TinyDiskStore)
    peer, client_port = free_ports(2)
    node = Node(NodeConfig(pid=1, listen=f"tcp://127.0.0.1:{peer}", client=f"tcp://127.0.0.1:{client_port}",
                           data_dir=tmp_path, election_ticks=5)).start()
    caplog.set_level(logging.CRITICAL, logger="omni.node")
    try:
        with Client([f"tcp://127.0.0.1:{client_port}"], timeout=0.5, retries=None, deadline=30) as c:
            for i in range(2000):
                if node._done.is_set():
                    break
                try:
                    c.put(f"k{i}", "x" * 2000)
                except OmniError:
                    break
        assert node.wait() == EXIT_FATAL
        assert "StorageActor failed" in node.fatal_reason
        assert any("stopping" in r.getMessage() for r in caplog.records)
    finally:
        node.stop()


def test_entry_proposed_by_an_earlier_life_of_this_node_answers_no_one():
    from omni.actors.applier import ApplierActor
    from omni.statemachines import load_state_machine

    rec = Recorder()
    rec.incarnation = 1234
    rec.gateway = rec
    entries = ({"w": {"op": "put", "key": "a", "value": 1}, "o": 1, "i": 999, "r": 7},   # earlier life
               {"w": {"op": "put", "key": "b", "value": 2}, "o": 1, "i": 1234, "r": 7},  # this process
               {"w": {"op": "put", "key": "c", "value": 3}, "o": 2, "i": 1234, "r": 8})  # another node's
    ref = ApplierActor.start(rec, load_state_machine("kv")(None))
    try:
        ref.ask(Apply((DecidedEntries(0, entries),)))
    finally:
        ref.stop()
    replies = [e for e in rec.events if e == ("apply", "Reply")]
    assert len(replies) == 1


def test_a_request_that_makes_the_state_machine_raise_gets_an_error_instead_of_killing_the_applier():
    from omni.actors.applier import ApplierActor
    from omni.statemachines import StateMachine

    class Fragile(StateMachine):
        applied_index = 0

        def apply(self, index, command):
            return 1 // command["divisor"]

        def query(self, request):
            raise RecursionError("too deep")

        def is_write(self, request):
            return True

        def snapshot(self):
            return b""

        def restore(self, data):
            pass

    rec = Recorder()
    rec.incarnation, rec.gateway = 1, rec
    replies = []
    rec.tell = lambda message: replies.extend(getattr(message, "replies", (message,)))  # Replies or Reply
    entries = ({"w": {"divisor": "x"}, "o": 1, "i": 1, "r": 1}, {"q": {}, "o": 1, "i": 1, "r": 2},
               {"w": {"divisor": 1}, "o": 1, "i": 1, "r": 3})
    ref = ApplierActor.start(rec, Fragile(None))
    try:
        ref.ask(Apply((DecidedEntries(0, entries),)))
        assert ref.is_alive()
    finally:
        ref.stop()
    assert [(r.req, r.ok, r.code) for r in replies] == [(1, False, "BAD_REQUEST"), (2, False, "BAD_REQUEST"),
                                                        (3, True, "")]
