"""Real 3-node clusters running the `sql` state machine, started through the CLI (issue 4, end to end).

Claims: SQL executes and queries with both kinds of parameters and all three read levels; replicas never
diverge (a seeded random workload from several clients leaves byte-identical dumps of every node's SQLite
file, and random() and the clock read back the same everywhere); a failed statement in a batch leaves no
trace on any node; the cluster keeps serving SQL with one node killed by SIGKILL; a retried write is
applied once even after every node was killed and restarted (the session table lives in the database);
and `omni sql`, one-shot and as a shell driven through stdin or a terminal, speaks to a real cluster.
"""
import json
import os
import pty
import random
import re
import select
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from omni.cli.sql import is_query, split_statements
from omni.client import Client, OmniError
from omni.statemachines.sql import SQLStateMachine

from .cluster import LocalCluster, request_until_outcome, wait_for


@pytest.fixture
def sql_cluster(tmp_path):
    c = LocalCluster(tmp_path, state_machine="sql").start()
    try:
        c.leader()
        yield c
    finally:
        c.stop()


def local_rows(cluster, pid, sql, params=None):
    """The rows node ``pid`` answers from its own state, or None if it does not answer."""
    try:
        with Client([cluster.endpoint(pid)], timeout=1.0, retries=0) as c:
            return c.query(sql, params, consistency="local")["rows"]
    except OmniError:
        return None


def wait_until_settled(cluster, count_sql, expected):
    """Every node has applied the same log prefix and its local count is ``expected``."""
    def settled():
        counts = {p: local_rows(cluster, p, count_sql) for p in cluster.pids}
        applied = {p: local_rows(cluster, p, "SELECT idx FROM _omni_applied") for p in cluster.pids}
        return all(c == [[expected]] for c in counts.values()) and len({str(a) for a in applied.values()}) == 1
    wait_for(settled, what=f"every node to hold {expected} rows at the same applied index")


def file_dump(cluster, pid):
    """Node ``pid``'s database file, opened read-only, as SQL text; the applied index left out."""
    path = cluster.root / f"node-{pid}" / "statemachine" / SQLStateMachine.FILE_NAME
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [line for line in conn.iterdump() if "_omni_applied" not in line]
    finally:
        conn.close()


# --- execute and query -------------------------------------------------------------------------------

def test_select_1_plus_1_returns_2(sql_cluster):
    with sql_cluster.client(1) as c:
        assert c.query("SELECT 1+1") == {"columns": ["1+1"], "rows": [[2]]}


def test_create_insert_select_on_one_node_and_select_from_another(sql_cluster):
    with sql_cluster.client(1) as c:
        c.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INT, photo BLOB)")
        first = c.execute("INSERT INTO people (name, age, photo) VALUES (?, ?, ?)", ["ada", 36, b"\x00\xff"])
        named = c.execute("INSERT INTO people (name, age) VALUES (:name, :age)", {"name": "alan", "age": 41})
        batch = c.execute_many([["INSERT INTO people (name) VALUES (?)", ["grace"]],
                                "UPDATE people SET age = age + 1 WHERE age IS NOT NULL"])
        cte = c.execute("WITH n(x) AS (VALUES ('x1'), ('x2')) INSERT INTO people (name) SELECT x FROM n")
        mine = c.query("SELECT name, age, photo FROM people WHERE id = ?", [1])
    assert first["results"] == [{"rows_affected": 1, "last_insert_rowid": 1}]
    assert named["results"] == [{"rows_affected": 1, "last_insert_rowid": 2}]
    assert batch["results"] == [{"rows_affected": 1, "last_insert_rowid": 3},
                                {"rows_affected": 2, "last_insert_rowid": 3}]
    assert cte["results"] == [{"rows_affected": 2, "last_insert_rowid": 5}]
    assert mine == {"columns": ["name", "age", "photo"], "rows": [["ada", 37, b"\x00\xff"]]}

    expected = [["ada", 37], ["alan", 42], ["grace", None], ["x1", None], ["x2", None]]
    sql = "SELECT name, age FROM people ORDER BY id"
    with sql_cluster.client(2) as c:
        assert c.query(sql)["rows"] == expected  # linearizable: sees every acknowledged write
        assert c.query(sql, consistency="leader")["rows"] == expected
    assert wait_for(lambda: local_rows(sql_cluster, 3, sql) == expected, what="a local read at node 3")


