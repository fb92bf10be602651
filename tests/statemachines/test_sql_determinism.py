"""Claims of the `## Determinism` section of statemachines/sql.py: replicas of the SQL machine never diverge.

Replicas receive the command exactly as the proposing node prepared it (stamp included); each test feeds
the same prepared command to two machines, or checks a refusal.
"""
import datetime
import random
import sqlite3

import pytest

from omni.statemachines import StateMachineError
from omni.statemachines.sql import SQLStateMachine
from omni.statemachines.sql_guard import static_refusal

NOW = 1700000000.123  # 2023-11-14 22:13:20.123 UTC
STAMP = {"now": NOW, "seed": 12345}


def execute(sm, sql, params=None, stamp=STAMP):
    command = {"op": "execute", "sql": sql, "stamp": stamp}
    if params is not None:
        command["params"] = params
    return sm.apply(sm.applied_index, command)


def value(sm, sql, params=None, stamp=STAMP):
    """The single value a write-path expression yields, read back from a scratch table."""
    execute(sm, "CREATE TABLE IF NOT EXISTS scratch (v)", stamp=stamp)
    execute(sm, "DELETE FROM scratch", stamp=stamp)
    execute(sm, f"INSERT INTO scratch SELECT {sql}", params, stamp=stamp)
    return sm.query({"op": "query", "sql": "SELECT v FROM scratch"})["rows"][0][0]


@pytest.fixture
def pair():
    a, b = SQLStateMachine(), SQLStateMachine()
    yield a, b
    a.close()
    b.close()


def test_prepare_stamps_the_time_and_a_seed():
    sm = SQLStateMachine()
    request = {"op": "execute", "sql": "SELECT 1"}
    first, second = sm.prepare(request), sm.prepare(request)
    assert "stamp" not in request  # the client's request is not mutated
    assert isinstance(first["stamp"]["now"], float) and isinstance(first["stamp"]["seed"], int)
    assert abs(first["stamp"]["now"] - datetime.datetime.now().timestamp()) < 3600
    assert first["stamp"]["seed"] != second["stamp"]["seed"]
    assert sm.prepare({"op": "query", "sql": "SELECT 1"}) == {"op": "query", "sql": "SELECT 1"}


def test_random_is_identical_on_two_replicas_given_same_stamp(pair):
    a, b = pair
    assert value(a, "random()") == value(b, "random()")
    other = value(a, "random()", stamp={"now": NOW, "seed": 999})
    assert other != value(b, "random()")
    assert isinstance(other, int) and -(2**63) <= other < 2**63


def test_randomblob_is_identical_on_two_replicas_given_same_stamp(pair):
    a, b = pair
    blob = value(a, "randomblob(33)")
    assert blob == value(b, "randomblob(33)") and isinstance(blob, bytes) and len(blob) == 33
    assert len(value(a, "randomblob(0)")) == 1  # SQLite's rule: N < 1 gives one byte
    assert len(value(a, "randomblob('4')")) == 4


def test_random_gives_a_new_value_for_each_row(pair):
    a, b = pair
    for sm in pair:
        execute(sm, "CREATE TABLE r (i INTEGER PRIMARY KEY, x)")
        execute(sm, "INSERT INTO r (i) VALUES (1), (2), (3), (4)")
        execute(sm, "UPDATE r SET x = random()")
    dump = a.query({"op": "query", "sql": "SELECT x FROM r"})["rows"]
    assert len({row[0] for row in dump}) == 4
    assert a.dump() == b.dump()


@pytest.mark.parametrize("sql, expected", [
    ("datetime('now')", "2023-11-14 22:13:20"),
    ("datetime('NOW')", "2023-11-14 22:13:20"),
    ("datetime()", "2023-11-14 22:13:20"),
    ("date()", "2023-11-14"),
    ("time('now')", "22:13:20"),
    ("datetime('now', '+1 day', 'start of day')", "2023-11-15 00:00:00"),
    ("strftime('%Y-%m-%d %H:%M:%f', 'now')", "2023-11-14 22:13:20.123"),
    ("strftime('%s')", "1700000000"),
    ("unixepoch('now')", 1700000000),
    ("julianday('now') = julianday('2023-11-14 22:13:20.123')", 1),
    ("CURRENT_TIMESTAMP", "2023-11-14 22:13:20"),
    ("CURRENT_DATE", "2023-11-14"),
    ("current_time", "22:13:20"),
])
def test_clock_reads_use_the_stamped_time(sql, expected):
    assert value(SQLStateMachine(), sql) == expected


