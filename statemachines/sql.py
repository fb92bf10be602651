"""The `sql` state machine: a replicated SQLite database (the ChiselStore idea).

Every node applies the same ``execute`` commands, in log order, to its own SQLite file, so every node holds
the same database; ``query`` reads the local copy. All statements of one command run in one transaction,
together with the update of the applied log index in the table ``_omni_applied`` (DESIGN.md rule 6): after a
crash the file holds either the command and its index or neither, so a restart never applies an entry twice
nor skips one. A command that fails (bad SQL, a constraint, a refused construct) leaves no trace but still
advances the applied index, in a transaction of its own, because every replica fails it the same way. The
write connection runs in WAL mode with ``synchronous=FULL``; queries use a second, read-only connection.
Between `begin_batch` and `end_batch` (the Applier's run of decided entries) each command still commits on its
own, with ``synchronous=NORMAL``: no fsync per command (a commit is then safe from a crash of the process, not
yet from one of the machine), and `end_batch` fsyncs the WAL once, with a commit of the applied index under
``synchronous=FULL``, before the Applier answers anyone. A machine crash inside a run loses at most the run's
last commits, never part of one: the file comes back at an earlier applied index, and the node replays the log
from there (or restores its snapshot file, which `_restore_at_start` finds ahead). One fsync per command made
pipelined inserts wait on the disk once per entry on every node (about 1,000 inserts/s at 400 in flight; now
about 2,400). Which SQL is refused, and why, is in sql_guard.py; the stamped stand-ins for the clock and
randomness are in sql_stamp.py.

The client-session table of exactly-once retries (PROTOCOL.md section 6) lives in the database too
(``keeps_sessions``, statemachines/base.py): the database is not rebuilt from the log after a restart, so
a table kept in memory would come back empty and a retried write would run twice. `_SessionTable` keeps
it in ``_omni_clients`` and ``_omni_sessions``, written in the same transaction as the command whose
outcome it records, with the window of the Applier's in-memory `Sessions` (the same on every node, since
it orders by log index, never by time). Both tables are created with the first session and are
read-only to clients, like ``_omni_applied``.

Ops: ``execute {sql, params?}`` or ``execute {statements: [[sql, params?], ...]}`` (a write; one statement
per entry) -> ``{"results": [{"rows_affected", "last_insert_rowid"}, ...]}``, where ``last_insert_rowid``
is the rowid of the latest INSERT in this command so far, 0 before any; ``query {sql, params?}`` (a read)
-> ``{"columns": [...], "rows": [[...], ...]}``. Parameters are a list (positional) or a map (named).

## Determinism

Replicas must never diverge, so nothing a command does may depend on the node that applies it.
``prepare()`` on the node that receives a write stamps it with ``{"now": <unix time>, "seed": <int>}``;
``apply()`` uses only the command, the stamp and the database.

Stamped (made deterministic from the stamp):
- ``random()``, ``randomblob(N)``: SHA-256 in counter mode keyed by the stamped seed.
- ``date``, ``time``, ``datetime``, ``julianday``, ``unixepoch``, ``strftime`` (and ``timediff`` where
  SQLite has it) with ``'now'`` or with no time value: the stamped time, to the millisecond. Other
  arguments go to SQLite's own implementation, so all modifiers behave as usual.
- ``CURRENT_TIMESTAMP``, ``CURRENT_DATE``, ``CURRENT_TIME``, including in ``DEFAULT`` clauses: SQLite
  compiles these keywords into calls of same-named functions, which Omni replaces.
- ``changes()`` and ``last_insert_rowid()``: every command starts with Omni's own write of the applied
  index (an ``INSERT OR REPLACE`` of rowid 0), so they read 1 and 0 at the start of every command, on
  every replica, restarted or not.

Refused with ``SQL_ERROR`` (in ``prepare()`` when visible in the text, always in ``apply()``):
- the ``'localtime'`` and ``'utc'`` date modifiers (they depend on the node's time zone);
- ``'now'``, ``CURRENT_*`` and argument-less date functions in CHECK constraints, generated columns and
  index expressions (plain SQLite refuses most of these too: the value would depend on when a row is
  written, and a file whose schema plain SQLite rejects would be a trap);
- ``total_changes()`` (counts since the connection opened), ``sqlite_version()``, ``sqlite_source_id()``,
  ``sqlite_compileoption_get/used()``, ``fts5_source_id()`` (differ between SQLite builds),
  ``sqlite_offset()``, ``load_extension()``, ``fts3_tokenizer()``; the node-local tables ``dbstat``,
  ``sqlite_stmt``, ``sqlite_dbpage``;
- ``ATTACH``, ``DETACH``, ``VACUUM`` (and ``VACUUM INTO``), ``BEGIN``/``COMMIT``/``ROLLBACK``/
  ``SAVEPOINT``/``RELEASE`` (a command is one transaction), temporary tables/views/indexes/triggers
  (they live in one connection and vanish on restart);
- every ``PRAGMA`` that sets something, except ``user_version`` and ``application_id`` (stored in the
  file, so replicated); ``journal_mode=WAL``, ``synchronous=FULL``, ``foreign_keys=ON`` and
  ``recursive_triggers=OFF`` are fixed on every node. Reading a setting is harmless (execute returns no
  rows), but in execute the table-valued ``pragma_*`` functions that could copy a node-local value
  (``pragma_page_count``, ``pragma_database_list``, ...) into a table are refused; schema introspection
  (``pragma_table_info`` and friends) is allowed.

Not refused, but deterministic all the same: ``'now'`` that arrives at run time (from a parameter or a
column) inside a CHECK constraint, index or generated column reads the stamped time, where plain SQLite
would raise an error. Assumed, not enforced: every replica runs the same SQLite version (query plans
decide the order of rows an unordered ``INSERT ... SELECT`` sees), and no table reaches rowid 2**63-1
(SQLite then picks a random rowid). Queries run without stamps: ``SELECT random()`` in a query is really
random, which is harmless.
"""
from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack

from .base import SESSION_CLIENTS, SESSION_SEQS, StateMachine, StateMachineError, session_too_old
from .sql_guard import CLIENTS_TABLE, META_TABLE, OMNI_TABLES, SESSIONS_TABLE, Guard, static_refusal
from .sql_stamp import Stamper

#: SQLite result codes (primary, low byte) that describe this node, not the command: never SQL_ERROR
_NODE_ERRORS = {5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 26}  # BUSY LOCKED NOMEM READONLY INTERRUPT IOERR
#                                                         CORRUPT FULL CANTOPEN PROTOCOL NOTADB
_MAX_INT = 2**63
_ACTIVE_INDEX = f"{CLIENTS_TABLE}_active"  # orders clients by recency, for forgetting the oldest


STEP_GRANULARITY = 1000  # SQLite VM instructions between two calls of the progress handler
STEP_BUDGET = 50_000  # calls: a statement may run 50 million VM instructions, then it fails
BUDGET_MESSAGE = (f"statement stopped after {STEP_GRANULARITY * STEP_BUDGET:,} SQLite steps "
                  f"(an endless WITH RECURSIVE?); every replica stops it at the same step")


class StepBudget:
    """Stops a user statement after a fixed number of SQLite VM steps.

    A statement that never ends would hang the Applier of every replica, and again at every replay.
    SQLite counts VM instructions, not time, so the same statement on the same data stops at the same
    step on every node: the failure is an SQL_ERROR every replica agrees on. Omni's own statements run
    outside `running()` and are never stopped.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.active = False
        self.exhausted = False

    def __call__(self) -> int:
        if not self.active:
            return 0
        self.calls += 1
        if self.calls > STEP_BUDGET:
            self.exhausted = True
            return 1  # non-zero: SQLite interrupts the statement
        return 0

    @contextlib.contextmanager
    def running(self):
        self.calls, self.active, self.exhausted = 0, True, False
        try:
            yield
        finally:
            self.active = False


class SQLNodeError(RuntimeError):
    """The node's database failed (I/O, disk full, corruption): the node must stop, not answer."""


