"""Claims of the `sql` state machine (statemachines/sql.py): execute/query, atomicity, rule 6, snapshots."""
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from omni.statemachines import StateMachineError
from omni.statemachines.sql import SQLNodeError, SQLStateMachine


def run(sm, request):
    """What the node does with a write: prepare on the receiving node, then apply at the next index."""
    return sm.apply(sm.applied_index, sm.prepare(request))


def rows(sm, sql, params=None):
    return sm.query({"op": "query", "sql": sql, "params": params})["rows"]


@pytest.fixture(params=["memory", "file"])
def sm(request, tmp_path):
    machine = SQLStateMachine(None if request.param == "memory" else tmp_path / "node")
    yield machine
    machine.close()


@pytest.fixture
def table(sm):
    run(sm, {"op": "execute", "sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INT)"})
    return sm


def test_execute_reports_rows_affected_and_last_insert_rowid(table):
    result = run(table, {"op": "execute", "statements": [
        ["INSERT INTO t (name, n) VALUES ('a', 1), ('b', 2)"],
        ["UPDATE t SET n = n + 1"],
        ["DELETE FROM t WHERE name = 'zzz'"],
    ]})
    assert result == {"results": [
        {"rows_affected": 2, "last_insert_rowid": 2},
        {"rows_affected": 2, "last_insert_rowid": 2},
        {"rows_affected": 0, "last_insert_rowid": 2},
    ]}


def test_query_returns_columns_and_rows(table):
    run(table, {"op": "execute", "sql": "INSERT INTO t (name, n) VALUES ('a', 1), ('b', NULL)"})
    assert table.query({"op": "query", "sql": "SELECT name, n AS number FROM t ORDER BY id"}) == \
        {"columns": ["name", "number"], "rows": [["a", 1], ["b", None]]}
    assert table.query({"op": "query", "sql": "SELECT * FROM t WHERE 0"})["rows"] == []


def test_positional_and_named_params_bind_all_sql_types(table):
    run(table, {"op": "execute", "sql": "CREATE TABLE v (a, b, c, d, e)"})
    run(table, {"op": "execute", "sql": "INSERT INTO v VALUES (?, ?, ?, ?, ?)",
                "params": [None, -(2**63), 1.5, "text", b"\x00\xff"]})
    run(table, {"op": "execute", "sql": "INSERT INTO v VALUES (:a, :b, :c, :d, :e)",
                "params": {"a": 1, "b": 2**63 - 1, "c": True, "d": "", "e": b""}})
    assert rows(table, "SELECT * FROM v WHERE d = ?", ["text"]) == [[None, -(2**63), 1.5, "text", b"\x00\xff"]]
    assert rows(table, "SELECT * FROM v WHERE d = :d", {"d": ""}) == [[1, 2**63 - 1, 1, "", b""]]


@pytest.mark.parametrize("command", [
    {"op": "execute"},
    {"op": "execute", "sql": ""},
    {"op": "execute", "sql": 5},
    {"op": "execute", "sql": "SELECT 1", "statements": [["SELECT 1"]]},
    {"op": "execute", "statements": []},
    {"op": "execute", "statements": [["SELECT ?", [1], "extra"]]},
    {"op": "execute", "sql": "SELECT ?", "params": "1"},
    {"op": "execute", "sql": "SELECT ?", "params": [[1, 2]]},
    {"op": "execute", "sql": "SELECT ?", "params": [2**64]},
    {"op": "execute", "sql": "SELECT :a", "params": {1: 2}},
    {"op": "query"},
    {"op": "query", "sql": "SELECT ?", "params": [{"a": 1}]},
    {"sql": "SELECT 1"},
])
def test_malformed_requests_are_bad_request(sm, command):
    with pytest.raises(StateMachineError) as err:
        sm.apply(0, command)
    assert err.value.code == "BAD_REQUEST"