def test_now_passed_as_a_parameter_or_stored_in_a_column_uses_the_stamp():
    sm = SQLStateMachine()
    assert value(sm, "datetime(?)", ["now"]) == "2023-11-14 22:13:20"
    execute(sm, "CREATE TABLE src (t)")
    execute(sm, "INSERT INTO src VALUES ('now')")
    assert value(sm, "date(t) FROM src") == "2023-11-14"


@pytest.mark.parametrize("sql", [
    "datetime('2020-02-29 12:00:00', '+1 year')", "date('2024-01-31', '+1 month')", "julianday('2000-01-01')",
    "strftime('%j %w %H', '2021-06-15 08:00')", "unixepoch('1970-01-02')", "time(0.5)",
    "datetime(1700000000, 'unixepoch')", "date('not a date')", "datetime(x'323032302d30312d3031')",
])
def test_date_functions_without_now_match_sqlite(sql):
    expected = sqlite3.connect(":memory:").execute(f"SELECT {sql}").fetchone()[0]
    assert value(SQLStateMachine(), sql) == expected


def test_current_timestamp_default_is_refused_or_stamped(pair):
    """Stamped: the DEFAULT keyword compiles to a call of the function Omni replaces."""
    for sm in pair:
        execute(sm, "CREATE TABLE ev (id INTEGER PRIMARY KEY, at TEXT DEFAULT CURRENT_TIMESTAMP, "
                    "d DEFAULT CURRENT_DATE, t DEFAULT (CURRENT_TIME), r DEFAULT (random()), "
                    "n DEFAULT (datetime('now')))")
        execute(sm, "INSERT INTO ev (id) VALUES (1)")
    a, b = pair
    row = a.query({"op": "query", "sql": "SELECT at, d, t, n FROM ev"})["rows"][0]
    assert row == ["2023-11-14 22:13:20", "2023-11-14", "22:13:20", "2023-11-14 22:13:20"]
    assert a.dump() == b.dump()


def test_string_literal_current_timestamp_is_not_refused_or_replaced():
    sm = SQLStateMachine()
    assert value(sm, "'CURRENT_TIMESTAMP' /* VACUUM */") == "CURRENT_TIMESTAMP"
    execute(sm, "CREATE TABLE notes (body TEXT DEFAULT 'now')  -- ATTACH, PRAGMA journal_mode=OFF")
    assert static_refusal("INSERT INTO notes VALUES ('VACUUM; ATTACH ''x''; sqlite_version()')") is None
    assert static_refusal('SELECT "vacuum" FROM t') is None
    execute(sm, "INSERT INTO notes DEFAULT VALUES")
    assert sm.query({"op": "query", "sql": "SELECT body FROM notes"})["rows"] == [["now"]]


@pytest.mark.parametrize("sql", [
    "SELECT datetime('now', 'localtime')", "SELECT datetime('2020-01-01', 'utc')",
    "SELECT date('now', 'LOCALTIME')", "SELECT strftime('%H', 'now', 'localtime')",
])
def test_time_zone_modifiers_are_refused(sql):
    sm = SQLStateMachine()
    with pytest.raises(StateMachineError) as err:
        execute(sm, sql)
    assert err.value.code == "SQL_ERROR" and "time zone" in err.value.message


@pytest.mark.parametrize("sql", [
    "CREATE TABLE g (a, b AS (datetime('now')))",
    "CREATE TABLE g (a, b GENERATED ALWAYS AS (date()) STORED)",
    "CREATE TABLE g (a CHECK (a < datetime('now')))",
    "CREATE TABLE g (a CHECK (a < CURRENT_TIMESTAMP))",
    "CREATE TABLE g (a, b AS (CURRENT_DATE))",
    "CREATE TABLE g (a CHECK (a > strftime('%s')))",
    "ALTER TABLE base ADD COLUMN c CHECK (c < datetime('now'))",
    "CREATE INDEX gi ON base (julianday('now') - julianday(a))",
    "CREATE INDEX gi ON base (a) WHERE a > date('now')",
])
def test_now_in_check_generated_column_or_index_is_refused(sql):
    sm = SQLStateMachine()
    execute(sm, "CREATE TABLE base (a)")
    with pytest.raises(StateMachineError) as err:
        sm.prepare({"op": "execute", "sql": sql})
    assert err.value.code == "SQL_ERROR"
    with pytest.raises(StateMachineError):
        execute(sm, sql)  # refused in apply too
    assert sm.query({"op": "query", "sql": "SELECT count(*) FROM sqlite_master"})["rows"] == [[2]]