class SQLStateMachine(StateMachine):
    """SQLite, replicated: ``execute`` goes through the log, ``query`` reads the local database.

    Not thread-safe: one thread at a time (the Applier actor) calls it; that thread need not be the one
    that created it.
    """

    name = "sql"
    FILE_NAME = "state.sqlite3"
    keeps_sessions = True

    def __init__(self, data_dir: Path | str | None = None):
        super().__init__(Path(data_dir) if data_dir is not None else None)
        self._guard, self._read_guard = Guard(), Guard()
        self._stamper = Stamper(self._guard)
        self._budget = StepBudget()
        nonce = uuid.uuid4().hex  # keeps Omni's statements out of reach of the shared statement cache
        self._set_applied_sql = f"INSERT OR REPLACE INTO {META_TABLE} (id, idx) VALUES (0, ?) -- {nonce}"
        self._conn, self._reader = self._open()
        self._applied = self._read_applied()
        self._batching = False  # between begin_batch and end_batch: commits without fsync
        self._batch_start = self._applied  # the applied index when the batch began (durable: FULL before)
        self.sessions = _SessionTable(self._conn, self._internal)

    # --- opening ---

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        if self.data_dir is None:
            uri = f"file:omni-sql-{uuid.uuid4().hex}?mode=memory&cache=shared"
            writer = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            reader_uri = uri
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path = self.data_dir / self.FILE_NAME
            writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            writer.execute("PRAGMA journal_mode=WAL")
            reader_uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        for pragma in ("synchronous=FULL", "foreign_keys=ON", "recursive_triggers=OFF"):
            writer.execute(f"PRAGMA {pragma}")
        writer.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} "
                       "(id INTEGER PRIMARY KEY CHECK (id = 0), idx INTEGER NOT NULL)")
        self._stamper.install(writer)
        writer.set_authorizer(self._guard.write_authorizer)
        writer.set_progress_handler(self._budget, STEP_GRANULARITY)
        reader = sqlite3.connect(reader_uri, uri=True, isolation_level=None, check_same_thread=False)
        for pragma in ("query_only=ON", "foreign_keys=ON", "recursive_triggers=OFF"):
            reader.execute(f"PRAGMA {pragma}")
        reader.set_authorizer(self._read_guard.read_authorizer)
        reader.set_progress_handler(self._budget, STEP_GRANULARITY)
        return writer, reader

    @contextlib.contextmanager
    def _internal(self):
        """Run Omni's own statements (the applied index, sessions, dumps) past the client-facing authorizer.

        Nestable: the session table's statements run inside the applied-index transaction's block."""
        outer, self._guard.internal = self._guard.internal, True
        try:
            yield
        finally:
            self._guard.internal = outer

    def _read_applied(self) -> int:
        with self._internal():
            row = self._conn.execute(f"SELECT idx FROM {META_TABLE} WHERE id = 0").fetchone()
        return row[0] if row else 0

    # --- the StateMachine interface ---

    @property
    def applied_index(self) -> int:
        return self._applied

    def is_write(self, request: dict) -> bool:
        return _op(request) == "execute"

    def prepare(self, request: dict) -> dict:
        if _op(request) != "execute":
            return request
        for sql, _ in _statements(request):
            _refuse_statically(sql)
        return {**request, "stamp": {"now": time.time(), "seed": secrets.randbits(63)}}

    def apply(self, index: int, command: dict, session: tuple[str, int] | None = None) -> Any:
        """Apply one decided entry. An index below `applied_index` raises ValueError: replay after a
        restart must start at `applied_index`. A failed command raises StateMachineError and still
        counts as applied. With ``session=(client, seq)`` a recorded pair is answered from the session
        table (base.py, `StateMachine.apply`) and a new one is recorded with the command."""
        if not isinstance(index, int) or index < self._applied:
            raise ValueError(f"entry {index} is already applied (applied_index={self._applied})")
        try:
            known = self.sessions.lookup(*session) if session is not None else None
        except StateMachineError:  # too old to tell: applied as an error, alike on every node
            self._record_applied(index + 1)
            raise
        if known is not None:
            self._record_applied(index + 1)
            return _replay(known)
        try:
            op = _op(command)
            if op == "execute":
                return self._execute(index, _statements(command), command.get("stamp"), session)
            result = self._query(command)  # a read that went through the log
        except StateMachineError as e:
            self._record_applied(index + 1, session, (False, None, e.code, e.message))
            raise
        self._record_applied(index + 1, session, (True, result, "", ""))
        return result

    def begin_batch(self) -> None:
        if self.data_dir is not None and not self._batching:
            with self._internal():
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._batching, self._batch_start = True, self._applied

    def end_batch(self) -> None:
        if not self._batching:
            return
        self._batching = False
        try:
            with self._internal():
                self._conn.execute("PRAGMA synchronous=FULL")
                if self._applied != self._batch_start:  # a FULL commit: fsyncs the whole WAL
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.execute(self._set_applied_sql, (self._applied,))
                    self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise SQLNodeError(f"could not make applied index {self._applied} durable: {e}") from e
        finally:
            self._rollback()

    def query(self, request: dict) -> Any:
        if _op(request) == "execute":
            raise StateMachineError("BAD_REQUEST", "execute is a write: it must go through the log")
        return self._query(request)

    # --- execute ---

    def _execute(self, index: int, statements: list, stamp: Any, session: tuple | None) -> dict:
        for sql, _ in statements:
            _refuse_statically(sql)
        self._guard.take_reason()
        self._stamper.begin(stamp)
        try:
            with self._internal():
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(self._set_applied_sql, (index + 1,))
            results = [self._run(sql, params) for sql, params in statements]
            if session is not None:  # in the command's transaction: both happen or neither
                self.sessions.record(index, *session, (True, {"results": results}, "", ""))
            with self._internal():
                self._conn.execute("COMMIT")
        except (sqlite3.Error, ValueError, OverflowError) as e:  # ValueError: e.g. NUL in the SQL text
            raise self._sql_error(e) from None
        finally:
            self._rollback()  # after any failure, even one that is not SQL's; a no-op after COMMIT
            self._stamper.end()
        self._applied = index + 1
        return {"results": results}

    def _run(self, sql: str, params: Any) -> dict:
        before = self._conn.total_changes
        with self._budget.running():
            cur = self._conn.execute(sql, params)
            cur.fetchall()  # a statement with rows (RETURNING, SELECT) is finished only when drained
        affected = cur.rowcount
        if affected < 0 and self._conn.total_changes != before:
            # sqlite3 counts rows only for statements that start with INSERT, UPDATE, DELETE or REPLACE;
            # a WITH ... INSERT changed rows too: ask SQLite (the same on every node, triggers excluded)
            with self._internal():
                affected = self._conn.execute("SELECT changes()").fetchone()[0]
        return {"rows_affected": max(affected, 0), "last_insert_rowid": cur.lastrowid or 0}

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self.sessions.forget_cache()
            with self._internal():
                self._conn.execute("ROLLBACK")

    def _record_applied(self, applied: int, session: tuple | None = None, outcome: tuple = ()) -> None:
        """Advance the applied index for a command that failed, only read or was a known retry; with
        ``session``, record the command's outcome in the same transaction."""
        try:
            with self._internal():
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(self._set_applied_sql, (applied,))
                if session is not None:
                    self.sessions.record(applied - 1, *session, outcome)
                self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise SQLNodeError(f"could not record applied index {applied}: {e}") from e
        finally:
            self._rollback()
        self._applied = applied

    def _sql_error(self, e: Exception) -> Exception:
        if self._budget.exhausted:  # our own interrupt: the statement's fault, the same on every replica
            return StateMachineError("SQL_ERROR", BUDGET_MESSAGE)
        code = getattr(e, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _NODE_ERRORS:
            return SQLNodeError(f"{getattr(e, 'sqlite_errorname', 'SQLITE_ERROR')}: {e}")
        return StateMachineError("SQL_ERROR", self._guard.take_reason() or str(e))

    # --- query ---

    def _query(self, request: dict) -> dict:
        if _op(request) != "query":
            raise StateMachineError("UNKNOWN_OP", f"unknown op {request.get('op')!r}")
        sql = _sql_text(request.get("sql"), "sql")
        params = _params(request.get("params"), "params")
        self._read_guard.take_reason()
        try:
            with self._budget.running():
                cur = self._reader.execute(sql, params)
                rows = [list(row) for row in cur.fetchall()]
        except (sqlite3.Error, ValueError, OverflowError) as e:
            if self._budget.exhausted:
                raise StateMachineError("SQL_ERROR", BUDGET_MESSAGE) from None
            code = getattr(e, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _NODE_ERRORS:
                raise SQLNodeError(str(e)) from e
            raise StateMachineError("SQL_ERROR", self._read_guard.take_reason() or str(e)) from None
        columns = [d[0] for d in cur.description] if cur.description else []
        return {"columns": columns, "rows": rows}

    # --- snapshots ---

    def snapshot(self) -> bytes:
        """The whole database (applied index included) as SQLite file bytes, via the backup API."""
        mem = sqlite3.connect(":memory:")
        try:
            self._conn.backup(mem)
            return _rollback_journal_header(mem.serialize())
        finally:
            mem.close()

    def restore(self, data: bytes) -> None:
        """Replace the database with a snapshot, in one transaction on the (durable) file."""
        src = _open_snapshot(data)
        try:
            src.backup(self._conn)  # one step (pages=-1): the destination changes atomically
        except sqlite3.Error as e:
            raise SQLNodeError(f"could not write the restored database: {e}") from e
        finally:
            src.close()
        self._applied = self._read_applied()
        self.sessions.forget_cache()

    # --- for tests and tools ---

    def dump(self) -> list[str]:
        """The database as SQL text (iterdump) without Omni's own tables: equal on equal replicas."""
        skip = tuple(prefix for table in OMNI_TABLES for prefix in (
            f"CREATE TABLE {table} ", f'INSERT INTO "{table}" ')) + (f"CREATE INDEX {_ACTIVE_INDEX} ",)
        with self._internal():
            return [line for line in self._conn.iterdump() if not line.startswith(skip)]

    def close(self) -> None:
        self._reader.close()
        self._conn.close()
        self._stamper.close()


class _SessionTable:
    """The client-session table in the database, with exactly the window of the Applier's `Sessions`.

    ``_omni_clients`` holds each client's floor (a seq below it is too old to tell) and ``active``, the log
    index of its latest recorded write; ``_omni_sessions`` holds each recorded (client, seq) with the log
    index that recorded it (``pos``) and its outcome as msgpack. Ordering by those indexes reproduces the
    insertion and recency orders of `Sessions`' OrderedDicts, so the same log leaves the same table on
    every node, restarted or not. `record` runs inside the caller's transaction and never commits.
    """

    seqs_per_client = SESSION_SEQS  # the window; tests set smaller ones on an instance
    max_clients = SESSION_CLIENTS

    def __init__(self, conn: sqlite3.Connection, internal) -> None:
        self._conn, self._internal = conn, internal
        self._exists: bool | None = None  # whether the tables were created yet; None: not known
        self._clients: int | None = None  # how many clients are remembered; None: count again

    def forget_cache(self) -> None:
        """Called when a transaction rolls back or the database is replaced: re-read what is cached."""
        self._exists = self._clients = None

    def lookup(self, client: str, seq: int) -> tuple | None:
        """The recorded outcome of (client, seq), or None; raises `session_too_old` below the floor."""
        if not self._tables_exist():
            return None
        with self._internal():
            row = self._conn.execute(f"SELECT outcome FROM {SESSIONS_TABLE} WHERE client = ? AND seq = ?",
                                     (client, seq)).fetchone()
            if row is not None:
                return tuple(msgpack.unpackb(row[0], raw=False, strict_map_key=False))
            floor = self._conn.execute(f"SELECT floor FROM {CLIENTS_TABLE} WHERE client = ?",
                                       (client,)).fetchone()
        if floor is not None and seq < floor[0]:
            raise session_too_old(client, seq)
        return None

    def record(self, index: int, client: str, seq: int, outcome: tuple) -> None:
        """Record the outcome of (client, seq), applied at log ``index``, and trim to the window."""
        with self._internal():
            self._create()
            conn = self._conn
            known = conn.execute(f"SELECT 1 FROM {CLIENTS_TABLE} WHERE client = ?", (client,)).fetchone()
            conn.execute(f"INSERT INTO {CLIENTS_TABLE} (client, floor, active) VALUES (?, 0, ?) "
                         "ON CONFLICT (client) DO UPDATE SET active = excluded.active", (client, index))
            # a pair recorded again keeps its place in the window, as an OrderedDict key does
            conn.execute(f"INSERT INTO {SESSIONS_TABLE} (client, seq, pos, outcome) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (client, seq) DO UPDATE SET outcome = excluded.outcome",
                         (client, seq, index, msgpack.packb(list(outcome), use_bin_type=True)))
            self._trim_seqs(client)
            if known is None:  # only a new client can push the table over its limit
                self._trim_clients()

    def _trim_seqs(self, client: str) -> None:
        """Forget the oldest outcomes beyond the window; the floor rises past each one forgotten."""
        old = self._conn.execute(
            f"SELECT seq FROM {SESSIONS_TABLE} WHERE client = ? ORDER BY pos DESC LIMIT -1 OFFSET ?",
            (client, self.seqs_per_client)).fetchall()
        if old:
            self._conn.executemany(f"DELETE FROM {SESSIONS_TABLE} WHERE client = ? AND seq = ?",
                                   [(client, seq) for seq, in old])
            self._conn.execute(f"UPDATE {CLIENTS_TABLE} SET floor = max(floor, ?) WHERE client = ?",
                               (max(seq for seq, in old) + 1, client))

    def _trim_clients(self) -> None:
        """Forget the least recently active clients beyond the limit, with their outcomes and floors."""
        if self._clients is None:
            self._clients = self._conn.execute(f"SELECT count(*) FROM {CLIENTS_TABLE}").fetchone()[0]
        else:
            self._clients += 1  # the caller just added one
        excess = self._clients - self.max_clients
        if excess > 0:
            gone = self._conn.execute(f"SELECT client FROM {CLIENTS_TABLE} ORDER BY active LIMIT ?",
                                      (excess,)).fetchall()
            for table in (SESSIONS_TABLE, CLIENTS_TABLE):
                self._conn.executemany(f"DELETE FROM {table} WHERE client = ?", gone)
            self._clients -= len(gone)

    def _tables_exist(self) -> bool:
        if self._exists is None:
            with self._internal():
                row = self._conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?",
                                         (SESSIONS_TABLE,)).fetchone()
            self._exists = bool(row[0])
        return self._exists

    def _create(self) -> None:
        if self._tables_exist():
            return
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {CLIENTS_TABLE} (client TEXT PRIMARY KEY, "
                           "floor INTEGER NOT NULL, active INTEGER NOT NULL)")
        self._conn.execute(f"CREATE INDEX IF NOT EXISTS {_ACTIVE_INDEX} ON {CLIENTS_TABLE} (active)")
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {SESSIONS_TABLE} (client TEXT NOT NULL, "
                           "seq INTEGER NOT NULL, pos INTEGER NOT NULL, outcome BLOB NOT NULL, "
                           "PRIMARY KEY (client, seq)) WITHOUT ROWID")
        self._exists = True  # forget_cache() undoes this if the transaction rolls back


def _replay(outcome: tuple) -> Any:
    """A recorded outcome given again: its result, or its error raised again."""
    ok, result, code, message = outcome
    if ok:
        return result
    raise StateMachineError(code, message)


def _open_snapshot(data: bytes) -> sqlite3.Connection:
    """An in-memory database holding the snapshot, checked; ValueError if it is not a sound one."""
    if not bytes(data[:16]) == b"SQLite format 3\x00":
        raise ValueError("not an Omni SQL snapshot: no SQLite header")
    src = sqlite3.connect(":memory:")
    try:
        src.deserialize(_rollback_journal_header(data))
        check = src.execute("PRAGMA quick_check").fetchone()[0]
        has_meta = src.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (META_TABLE,)).fetchone()
    except sqlite3.Error as e:
        src.close()
        raise ValueError(f"not an Omni SQL snapshot: {e}") from e
    if check != "ok" or not has_meta:
        src.close()
        raise ValueError(f"not an Omni SQL snapshot: quick_check={check!r}, has {META_TABLE}={bool(has_meta)}")
    return src


