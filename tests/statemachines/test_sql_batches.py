"""Claims of the sql state machine's batches (begin_batch / end_batch, statemachines/sql.py): every command
still commits on its own (under synchronous=NORMAL, FULL again after the run), a killed process keeps every
commit, and where a run begins or ends changes no result and no state."""
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from omni.statemachines import StateMachineError
from omni.statemachines.sql import SQLStateMachine

SCHEMA = [
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE ON CONFLICT ROLLBACK, n INT CHECK (n >= 0))",
    "CREATE TABLE child (tid INTEGER REFERENCES t(id) DEFERRABLE INITIALLY DEFERRED)",
]


def commands(count: int, seed: int) -> list:
    """Inserts and updates, with failures of every kind among them: a CHECK, a UNIQUE that rolls back the
    whole transaction, a deferred foreign key (checked only at COMMIT), bad SQL; writes of a few sessions."""
    rng = random.Random(seed)
    out = [{"op": "execute", "sql": sql} for sql in SCHEMA]
    for i in range(count):
        kind = rng.choice(["insert", "insert", "update", "check", "unique", "deferred", "bad", "child"])
        if kind == "insert":
            sql, params = "INSERT INTO t (name, n) VALUES (?, ?)", [f"n{i}", i]
        elif kind == "update":
            sql, params = "UPDATE t SET n = n + 1 WHERE id % 3 = ?", [i % 3]
        elif kind == "check":
            sql, params = "INSERT INTO t (name, n) VALUES (?, -1)", [f"c{i}"]
        elif kind == "unique":
            sql, params = "INSERT INTO t (name, n) VALUES ('n0', 1)", []
        elif kind == "deferred":
            sql, params = "INSERT INTO child (tid) VALUES (?)", [10_000 + i]
        elif kind == "child":
            sql, params = "INSERT INTO child (tid) SELECT max(id) FROM t", []
        else:
            sql, params = "INSERT INTO nowhere VALUES (1)", []
        command = {"op": "execute", "sql": sql, "params": params}
        out.append((command, ("client-%d" % (i % 3), i // 3 + 1)) if rng.random() < 0.5 else command)
    return out


def apply_all(sm, items, boundaries=None) -> list:
    """Apply ``items`` in order; with ``boundaries`` (a set of positions) inside batches that end there."""
    results = []
    if boundaries is not None:
        sm.begin_batch()
    for pos, item in enumerate(items):
        command, session = item if isinstance(item, tuple) else (item, None)
        try:
            results.append(("ok", sm.apply(sm.applied_index, command, session=session)))
        except StateMachineError as e:
            results.append((e.code, e.message))
        if boundaries is not None and pos in boundaries:
            sm.end_batch()
            sm.begin_batch()
    if boundaries is not None:
        sm.end_batch()
    return results


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_results_and_state_do_not_depend_on_where_batches_begin_and_end(tmp_path, seed):
    items = commands(120, seed)
    plain, batched = SQLStateMachine(tmp_path / "plain"), SQLStateMachine(tmp_path / "batched")
    try:
        # prepared once (prepare stamps a time and a seed): both machines apply the very same commands
        prepared = [((plain.prepare(i[0]), i[1]) if isinstance(i, tuple) else plain.prepare(i)) for i in items]
        rng = random.Random(seed)
        boundaries = {p for p in range(len(prepared)) if rng.random() < 0.1}
        expected = apply_all(plain, prepared)
        assert apply_all(batched, prepared, boundaries) == expected
        assert {code for code, _ in expected} > {"ok"}, "the commands should include failures"
        assert batched.dump() == plain.dump()
        assert batched.applied_index == plain.applied_index == len(prepared)
    finally:
        plain.close()
        batched.close()


def test_inside_a_batch_each_command_is_committed_on_its_own_and_the_end_restores_full_sync(tmp_path):
    sm = SQLStateMachine(tmp_path)
    outside = sqlite3.connect(tmp_path / SQLStateMachine.FILE_NAME)
    try:
        sm.apply(0, sm.prepare({"op": "execute", "sql": SCHEMA[0]}))
        sm.begin_batch()
        with sm._internal():
            assert sm._conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL: no fsync per commit
        sm.apply(1, sm.prepare({"op": "execute", "sql": "INSERT INTO t (name, n) VALUES ('a', 1)"}))
        with pytest.raises(StateMachineError):
            sm.apply(2, sm.prepare({"op": "execute", "sql": "INSERT INTO t (name, n) VALUES ('a', 2)"}))
        assert outside.execute("SELECT name, n FROM t").fetchall() == [("a", 1)]  # committed already
        assert outside.execute("SELECT idx FROM _omni_applied").fetchall() == [(3,)]
        sm.end_batch()
        with sm._internal():
            assert sm._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again
        assert sm.applied_index == 3
    finally:
        outside.close()
        sm.close()


def test_a_process_killed_inside_a_batch_keeps_every_command_it_committed(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from omni.statemachines.sql import SQLStateMachine
        sm = SQLStateMachine({str(tmp_path)!r})
        sm.apply(0, sm.prepare({{"op": "execute", "sql": "CREATE TABLE k (n INT)"}}))
        sm.begin_batch()
        for i in range(1, 51):
            sm.apply(i, sm.prepare({{"op": "execute", "sql": "INSERT INTO k VALUES (?)", "params": [i]}}))
        os.kill(os.getpid(), signal.SIGKILL)  # inside the batch: end_batch never runs
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sm = SQLStateMachine(tmp_path)
    try:
        assert sm.applied_index == 51
        assert sm.query({"op": "query", "sql": "SELECT count(*), sum(n) FROM k"})["rows"] == [[50, 1275]]
    finally:
        sm.close()


def test_batches_on_a_machine_in_memory_change_nothing():
    sm = SQLStateMachine(None)
    try:
        sm.begin_batch()
        sm.apply(0, sm.prepare({"op": "execute", "sql": SCHEMA[0]}))
        sm.end_batch()
        assert sm.applied_index == 1
    finally:
        sm.close()