def test_deterministic_dates_in_check_generated_column_and_index_are_allowed():
    sm = SQLStateMachine()
    execute(sm, "CREATE TABLE d (a CHECK (date(a) IS NOT NULL), b AS (date(a, '+1 day')), "
                "c DEFAULT (datetime('now')))")
    execute(sm, "CREATE INDEX di ON d (julianday(a))")
    execute(sm, "CREATE VIEW dv AS SELECT a FROM d WHERE a < datetime('now')")
    execute(sm, "INSERT INTO d (a) VALUES ('2020-01-01')")
    assert sm.query({"op": "query", "sql": "SELECT b, c FROM d"})["rows"] == [["2020-01-02", "2023-11-14 22:13:20"]]


def test_command_without_a_stamp_fails_only_if_it_needs_one():
    sm = SQLStateMachine()
    assert value(sm, "datetime('2020-01-01')", stamp=None) == "2020-01-01 00:00:00"
    for expression in ["random()", "datetime('now')", "CURRENT_TIMESTAMP", "randomblob(2)"]:
        with pytest.raises(StateMachineError) as err:
            value(sm, expression, stamp=None)
        assert "stamp" in err.value.message


@pytest.mark.parametrize("sql", [
    "SELECT total_changes()", "SELECT sqlite_version()", "SELECT sqlite_source_id()",
    "SELECT sqlite_compileoption_used('ENABLE_FTS5')", "SELECT load_extension('libx')",
    "SELECT * FROM dbstat", "VACUUM", "VACUUM INTO '/tmp/copy.db'", "ATTACH ':memory:' AS x", "DETACH x",
    "BEGIN", "COMMIT", "SAVEPOINT s", "RELEASE s", "PRAGMA journal_mode = DELETE", "PRAGMA synchronous = OFF",
    "PRAGMA foreign_keys = OFF", "PRAGMA main.cache_size = 10", "PRAGMA writable_schema = ON",
    "PRAGMA temp_store = MEMORY", "CREATE TEMP TABLE tt (a)", "CREATE TEMPORARY VIEW tv AS SELECT 1",
    "SELECT * FROM pragma_database_list", "INSERT INTO base SELECT * FROM pragma_data_version",
    "INSERT INTO base SELECT page_count FROM pragma_page_count()", "CREATE VIRTUAL TABLE pages USING dbstat",
    "CREATE VIRTUAL TABLE temp.words USING fts5(body)",
])
def test_nondeterministic_or_escaping_sql_is_refused_in_execute(sql):
    sm = SQLStateMachine()
    execute(sm, "CREATE TABLE base (a)")
    with pytest.raises(StateMachineError) as err:
        execute(sm, sql)
    assert err.value.code == "SQL_ERROR"
    assert "not authorized" not in err.value.message  # the client is told why


def test_sqlite_extensions_that_read_settings_internally_still_work(pair):
    """fts5 reads PRAGMA data_version on the connection; rtree and json_each are deterministic."""
    for sm in pair:
        execute(sm, "CREATE VIRTUAL TABLE docs USING fts5(body)")
        execute(sm, "INSERT INTO docs SELECT value FROM json_each(?)", ['["hello world", "bye"]'])
        execute(sm, "CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1)")
        execute(sm, "INSERT INTO boxes VALUES (1, 0, 5)")
    a, b = pair
    assert a.query({"op": "query", "sql": "SELECT body FROM docs WHERE docs MATCH 'hello'"})["rows"] == \
        [["hello world"]]
    assert a.dump() == b.dump()


def test_refused_function_hidden_from_the_tokenizer_is_refused_when_it_runs():
    """SQLite evaluates DEFAULT expressions without asking the authorizer: the stand-in refuses."""
    sm = SQLStateMachine()
    execute(sm, 'CREATE TABLE sneaky (a, v DEFAULT ("sqlite_version"()))')
    with pytest.raises(StateMachineError) as err:
        execute(sm, "INSERT INTO sneaky (a) VALUES (1)")
    assert "sqlite_version" in err.value.message
    assert sm.query({"op": "query", "sql": "SELECT count(*) FROM sneaky"})["rows"] == [[0]]