def _rollback_journal_header(image: bytes) -> bytes:
    """Mark a database image as not-WAL (header bytes 18-19), as an in-memory database must be.

    The backup of a WAL database copies the WAL marker, and SQLite refuses to open such an image in
    memory; restoring into a WAL file sets the marker back (the backup API does that for WAL targets).
    """
    image = bytearray(image)
    image[18:20] = b"\x01\x01"
    return bytes(image)


# --- request validation ---------------------------------------------------------------------------------

def _op(request: Any) -> str:
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise StateMachineError("BAD_REQUEST", "a request is a map with a string 'op'")
    op = request["op"]
    if op not in ("execute", "query"):
        raise StateMachineError("UNKNOWN_OP", f"unknown op {op!r} (the sql state machine has execute, query)")
    return op


def _refuse_statically(sql: str) -> None:
    why = static_refusal(sql)
    if why:
        raise StateMachineError("SQL_ERROR", why)


def _statements(command: dict) -> list[tuple[str, Any]]:
    """[(sql, params)] from ``{sql, params?}`` or ``{statements: [[sql, params?], ...]}``."""
    if ("statements" in command) == ("sql" in command):
        raise StateMachineError("BAD_REQUEST", "execute takes either 'sql' or 'statements'")
    if "sql" in command:
        return [(_sql_text(command["sql"], "sql"), _params(command.get("params"), "params"))]
    stmts = command["statements"]
    if not isinstance(stmts, (list, tuple)) or not stmts:
        raise StateMachineError("BAD_REQUEST", "'statements' must be a non-empty list of [sql, params?]")
    out = []
    for i, item in enumerate(stmts):
        if isinstance(item, str):
            item = [item]
        if not isinstance(item, (list, tuple)) or not 1 <= len(item) <= 2:
            raise StateMachineError("BAD_REQUEST", f"statements[{i}] must be [sql] or [sql, params]")
        params = item[1] if len(item) == 2 else None
        out.append((_sql_text(item[0], f"statements[{i}]"), _params(params, f"statements[{i}] params")))
    return out