# --- replicas never diverge ------------------------------------------------------------------------------

class Worker(threading.Thread):
    """One client's seeded random SQL workload through its own choice of nodes."""

    def __init__(self, cluster, number, ops=30):
        super().__init__(daemon=True)
        first = cluster.pids[number % len(cluster.pids)]  # spread the clients over the nodes
        order = [first] + [p for p in cluster.pids if p != first]
        self.client = cluster.client(*order, deadline=60.0)
        self.rng, self.owner, self.ops = random.Random(1000 + number), f"w{number}", ops
        self.ok = self.sql_errors = 0
        self.unexpected: list[Exception] = []

    def run(self):
        try:
            for _ in range(self.ops):
                try:
                    self.one_op()
                    self.ok += 1
                except OmniError as e:
                    if e.code != "SQL_ERROR":
                        raise
                    self.sql_errors += 1
        except Exception as e:  # reported by the test, not lost in a thread
            self.unexpected.append(e)
        finally:
            self.client.close()

    def one_op(self):
        rng, owner, n = self.rng, self.owner, self.rng.randint(0, 40)
        kind = rng.choice(["insert", "insert", "named", "random", "update", "delete", "batch"])
        if kind == "insert":  # a repeated (owner, n) violates UNIQUE: SQL_ERROR, the same everywhere
            self.client.execute("INSERT INTO items (owner, n, note) VALUES (?, ?, ?)", [owner, n, f"v{n}"])
        elif kind == "named":
            self.client.execute("INSERT INTO items (owner, n, note) VALUES (:o, :n, :t)",
                                {"o": owner, "n": n, "t": rng.random()})
        elif kind == "random":
            self.client.execute("INSERT INTO items (owner, n, note, at) VALUES (?, ?, hex(randomblob(6)), "
                                "strftime('%Y-%m-%d %H:%M:%f', 'now'))", [owner, n])
        elif kind == "update":
            self.client.execute("UPDATE items SET note = note || '+', r = random() WHERE owner = ? AND n < ?",
                                [owner, n])
        elif kind == "delete":
            self.client.execute("DELETE FROM items WHERE owner = ? AND n = ?", [owner, n])
        else:
            self.client.execute_many([["INSERT INTO items (owner, n) VALUES (?, ?)", [owner, n + k]]
                                      for k in range(rng.randint(2, 4))])


