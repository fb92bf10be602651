"""The `sql` state machine: a replicated SQLite database (the ChiselStore idea).

Every node applies the same ``execute`` commands, in log order, to its own SQLite file, so every node
holds the same database; ``query`` reads the local copy. All statements of one command run in one
transaction, together with the update of the applied log index in the table ``_omni_applied``
(DESIGN.md rule 6): after a crash the file holds either the command and its index or neither, so a
restart never applies an entry twice nor skips one. A command that fails (bad SQL, a constraint, a
refused construct) leaves no trace but still advances the applied index, in a transaction of its own,
because every replica fails it the same way. The write connection runs in WAL mode with
``synchronous=FULL``; queries use a second, read-only connection. Which SQL is refused, and why, is in
sql_guard.py; the stamped stand-ins for the clock and randomness are in sql_stamp.py.

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

from .base import StateMachine, StateMachineError
from .sql_guard import META_TABLE, Guard, static_refusal
from .sql_stamp import Stamper

#: SQLite result codes (primary, low byte) that describe this node, not the command: never SQL_ERROR
_NODE_ERRORS = {5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 26}  # BUSY LOCKED NOMEM READONLY INTERRUPT IOERR
#                                                         CORRUPT FULL CANTOPEN PROTOCOL NOTADB
_MAX_INT = 2**63


class SQLNodeError(RuntimeError):
    """The node's database failed (I/O, disk full, corruption): the node must stop, not answer."""


class SQLStateMachine(StateMachine):
    """SQLite, replicated: ``execute`` goes through the log, ``query`` reads the local database.

    Not thread-safe: one thread at a time (the Applier actor) calls it; that thread need not be the one
    that created it.
    """

    name = "sql"
    FILE_NAME = "state.sqlite3"

    def __init__(self, data_dir: Path | str | None = None):
        super().__init__(Path(data_dir) if data_dir is not None else None)
        self._guard, self._read_guard = Guard(), Guard()
        self._stamper = Stamper(self._guard)
        nonce = uuid.uuid4().hex  # keeps Omni's statements out of reach of the shared statement cache
        self._set_applied_sql = f"INSERT OR REPLACE INTO {META_TABLE} (id, idx) VALUES (0, ?) -- {nonce}"
        self._conn, self._reader = self._open()
        self._applied = self._read_applied()

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
        reader = sqlite3.connect(reader_uri, uri=True, isolation_level=None, check_same_thread=False)
        for pragma in ("query_only=ON", "foreign_keys=ON", "recursive_triggers=OFF"):
            reader.execute(f"PRAGMA {pragma}")
        reader.set_authorizer(self._read_guard.read_authorizer)
        return writer, reader

    @contextlib.contextmanager
    def _internal(self):
        """Run Omni's own statements (the applied index, dumps) past the client-facing authorizer."""
        self._guard.internal = True
        try:
            yield
        finally:
            self._guard.internal = False

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

    def apply(self, index: int, command: dict) -> Any:
        """Apply one decided entry. An index below `applied_index` raises ValueError: replay after a
        restart must start at `applied_index`. A failed command raises StateMachineError and still
        counts as applied."""
        if not isinstance(index, int) or index < self._applied:
            raise ValueError(f"entry {index} is already applied (applied_index={self._applied})")
        try:
            op = _op(command)
            if op == "execute":
                return self._execute(index, _statements(command), command.get("stamp"))
            result = self._query(command)  # a read that went through the log
        except StateMachineError:
            self._record_applied(index + 1)
            raise
        self._record_applied(index + 1)
        return result

    def query(self, request: dict) -> Any:
        if _op(request) == "execute":
            raise StateMachineError("BAD_REQUEST", "execute is a write: it must go through the log")
        return self._query(request)

    # --- execute ---

    def _execute(self, index: int, statements: list, stamp: Any) -> dict:
        for sql, _ in statements:
            _refuse_statically(sql)
        self._guard.take_reason()
        self._stamper.begin(stamp)
        try:
            with self._internal():
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(self._set_applied_sql, (index + 1,))
            results = [self._run(sql, params) for sql, params in statements]
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
        cur = self._conn.execute(sql, params)
        cur.fetchall()  # a statement with rows (RETURNING, SELECT) is finished only when drained
        return {"rows_affected": max(cur.rowcount, 0), "last_insert_rowid": cur.lastrowid or 0}

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with self._internal():
                self._conn.execute("ROLLBACK")

    def _record_applied(self, applied: int) -> None:
        """Advance the applied index alone, for a command that failed or only read."""
        try:
            with self._internal():
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(self._set_applied_sql, (applied,))
                self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise SQLNodeError(f"could not record applied index {applied}: {e}") from e
        finally:
            self._rollback()
        self._applied = applied

    def _sql_error(self, e: Exception) -> Exception:
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
            cur = self._reader.execute(sql, params)
            rows = [list(row) for row in cur.fetchall()]
        except (sqlite3.Error, ValueError, OverflowError) as e:
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

    # --- for tests and tools ---

    def dump(self) -> list[str]:
        """The database as SQL text (iterdump) without the applied-index table: equal on equal replicas."""
        skip = (f"CREATE TABLE {META_TABLE} ", f'INSERT INTO "{META_TABLE}" ')
        with self._internal():
            return [line for line in self._conn.iterdump() if not line.startswith(skip)]

    def close(self) -> None:
        self._reader.close()
        self._conn.close()
        self._stamper.close()


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