def test_changes_and_last_insert_rowid_are_identical_after_a_restart(tmp_path):
    steady, restarted = SQLStateMachine(tmp_path / "a"), SQLStateMachine(tmp_path / "b")
    setup = ["CREATE TABLE s (id INTEGER PRIMARY KEY, c, l)", "INSERT INTO s (c) VALUES (1), (2), (3)"]
    for sql in setup:
        execute(steady, sql)
        execute(restarted, sql)
    restarted.close()
    restarted = SQLStateMachine(tmp_path / "b")
    command = {"op": "execute", "sql": "INSERT INTO s (c, l) VALUES (changes(), last_insert_rowid())"}
    assert steady.apply(2, command) == restarted.apply(2, command)
    assert steady.dump() == restarted.dump()
    assert steady.query({"op": "query", "sql": "SELECT c, l FROM s WHERE id = 4"})["rows"] == [[1, 0]]


def test_two_replicas_fed_the_same_commands_have_identical_dumps(tmp_path):
    rng = random.Random(7)
    proposer = SQLStateMachine()  # stamps commands, as the receiving node does
    a, b = SQLStateMachine(tmp_path / "a"), SQLStateMachine(tmp_path / "b")
    setup = [
        "CREATE TABLE acct (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, bal INT CHECK (bal >= 0), "
        "opened DEFAULT CURRENT_TIMESTAMP, token BLOB DEFAULT (randomblob(4)))",
        "CREATE TABLE audit (at TEXT, what TEXT, r INT)",
        "CREATE TRIGGER acct_audit AFTER UPDATE ON acct BEGIN "
        "INSERT INTO audit VALUES (datetime('now'), NEW.name, random()); END",
    ]
    commands = [proposer.prepare({"op": "execute", "sql": sql}) for sql in setup]
    templates = [
        ("INSERT INTO acct (name, bal) VALUES (?, ?)", lambda: [f"u{rng.randrange(40)}", rng.randrange(-5, 100)]),
        ("UPDATE acct SET bal = bal - ? WHERE name = ?", lambda: [rng.randrange(60), f"u{rng.randrange(40)}"]),
        ("DELETE FROM acct WHERE bal < ?", lambda: [rng.randrange(10)]),
        ("INSERT INTO audit VALUES (strftime('%Y-%m-%d %H:%M:%f', 'now'), 'tick', abs(random()) % 1000)", list),
        ("INSERT INTO audit SELECT datetime('now', ?), 'bulk', changes() FROM acct LIMIT 3",
         lambda: [f"+{rng.randrange(100)} minutes"]),
        ("INSERT INTO nowhere VALUES (1)", list),
    ]
    for _ in range(400):
        if rng.random() < 0.2:
            statements = [[sql, make()] for sql, make in rng.sample(templates, 3)]
            request = {"op": "execute", "statements": statements}
        else:
            sql, make = rng.choice(templates)
            request = {"op": "execute", "sql": sql, "params": make()}
        commands.append(proposer.prepare(request))
    outcomes = {"a": [], "b": []}
    for index, command in enumerate(commands):
        if index == 150:  # b restarts
            b.close()
            b = SQLStateMachine(tmp_path / "b")
        if index == 300:  # b is replaced by a snapshot of a
            b.restore(a.snapshot())
        for name, sm in (("a", a), ("b", b)):
            try:
                outcomes[name].append(sm.apply(index, command))
            except StateMachineError as e:
                outcomes[name].append(("error", e.message))
    assert outcomes["a"] == outcomes["b"]
    assert a.dump() == b.dump()
    assert a.applied_index == b.applied_index == len(commands)
    errors = sum(1 for o in outcomes["a"] if isinstance(o, tuple))
    audit = a.query({"op": "query", "sql": "SELECT count(*) FROM audit"})["rows"][0][0]
    assert 0 < errors < len(commands) and audit > 50  # the workload both failed and succeeded a lot


def test_tokenizer_skips_strings_comments_and_quoted_identifiers():
    from omni.statemachines.sql_guard import tokens
    sql = """SELECT 'it''s VACUUM', "CURRENT_TIMESTAMP", [now], x'00ff' -- ATTACH
             /* PRAGMA
                journal_mode */ FROM t WHERE a = :name"""
    words = [text for kind, text in tokens(sql) if kind == "word"]
    assert words == ["SELECT", "FROM", "T", "WHERE", "A"]
    kinds = [kind for kind, _ in tokens(sql)]
    assert kinds.count("string") == 1 and kinds.count("quoted") == 2 and "blob" in kinds and "param" in kinds