def test_random_workload_from_several_clients_leaves_identical_databases(sql_cluster):
    with sql_cluster.client() as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, owner TEXT, n INT, note, r INT, "
                  "at TEXT DEFAULT CURRENT_TIMESTAMP, UNIQUE (owner, n))")
    workers = [Worker(sql_cluster, i) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert not any(w.is_alive() for w in workers), "a worker never finished"
    assert [w.unexpected for w in workers] == [[]] * len(workers)
    assert sum(w.ok for w in workers) > 60 and sum(w.sql_errors for w in workers) > 0

    with sql_cluster.client() as c:
        total = c.query("SELECT count(*) FROM items")["rows"][0][0]
    assert total > 0
    wait_until_settled(sql_cluster, "SELECT count(*) FROM items", total)
    dumps = {pid: file_dump(sql_cluster, pid) for pid in sql_cluster.pids}
    assert sum(line.startswith('INSERT INTO "items"') for line in dumps[1]) == total
    assert any(line.startswith('INSERT INTO "_omni_sessions"') for line in dumps[1])  # replicated too
    assert dumps[1] == dumps[2] == dumps[3]


def test_random_and_the_clock_read_back_the_same_on_every_node(sql_cluster):
    with sql_cluster.client(1) as c:
        c.execute("CREATE TABLE stamped (id INTEGER PRIMARY KEY, r INT, b BLOB, now TEXT, ts TEXT, "
                  "jd REAL, dflt TEXT DEFAULT CURRENT_TIMESTAMP)")
        c.execute("INSERT INTO stamped (r, b, now, ts, jd) VALUES "
                  "(random(), randomblob(16), datetime('now'), CURRENT_TIMESTAMP, julianday('now'))")
        with pytest.raises(OmniError) as refused:
            c.execute("INSERT INTO stamped (now) VALUES (datetime('now', 'localtime'))")
    assert refused.value.code == "SQL_ERROR" and "localtime" in refused.value.message

    sql = "SELECT r, b, now, ts, jd, dflt FROM stamped"
    seen = {pid: wait_for(lambda: local_rows(sql_cluster, pid, sql), what=f"the row at node {pid}")
            for pid in sql_cluster.pids}
    assert seen[1] == seen[2] == seen[3] and len(seen[1]) == 1
    r, b, now, ts, jd, dflt = seen[1][0]
    assert isinstance(r, int) and isinstance(b, bytes) and len(b) == 16 and isinstance(jd, float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", now) and now == ts == dflt


def test_a_failed_statement_in_a_batch_leaves_no_trace_on_any_node(sql_cluster):
    with sql_cluster.client(2) as c:
        c.execute("CREATE TABLE u (name TEXT PRIMARY KEY)")
        c.execute("INSERT INTO u VALUES ('a')")
        with pytest.raises(OmniError) as failed:
            c.execute_many(["INSERT INTO u VALUES ('b')", "INSERT INTO u VALUES ('a')",
                            "INSERT INTO u VALUES ('c')"])
        c.execute("INSERT INTO u VALUES ('z')")  # after the failed entry in the log
    assert failed.value.code == "SQL_ERROR" and "UNIQUE" in failed.value.message
    sql = "SELECT name FROM u ORDER BY name"
    for pid in sql_cluster.pids:
        rows = wait_for(lambda: (r := local_rows(sql_cluster, pid, sql)) and ["z"] in r and r,
                        what=f"node {pid} to apply past the failed batch")
        assert rows == [["a"], ["z"]], f"node {pid}"


# --- faults ----------------------------------------------------------------------------------------------

def test_one_node_killed_with_sigkill_the_cluster_keeps_serving_sql(sql_cluster):
    with sql_cluster.client() as c:
        c.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, phase TEXT)")
        c.execute("INSERT INTO log (phase) VALUES ('before')")
    victim = sql_cluster.leader()  # the hardest minority to lose: a new leader must be elected
    sql_cluster.kill(victim)
    alive = [p for p in sql_cluster.pids if p != victim]
    with sql_cluster.client(*alive) as c:
        for i in range(20):
            c.execute("INSERT INTO log (phase) VALUES (?)", [f"after-{i}"])
        assert c.query("SELECT count(*) FROM log")["rows"] == [[21]]
        assert c.query("SELECT phase FROM log WHERE id = 1", consistency="linearizable")["rows"] == [["before"]]
    sql_cluster.start(victim)  # it comes back from its files and catches up
    assert wait_for(lambda: local_rows(sql_cluster, victim, "SELECT count(*) FROM log") == [[21]],
                    what="the restarted node to catch up")


def test_a_retry_after_every_node_was_killed_and_restarted_is_not_applied_again(sql_cluster):
    with sql_cluster.client() as c:
        c.execute("CREATE TABLE once (id INTEGER PRIMARY KEY, v)")
    write = {"op": "execute", "sql": "INSERT INTO once (v) VALUES (random())", "client": "c-restart", "seq": 5}
    first = request_until_outcome(sql_cluster, 1, {**write, "id": 1})
    assert first["ok"] and first["result"]["results"][0]["rows_affected"] == 1
    wait_until_settled(sql_cluster, "SELECT count(*) FROM once", 1)  # so every node's file holds it
    for pid in sql_cluster.pids:
        sql_cluster.kill(pid)
    sql_cluster.start()
    sql_cluster.leader()
    for pid, rid in ((2, 2), (1, 3)):  # the retry, at two nodes after the restart
        again = request_until_outcome(sql_cluster, pid, {**write, "id": rid})
        assert again["result"] == first["result"], f"node {pid}"
    fresh = request_until_outcome(sql_cluster, 3, {**write, "seq": 6, "id": 4})
    assert fresh["result"]["results"][0]["last_insert_rowid"] == 2
    with sql_cluster.client() as c:
        assert c.query("SELECT count(*) FROM once")["rows"] == [[2]]


# --- the command line ----------------------------------------------------------------------------------

def omni(cluster, command, *args, stdin=None):
    """`omni COMMAND --endpoints ... ARGS` in a process of its own."""
    endpoints = ",".join(cluster.endpoint(p) for p in cluster.pids)
    return subprocess.run([sys.executable, "-m", "omni.cli", command, "--endpoints", endpoints, "--timeout", "30",
                           *args], input=stdin, capture_output=True, text=True, timeout=120)


TRIGGER = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM u; END;"
CTE_READ = "/* ; */ -- x\n  with a AS (SELECT 1) SELECT * FROM a"
CTE_WRITE = "WITH a(n) AS (VALUES (1)) INSERT INTO t SELECT n FROM a"


@pytest.mark.parametrize("text, expected", [
    ("SELECT 1; SELECT 'a;b' -- c;\n;", [("SELECT 1;", True), ("SELECT 'a;b' -- c;\n;", True)]),
    (f"{TRIGGER} INSERT INTO t VALUES (1)", [(TRIGGER, False), ("INSERT INTO t VALUES (1)", False)]),
    (CTE_READ, [(CTE_READ, True)]),
    (CTE_WRITE, [(CTE_WRITE, False)]),
    ("PRAGMA user_version; PRAGMA user_version = 2; pragma table_info(t)",
     [("PRAGMA user_version;", True), ("PRAGMA user_version = 2;", False), ("pragma table_info(t)", True)]),
    ("EXPLAIN SELECT 1; VALUES (1); REPLACE INTO t VALUES (2); -- only a comment",
     [("EXPLAIN SELECT 1;", True), ("VALUES (1);", True), ("REPLACE INTO t VALUES (2);", False)]),
])
def test_omni_sql_splits_statements_and_sends_reads_as_query(text, expected):
    assert [(s, is_query(s)) for s in split_statements(text)] == expected


def test_omni_sql_one_shot_executes_queries_and_fails_with_one_line(sql_cluster):
    created = omni(sql_cluster, "sql", "CREATE TABLE pets (name TEXT PRIMARY KEY, legs INT)")
    inserted = omni(sql_cluster, "sql", "INSERT INTO pets VALUES ('cat', 4), ('bird', 2)")
    assert created.returncode == 0 and inserted.returncode == 0, created.stderr + inserted.stderr
    assert inserted.stdout == "2 rows affected, last insert rowid 2\n"
    # `--` ends the options, so a statement may begin with a comment's `--`
    table = omni(sql_cluster, "sql", "--", "-- a comment first\nSELECT name, legs FROM pets ORDER BY legs")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == ["+------+------+", "| name | legs |", "+------+------+",
                                         "| bird |    2 |", "| cat  |    4 |", "+------+------+"]
    as_json = omni(sql_cluster, "sql", "-o", "json", "--consistency", "local", "SELECT count(*) AS n FROM pets")
    assert json.loads(as_json.stdout) == {"columns": ["n"], "rows": [[2]]}
    failed = omni(sql_cluster, "sql", "INSERT INTO pets VALUES ('cat', 3)")
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.startswith("error: SQL_ERROR: ") and failed.stderr.count("\n") == 1, failed.stderr


SCRIPT = """\
CREATE TABLE pets (name TEXT, legs INT);
INSERT INTO pets VALUES ('cat', 4),
  ('bird', 2);
.tables
.schema pets
SELECT name, legs
  FROM pets
  ORDER BY legs;
.consistency local
SELECT count(*) AS n FROM pets;
.nodes
.bogus
SELECT nope FROM pets;
SELECT 'still here' AS s;
.quit
SELECT 'after quit';
"""


def test_omni_sql_shell_reads_statements_and_dot_commands_from_stdin(sql_cluster):
    run = omni(sql_cluster, "sql", stdin=SCRIPT)
    out = run.stdout.splitlines()
    assert "Traceback" not in run.stderr
    errors = run.stderr.splitlines()
    assert len(errors) == 2 and errors[0].startswith("error: BAD_REQUEST: unknown command .bogus")
    assert errors[1].startswith("error: SQL_ERROR: no such column: nope")
    assert run.returncode == 1  # something failed; a script can tell
    assert "2 rows affected, last insert rowid 2" in out
    assert "pets" in out and "CREATE TABLE pets (name TEXT, legs INT);" in out  # .tables, .schema
    assert "| bird |    2 |" in out and out.index("| bird |    2 |") < out.index("| cat  |    4 |")
    assert "consistency: local" in out and "| 2 |" in out
    for pid in sql_cluster.pids:  # .nodes: a row per endpoint, naming the node behind it
        assert any(re.fullmatch(rf"{re.escape(sql_cluster.endpoint(pid))}\s+{pid}\s+(leader\s+\*|follower)", line)
                   for line in out), (pid, out)
    assert len([line for line in out if line.startswith("leader: ")]) == 1
    assert "| still here |" in out and not any("after quit" in line for line in out)


def test_omni_sql_shell_nodes_names_the_leader_and_its_endpoint(sql_cluster):
    def leader_line():  # on a loaded machine an election may be under way: ask again until it is over
        run = omni(sql_cluster, "sql", stdin=".nodes\n")
        assert run.returncode == 0, run.stderr
        return re.search(r"^leader: node (\d+) at (\S+)$", run.stdout, re.M)

    named = wait_for(leader_line, what="a leader in .nodes")
    assert named.group(2) == sql_cluster.endpoint(int(named.group(1)))


def test_omni_sql_shell_piped_one_line(sql_cluster):
    run = omni(sql_cluster, "sql", stdin="SELECT 1+1;\n")
    assert run.returncode == 0 and run.stderr == ""
    assert run.stdout.splitlines() == ["+-----+", "| 1+1 |", "+-----+", "|   2 |", "+-----+"]


def test_omni_sql_shell_at_a_terminal_prompts_and_keeps_history(sql_cluster, tmp_path):
    """A statement typed over two lines runs once complete and is saved as one entry in ~/.omni_history."""
    home = tmp_path / "home"
    home.mkdir()
    endpoints = ",".join(sql_cluster.endpoint(p) for p in sql_cluster.pids)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "omni.cli", "sql", "--endpoints", endpoints],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**os.environ, "HOME": str(home), "TERM": "dumb"})
    os.close(slave)
    seen = bytearray()

    def read_until(marker: bytes) -> None:
        end = time.monotonic() + 60
        while marker not in seen and time.monotonic() < end:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:  # the shell exited
                    break
        assert marker in seen, bytes(seen).decode(errors="replace")

    try:
        read_until(b"omni> ")
        os.write(master, b"SELECT 40 +\n")
        read_until(b"...> ")
        os.write(master, b"  2 AS answer;\n")
        read_until(b"|     42 |")
        os.write(master, b".quit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    history = (home / ".omni_history").read_text().splitlines()
    assert "SELECT 40 + 2 AS answer;" in history and ".quit" in history
