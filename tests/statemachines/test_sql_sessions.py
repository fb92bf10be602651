"""Claim: exactly-once retries hold for the `sql` state machine across restarts (PROTOCOL.md section 6).

The SQL database is not replayed below its applied index after a restart, so it keeps the client-session
table itself (`keeps_sessions`), in the transaction of the command it belongs to. These tests drive the
real Applier logic (actors/applier.py, without starting its thread) over real SQLite files: a write with
(client, seq), a restart from the files, and the retry of that pair, which must be answered with the first
outcome and change nothing. The table must also keep exactly the window of the Applier's in-memory
`Sessions` (the one kv uses), since every node must answer a retry the same way.
"""
import random
from types import SimpleNamespace

import pytest

from omni.actors.applier import ApplierActor
from omni.actors.messages import Apply, Reply
from omni.paxos import DecidedEntries
from omni.statemachines import StateMachineError
from omni.statemachines.sql import SQLStateMachine


class InMemorySessionsSQL(SQLStateMachine):
    """The same SQL machine with the session table left to the Applier: the reference for the window."""

    keeps_sessions = False


class Harness:
    """An Applier fed decided entries by hand; replies to this 'node' are collected by request number."""

    def __init__(self, sm):
        self.replies: dict[int, Reply] = {}
        gateway = SimpleNamespace(tell=lambda reply: self.replies.__setitem__(reply.req, reply))
        node = SimpleNamespace(pid=1, incarnation=7, config_id=1, gateway=gateway, stopping=False,
                               outbox=SimpleNamespace(close_thread_socket=lambda: None))
        self.sm = sm
        self.applier = ApplierActor(node, sm)
        self.next_req = 0

    def write(self, command: dict, client: str | None = None, seq: int | None = None) -> tuple:
        """Decide one write entry at the next index and return its outcome (ok, result, code, message)."""
        self.next_req += 1
        entry = {"w": self.sm.prepare(command), "o": 1, "i": 7, "r": self.next_req}
        if client is not None:
            entry["cl"], entry["sq"] = client, seq
        self.applier.on_receive(Apply((DecidedEntries(self.applier.applied, (entry,)),)))
        reply = self.replies.pop(self.next_req)
        return (reply.ok, reply.result, reply.code, reply.message)

    def count(self, table: str = "t") -> int:
        return self.sm.query({"op": "query", "sql": f"SELECT count(*) FROM {table}"})["rows"][0][0]


def execute(sql, params=None):
    return {"op": "execute", "sql": sql, **({"params": params} if params is not None else {})}


def test_a_retry_after_a_restart_gets_the_first_result_and_is_not_applied_again(tmp_path):
    node = Harness(SQLStateMachine(tmp_path))
    node.write(execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)"), "c1", 1)
    first = node.write(execute("INSERT INTO t (v) VALUES (random())"), "c1", 2)
    assert first[0] and first[1]["results"][0]["rows_affected"] == 1
    node.sm.close()

    node = Harness(SQLStateMachine(tmp_path))  # restarted from its files: nothing is replayed
    assert node.applier.applied == 2
    retry = node.write(execute("INSERT INTO t (v) VALUES (random())"), "c1", 2)
    assert retry == first and node.count() == 1
    assert node.sm.applied_index == 3  # the retry's entry counts as applied, so it is never replayed
    fresh = node.write(execute("INSERT INTO t (v) VALUES (random())"), "c1", 3)
    assert fresh[0] and fresh[1]["results"][0]["last_insert_rowid"] == 2 and node.count() == 2


def test_a_failed_write_is_answered_with_the_same_error_after_a_restart(tmp_path):
    node = Harness(SQLStateMachine(tmp_path))
    failed = node.write(execute("INSERT INTO t VALUES (1)"), "c1", 1)
    assert failed[:3] == (False, None, "SQL_ERROR") and "no such table" in failed[3]
    node.write(execute("CREATE TABLE t (a)"), "c1", 2)
    node.sm.close()

    node = Harness(SQLStateMachine(tmp_path))
    assert node.write(execute("INSERT INTO t VALUES (1)"), "c1", 1) == failed  # it would succeed now
    assert node.count() == 0