def test_unknown_op_and_is_write(sm):
    assert sm.is_write({"op": "execute", "sql": "SELECT 1"}) is True
    assert sm.is_write({"op": "query", "sql": "SELECT 1"}) is False
    for call in (sm.is_write, sm.query, sm.prepare, lambda r: sm.apply(0, r)):
        with pytest.raises(StateMachineError) as err:
            call({"op": "put", "key": "k"})
        assert err.value.code == "UNKNOWN_OP"


def test_failed_batch_statement_leaves_no_trace(table):
    run(table, {"op": "execute", "sql": "INSERT INTO t (name) VALUES ('kept')"})
    before = table.dump()
    with pytest.raises(StateMachineError) as err:
        run(table, {"op": "execute", "statements": [
            ["INSERT INTO t (name) VALUES ('new')"],
            ["CREATE TABLE u (x)"],
            ["UPDATE t SET n = 5"],
            ["INSERT INTO t (name) VALUES ('kept')"],  # UNIQUE violation
        ]})
    assert err.value.code == "SQL_ERROR" and "UNIQUE" in err.value.message
    assert table.dump() == before
    assert rows(table, "SELECT count(*) FROM sqlite_master WHERE name = 'u'") == [[0]]


@pytest.mark.parametrize("bad_sql", ["SELEKT 1", "INSERT INTO missing VALUES (1)", "SELECT 1; SELECT 2"])
def test_bad_sql_is_sql_error_and_still_advances_applied_index(table, bad_sql):
    applied = table.applied_index
    with pytest.raises(StateMachineError) as err:
        run(table, {"op": "execute", "sql": bad_sql})
    assert err.value.code == "SQL_ERROR"
    assert table.applied_index == applied + 1


def test_failed_command_applied_index_survives_restart(tmp_path):
    sm = SQLStateMachine(tmp_path)
    with pytest.raises(StateMachineError):
        sm.apply(0, {"op": "execute", "sql": "INSERT INTO nowhere VALUES (1)"})
    sm.close()
    assert SQLStateMachine(tmp_path).applied_index == 1


def test_restart_does_not_reapply_entry(tmp_path):
    sm = SQLStateMachine(tmp_path)
    sm.apply(0, {"op": "execute", "sql": "CREATE TABLE c (n INTEGER)"})
    command = {"op": "execute", "sql": "INSERT INTO c VALUES (1)"}
    sm.apply(1, command)
    sm.close()
    reopened = SQLStateMachine(tmp_path)
    assert reopened.applied_index == 2
    with pytest.raises(ValueError):  # the Applier replays from applied_index, never before it
        reopened.apply(1, command)
    assert rows(reopened, "SELECT count(*) FROM c") == [[1]]
    reopened.apply(2, command)
    assert rows(reopened, "SELECT count(*) FROM c") == [[2]]