def _sql_text(sql: Any, where: str) -> str:
    if not isinstance(sql, str) or not sql.strip():
        raise StateMachineError("BAD_REQUEST", f"{where} must be a non-empty SQL string")
    return sql


def _params(params: Any, where: str) -> tuple | dict:
    """Positional (list) or named (map) parameters, each a value SQLite can store."""
    if params is None:
        return ()
    if isinstance(params, (list, tuple)):
        for value in params:
            _check_value(value, where)
        return tuple(params)
    if isinstance(params, dict):
        for key, value in params.items():
            if not isinstance(key, str):
                raise StateMachineError("BAD_REQUEST", f"{where}: named parameter names must be strings")
            _check_value(value, where)
        return params
    raise StateMachineError("BAD_REQUEST", f"{where} must be a list (positional) or a map (named)")


def _check_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, (float, str, bytes)):
        return
    if isinstance(value, int):  # bool too: stored as 0/1, as sqlite3 does
        if not -_MAX_INT <= value < _MAX_INT:
            raise StateMachineError("BAD_REQUEST", f"{where}: integer {value} does not fit in 64 bits")
        return
    raise StateMachineError("BAD_REQUEST", f"{where}: {type(value).__name__} is not an SQL value "
                            "(use null, integer, float, string or bytes)")