def test_the_floor_survives_a_restart(tmp_path):
    node = Harness(SQLStateMachine(tmp_path))
    node.sm.sessions.seqs_per_client = 2
    node.write(execute("CREATE TABLE t (a)"), "c1", 1)
    for seq in (2, 3):
        node.write(execute("INSERT INTO t VALUES (?)", [seq]), "c1", seq)
    node.sm.close()

    node = Harness(SQLStateMachine(tmp_path))
    node.sm.sessions.seqs_per_client = 2
    ok, _, code, message = node.write(execute("INSERT INTO t VALUES (1)"), "c1", 1)
    assert (ok, code) == (False, "BAD_REQUEST") and "too old" in message
    assert node.count() == 2


def test_a_snapshot_carries_the_session_table(tmp_path):
    source = Harness(SQLStateMachine(tmp_path / "a"))
    source.write(execute("CREATE TABLE t (a)"), "c1", 1)
    first = source.write(execute("INSERT INTO t VALUES (1)"), "c1", 2)
    target = SQLStateMachine(tmp_path / "b")
    target.restore(source.sm.snapshot())
    node = Harness(target)
    assert node.write(execute("INSERT INTO t VALUES (1)"), "c1", 2) == first and node.count() == 1


def test_the_session_table_keeps_the_same_window_as_the_applier_sessions():
    """Random retries, new seqs, old seqs and many clients: both paths answer and change alike."""
    rng = random.Random(20240611)
    # in memory: the table works the same there, and 400 fsyncs would only make the test slow
    persistent, reference = Harness(SQLStateMachine()), Harness(InMemorySessionsSQL())
    persistent.sm.sessions.seqs_per_client, persistent.sm.sessions.max_clients = 4, 3
    reference.applier.sessions.seqs_per_client, reference.applier.sessions.max_clients = 4, 3
    for node in (persistent, reference):
        node.write(execute("CREATE TABLE t (id INTEGER PRIMARY KEY, client, seq, UNIQUE (client, seq))"))
    next_seq = {f"c{i}": 1 for i in range(4)}  # one more than max_clients: clients are forgotten too
    weights = [6, 6, 6, 1]  # ... but not all the time, or no seq would ever grow too old
    answers, sent = {"old": 0, "replayed": 0, "error": 0}, set()
    for step in range(400):
        client = rng.choices(sorted(next_seq), weights)[0]
        if rng.random() < 0.6:
            seq = next_seq[client]
            next_seq[client] += rng.choice((1, 1, 2))  # gaps are allowed
        else:
            seq = max(0, next_seq[client] - rng.randint(1, 8))  # a retry, maybe of a forgotten seq
        sql = "INSERT INTO t (client, seq) VALUES (?, ?)" if rng.random() < 0.9 else "INSERT INTO nope VALUES (1)"
        command = execute(sql, [client, seq])
        got, want = persistent.write(command, client, seq), reference.write(command, client, seq)
        assert got == want, f"step {step}: {client}/{seq}"
        answers["old"] += not got[0] and got[2] == "BAD_REQUEST"
        answers["error"] += not got[0] and got[2] == "SQL_ERROR"
        answers["replayed"] += got[0] and (client, seq) in sent
        sent.add((client, seq))
    assert persistent.sm.dump() == reference.sm.dump()
    assert min(answers.values()) > 10, answers  # the run did reach every case, the window's edges too


def test_the_session_table_is_read_only_to_clients(tmp_path):
    node = Harness(SQLStateMachine(tmp_path))
    node.write(execute("CREATE TABLE t (a)"), "c1", 1)
    for sql in ["DELETE FROM _omni_sessions", "UPDATE _omni_clients SET floor = 0", "DROP TABLE _omni_clients",
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM _omni_sessions; END"]:
        with pytest.raises(StateMachineError) as err:
            node.sm.apply(node.sm.applied_index, node.sm.prepare(execute(sql)))
        assert err.value.code == "SQL_ERROR" and "client sessions" in err.value.message
    assert node.sm.query({"op": "query", "sql": "SELECT client, seq FROM _omni_sessions"})["rows"] == [["c1", 1]]