def test_crash_in_the_middle_of_a_command_leaves_neither_command_nor_index(tmp_path):
    """Rule 6: the command and its applied index commit together, so kill -9 mid-command loses both."""
    script = textwrap.dedent(f"""
        import os
        from omni.statemachines.sql import SQLStateMachine
        sm = SQLStateMachine({str(tmp_path)!r})
        sm.apply(0, {{"op": "execute", "sql": "CREATE TABLE c (n)"}})
        real_run = sm._run
        def crash_after_first(sql, params):
            real_run(sql, params)
            os._exit(0)  # like kill -9: no rollback, no close
        sm._run = crash_after_first
        sm.apply(1, {{"op": "execute", "statements": [["INSERT INTO c VALUES (1)"], ["INSERT INTO c VALUES (2)"]]}})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    sm = SQLStateMachine(tmp_path)
    assert sm.applied_index == 1
    assert rows(sm, "SELECT count(*) FROM c") == [[0]]


def test_applied_index_is_in_the_database_file(tmp_path):
    sm = SQLStateMachine(tmp_path)
    sm.apply(6, {"op": "execute", "sql": "CREATE TABLE c (n)"})
    sm.close()
    plain = sqlite3.connect(tmp_path / SQLStateMachine.FILE_NAME)
    assert plain.execute("SELECT idx FROM _omni_applied").fetchall() == [(7,)]


def test_database_file_uses_wal_and_full_sync(tmp_path):
    sm = SQLStateMachine(tmp_path)
    assert rows(sm, "PRAGMA journal_mode") == [["wal"]]
    with sm._internal():  # the writer's own setting; clients cannot read it through execute
        assert sm._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


@pytest.mark.parametrize("sql", [
    "INSERT INTO t (name) VALUES ('x')", "UPDATE t SET n = 1", "DELETE FROM t", "DROP TABLE t",
    "CREATE TABLE z (a)", "ALTER TABLE t ADD COLUMN z", "CREATE INDEX i ON t (n)",
    "WITH x AS (SELECT 1) INSERT INTO t (n) SELECT * FROM x", "PRAGMA user_version = 3",
    "PRAGMA journal_mode = DELETE", "PRAGMA foreign_keys = OFF", "ATTACH ':memory:' AS other", "VACUUM",
    "BEGIN", "SELECT load_extension('x')", "REINDEX", "ANALYZE",
])
def test_query_refuses_anything_that_writes(table, sql):
    before = table.dump()
    with pytest.raises(StateMachineError) as err:
        table.query({"op": "query", "sql": sql})
    assert err.value.code == "SQL_ERROR"
    assert table.dump() == before
    assert rows(table, "PRAGMA journal_mode")[0][0] in ("wal", "memory")
    assert rows(table, "PRAGMA foreign_keys") == [[1]]


@pytest.mark.parametrize("sql, column", [
    ("PRAGMA table_info(t)", "name"), ("SELECT name FROM pragma_table_info('t')", "name"),
    ("PRAGMA index_list(t)", "name"), ("PRAGMA user_version", "user_version"),
    ("PRAGMA integrity_check", "integrity_check"), ("SELECT * FROM _omni_applied", "idx"),
])
def test_query_allows_reading_pragmas_and_the_schema(table, sql, column):
    assert column in table.query({"op": "query", "sql": sql})["columns"]


def test_execute_is_refused_by_query_and_query_works_through_the_log(table):
    with pytest.raises(StateMachineError) as err:
        table.query({"op": "execute", "sql": "DELETE FROM t"})
    assert err.value.code == "BAD_REQUEST"
    applied = table.applied_index
    assert table.apply(applied, {"op": "query", "sql": "SELECT 7"})["rows"] == [[7]]
    assert table.applied_index == applied + 1


def test_user_version_pragma_is_replicated_through_execute(table):
    run(table, {"op": "execute", "sql": "PRAGMA user_version = 42"})
    assert rows(table, "PRAGMA user_version") == [[42]]
    copy = SQLStateMachine()
    copy.restore(table.snapshot())
    assert rows(copy, "PRAGMA user_version") == [[42]]


def test_foreign_keys_are_enforced(table):
    run(table, {"op": "execute", "sql": "CREATE TABLE child (tid INTEGER REFERENCES t(id))"})
    with pytest.raises(StateMachineError) as err:
        run(table, {"op": "execute", "sql": "INSERT INTO child VALUES (99)"})
    assert "FOREIGN KEY" in err.value.message


def test_clients_cannot_write_the_applied_index_table(table):
    for sql in ["UPDATE _omni_applied SET idx = 0", "DELETE FROM _omni_applied", "DROP TABLE _omni_applied",
                "INSERT OR REPLACE INTO _omni_applied (id, idx) VALUES (0, 1)",
                "CREATE TRIGGER tr AFTER UPDATE ON _omni_applied BEGIN SELECT 1; END",
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM _omni_applied; END"]:
        with pytest.raises(StateMachineError) as err:
            run(table, {"op": "execute", "sql": sql})
        assert "_omni_applied" in err.value.message
    assert rows(table, "SELECT idx FROM _omni_applied") == [[table.applied_index]]


@pytest.mark.parametrize("source, target", [("memory", "file"), ("file", "memory"), ("file", "file")])
def test_snapshot_restore_roundtrip_sql(tmp_path, source, target):
    src = SQLStateMachine(None if source == "memory" else tmp_path / "src")
    run(src, {"op": "execute", "statements": [
        ["CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v BLOB, at DEFAULT CURRENT_TIMESTAMP)"],
        ["CREATE INDEX t_v ON t (v)"], ["INSERT INTO t (v) VALUES (randomblob(8)), (x'00ff')"]]})
    dst = SQLStateMachine(None if target == "memory" else tmp_path / "dst")
    run(dst, {"op": "execute", "sql": "CREATE TABLE stale (x)"})
    dst.restore(src.snapshot())
    assert dst.dump() == src.dump() and dst.applied_index == src.applied_index == 1
    assert rows(dst, "SELECT name FROM sqlite_master WHERE name = 'stale'") == []
    command = src.prepare({"op": "execute", "sql": "INSERT INTO t (v) VALUES (random())"})
    assert dst.apply(1, command) == src.apply(1, command)
    assert dst.dump() == src.dump()
    if target == "file":
        dst.close()
        reopened = SQLStateMachine(tmp_path / "dst")
        assert reopened.applied_index == 2 and reopened.dump() == src.dump()
        assert rows(reopened, "PRAGMA journal_mode") == [["wal"]]


def test_restore_rejects_garbage_and_keeps_the_database(table):
    run(table, {"op": "execute", "sql": "INSERT INTO t (name) VALUES ('kept')"})
    before, applied = table.dump(), table.applied_index
    plain = sqlite3.connect(":memory:")
    plain.execute("CREATE TABLE x (a)")
    for garbage in [b"", b"not sqlite", b"SQLite format 3\x00" + b"\x00" * 100, plain.serialize()]:
        with pytest.raises(ValueError):
            table.restore(garbage)
    assert table.dump() == before and table.applied_index == applied


def test_disk_errors_are_node_failures_not_sql_errors(sm):
    """A failing disk is this node's problem: answering SQL_ERROR would make replicas disagree."""
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = 10 | (3 << 8)  # SQLITE_IOERR_WRITE
    assert isinstance(sm._sql_error(io_error), SQLNodeError)
    constraint = sqlite3.IntegrityError("UNIQUE constraint failed")
    constraint.sqlite_errorcode = 19 | (8 << 8)  # SQLITE_CONSTRAINT_UNIQUE
    assert isinstance(sm._sql_error(constraint), StateMachineError)


def test_endless_recursive_query_fails_identically_instead_of_hanging_the_replica(tmp_path):
    from omni.statemachines.sql import BUDGET_MESSAGE, SQLStateMachine

    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    replicas = [SQLStateMachine(tmp_path / name) for name in ("a", "b")]
    for sm in replicas:
        sm.apply(0, {"op": "execute", "sql": "CREATE TABLE t (x)"})
        with pytest.raises(StateMachineError) as read:
            sm.query({"op": "query", "sql": endless})
        assert read.value.code == "SQL_ERROR" and read.value.message == BUDGET_MESSAGE
        with pytest.raises(StateMachineError) as write:
            sm.apply(1, {"op": "execute", "sql": "INSERT INTO t " + endless.replace("count(*)", "x")})
        assert write.value.code == "SQL_ERROR"
        assert sm.applied_index == 2 and sm.query({"op": "query", "sql": "SELECT count(*) FROM t"})["rows"] == [[0]]
        sm.apply(2, {"op": "execute", "sql": "INSERT INTO t VALUES (1)"})  # still works afterwards
    assert replicas[0].dump() == replicas[1].dump()
