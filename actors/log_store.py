"""The node's durable log: Sequence Paxos's `LogState` in one SQLite file, written by the Storage actor.

The core emits its state changes as atomic write groups (see `omni.paxos.storage`); this store persists
them and loads them back at restart, with the same two calls as `MemoryStorage`. Its rules (DESIGN.md
section 3):

* `write(groups)` applies every group of the call in ONE transaction and commits once: many groups, one
  fsync (group commit). It returns only when the commit is durable (WAL with ``synchronous=FULL``), so the
  host may then send the messages that vouch for those writes. The whole call is all-or-nothing.
* Groups are validated like `apply_op` validates them, and encoded, before the transaction begins; a bad
  group raises ValueError/TypeError and leaves the store unchanged (the host should treat it as a bug).
* Any SQLite error while writing or reading (disk full, I/O error, failed fsync) raises `StorageFailure`,
  and the store refuses every later call: a failed fsync is never retried, the node stops (rule 5).
* Every row carries a CRC32 of its blob, checked by `load()`; a mismatch raises `CorruptLog`, which is
  fatal. A torn tail cannot reach us: SQLite's WAL ignores an incomplete last transaction when it opens
  the file, and that is our "torn tail is dropped". So any mismatch we see is real corruption.

Compaction: a ``Compact(idx)`` deletes the entries below ``idx`` in the same transaction, so `load()` never
returns compacted entries. The deleted rows' pages go back to the database's free list, where later appends
reuse them, and they are not overwritten with zeros (``secure_delete`` is off; Debian's SQLite turns it on):
zeroing wrote every dropped page to the WAL and again to the database, so a compaction of 10,000 puts, with
the checkpoint that followed it, held the Storage thread for about 30 ms (12 ms of CPU) on every node under
load; now about 5 ms (2 ms of CPU). The WAL is not truncated after a compaction any more either: SQLite's
checkpoint at 1,000 WAL pages copies it into the database and the next commit starts it over, cut back to
``WAL_SIZE_LIMIT`` after a burst (``journal_size_limit``). So with regular compaction neither file grows
without bound.

Layout (format 2): ``log(start, count, data, crc)`` holds the log from ``compacted_idx`` on in rows of
consecutive entries, with no gaps: a row holds entries ``start`` to ``start + count - 1`` as one msgpack
array (consecutive appends of one call, at most MAX_ROW_ENTRIES entries; a batch the AcceptDecide already
packed is not packed again, see `omni.transport.codec.pack_entries`). One row per entry (format 1) made a
commit of 80 entries cost 342 us of CPU against 218 us this way (SQLite's per-row work; `python
bench/request_path.py --batch 80`, log write stage), on every node, for every write. An append inside a row rewrites that
row's prefix; a compaction inside a row rewrites its suffix (both are rare: a new leader's log sync, a
snapshot). A format 1 file is converted when it is opened. ``meta(key, value, crc)`` holds promise,
accepted_round, decided_idx, compacted_idx, snapshot and stopsign. Values are msgpack (never pickle): a
Ballot is ``[n, priority, pid]``, a StopSign is ``[config_id, [nodes...], metadata]``. Entries and snapshots
must be msgpack-compatible values and come back as msgpack decodes them: tuples come back as lists, maps
may have non-string keys.

One connection, used by one thread at a time (it may be opened in one thread and handed to the actor's).
"""
from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path
from typing import Any, Sequence

import msgpack

from omni.paxos.messages import ZERO_BALLOT, Ballot, StopSign
from omni.paxos.storage import (
    AppendOnPrefix, Compact, LogState, SetAcceptedRound, SetDecidedIdx, SetPromise, SetStopSign, WriteGroup,
)
from omni.transport.codec import array_body, array_header, pack_entries

FORMAT_VERSION = 2  # kept in PRAGMA user_version; format 1 is converted, any other is refused, not guessed at
WAL_SIZE_LIMIT = 4 * 1024 * 1024  # bytes the WAL is cut back to when it starts over (~ checkpoint mark)
MAX_ROW_ENTRIES = 4096  # a long append (a follower catching up) still makes rows of bounded size

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log (start INTEGER PRIMARY KEY, count INTEGER NOT NULL, data BLOB, crc INTEGER)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB, crc INTEGER)",
)
_INSERT_ROW = "INSERT INTO log (start, count, data, crc) VALUES (?, ?, ?, ?)"
# SQLite result codes that mean the file itself is damaged rather than unreachable.
_CORRUPTION_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class LogStoreError(Exception):
    """Base of the store's fatal errors: the node must stop."""


class StorageFailure(LogStoreError):
    """SQLite failed to read or write (disk full, I/O error, failed fsync); the store is unusable from now on."""


class CorruptLog(LogStoreError):
    """A row failed its checksum or the log has a gap: real corruption, never repaired automatically."""


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


class SQLiteLogStore:
    """A `Storage` (``load()`` / ``write(groups)``) on one SQLite file in WAL mode with fsync on commit."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._failed: BaseException | None = None
        self._pack = msgpack.Packer(use_bin_type=True).pack  # reused: far cheaper than msgpack.packb per call
        self._conn: sqlite3.Connection | None = None
        try:
            # check_same_thread=False: the host loads in its main thread, then hands the store to the actor.
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._configure()
            self._create_schema()
            self._compacted_idx, self._log_len = self._read_bounds()
        except BaseException as err:
            self.close()
            self._raise_fatal(err)

    # -- public calls -------------------------------------------------------------------------------

    def load(self) -> LogState:
        """Read back everything, verifying every row: the state a restarted node resumes from."""
        conn = self._usable()
        try:
            conn.execute("BEGIN")  # one read snapshot for meta and log together
            try:
                meta = self._read_meta()
                state = self._state_from_meta(meta)
                state.entries = self._read_entries(state.compacted_idx)
            finally:
                conn.execute("COMMIT")
        except BaseException as err:
            self._fail(err)
        self._compacted_idx, self._log_len = state.compacted_idx, state.log_len
        return state

    def write(self, groups: Sequence[WriteGroup]) -> None:
        """Persist ``groups`` in order, in one transaction; return only once it is durable."""
        conn = self._usable()
        meta, steps, bounds = self._plan(groups)  # raises ValueError/TypeError before anything is touched
        if not meta and not steps:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for step in steps:
                self._execute_step(conn, step)
            conn.executemany("INSERT OR REPLACE INTO meta (key, value, crc) VALUES (?, ?, ?)",
                             [(key, blob, zlib.crc32(blob)) for key, blob in meta.items()])
            conn.execute("COMMIT")  # WAL + synchronous=FULL: the WAL is fsynced before this returns
        except BaseException as err:
            self._fail(err)
        self._compacted_idx, self._log_len = bounds

    def close(self) -> None:
        """Release the connection; safe to call more than once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def destroy(self) -> None:
        """Close and delete the log's files (a configuration that is over)."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    def __enter__(self) -> "SQLiteLogStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ------------------------------------------------------------------------------------

    def _configure(self) -> None:
        conn = self._conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. ":memory:" cannot do WAL; we will not run without it
            raise StorageFailure(f"{self.path}: journal_mode is {mode!r}, WAL is required")
        conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit, not only at checkpoints
        conn.execute("PRAGMA secure_delete=OFF")  # compacted pages are freed, not rewritten: see the docstring
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")

    def _create_schema(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 1:
                self._convert_format_1(conn)
            elif version not in (0, FORMAT_VERSION):
                raise StorageFailure(f"{self.path}: log format {version}, this code reads {FORMAT_VERSION}")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _convert_format_1(self, conn: sqlite3.Connection) -> None:
        """Rewrite a format 1 log (a row per entry) as rows of MAX_ROW_ENTRIES, checking every checksum; runs
        inside the schema transaction, so a crash leaves the file as it was."""
        conn.execute("ALTER TABLE log RENAME TO log_format_1")
        conn.execute(_SCHEMA[0])
        rows = conn.execute("SELECT idx, data, crc FROM log_format_1 ORDER BY idx")
        first, entries = None, []
        for idx, data, crc in rows:
            first = idx if first is None else first
            if idx != first + len(entries):
                raise CorruptLog(f"log row idx={idx}: expected idx {first + len(entries)} next")
            entries.append(self._decode(f"log row idx={idx}", data, crc))
        if entries:
            conn.executemany(_INSERT_ROW, self._rows(first, [entries]))
        conn.execute("DROP TABLE log_format_1")

    def _read_bounds(self) -> tuple[int, int]:
        """compacted_idx and log_len, so that write() can validate without a full load()."""
        row = self._conn.execute("SELECT value, crc FROM meta WHERE key = 'compacted_idx'").fetchone()
        compacted = self._decode("meta row 'compacted_idx'", *row) if row else 0
        last = self._conn.execute("SELECT start + count FROM log ORDER BY start DESC LIMIT 1").fetchone()
        return compacted, compacted if last is None else max(compacted, last[0])

    # -- reading ------------------------------------------------------------------------------------

    @staticmethod
    def _decode(where: str, blob: Any, crc: Any) -> Any:
        if not isinstance(blob, bytes) or zlib.crc32(blob) != crc:
            raise CorruptLog(f"{where}: checksum mismatch (stored crc {crc!r})")
        try:
            return _unpack(blob)
        except Exception as err:  # msgpack raises several types; with a good crc this is still corruption
            raise CorruptLog(f"{where}: undecodable value ({err})") from err

    def _read_meta(self) -> dict:
        rows = self._conn.execute("SELECT key, value, crc FROM meta")
        return {key: self._decode(f"meta row {key!r}", value, crc) for key, value, crc in rows}

    @staticmethod
    def _state_from_meta(meta: dict) -> LogState:
        try:
            stopsign = meta.get("stopsign")
            return LogState(
                promise=Ballot(*meta["promise"]) if "promise" in meta else ZERO_BALLOT,
                accepted_round=Ballot(*meta["accepted_round"]) if "accepted_round" in meta else ZERO_BALLOT,
                decided_idx=int(meta.get("decided_idx", 0)),
                compacted_idx=int(meta.get("compacted_idx", 0)),
                snapshot=meta.get("snapshot"),
                stopsign=None if stopsign is None else StopSign(stopsign[0], tuple(stopsign[1]), stopsign[2]),
            )
        except (TypeError, ValueError, IndexError) as err:
            raise CorruptLog(f"meta rows have an unexpected shape: {err}") from err

    def _read_entries(self, start: int) -> list:
        entries, expected = [], start
        for row in self._conn.execute("SELECT start, count, data, crc FROM log ORDER BY start"):
            if row[0] != expected:  # a gap, or a row the last Compact should have removed
                raise CorruptLog(f"log row start={row[0]}: expected start {expected} next")
            entries += self._row_entries(row)
            expected += row[1]
        return entries

    # -- writing ------------------------------------------------------------------------------------

    def _plan(self, groups: Sequence[WriteGroup]) -> tuple[dict, list, tuple[int, int]]:
        """Validate and encode the call: final meta blobs by key, log steps in order, and the new bounds.

        Only the last value of each meta key matters inside one transaction, and an append that starts
        within the previous append's range simply edits it, so a call of many small groups costs one
        DELETE and one executemany rather than one of each per group.
        """
        compacted, log_len = self._compacted_idx, self._log_len
        meta: dict[str, Any] = {}
        steps: list[list] = []
        for group in groups:
            for op in group:
                if isinstance(op, AppendOnPrefix):
                    if op.from_idx < compacted or op.from_idx > log_len:
                        raise ValueError(f"append at {op.from_idx} outside log [{compacted}, {log_len}]")
                    self._plan_append(steps, op.from_idx, op.entries, log_len)
                    log_len = op.from_idx + len(op.entries)
                elif isinstance(op, Compact):
                    if op.idx < compacted:
                        raise ValueError(f"compact to {op.idx} below compacted index {compacted}")
                    steps.append(["compact", op.idx])
                    meta["compacted_idx"], meta["snapshot"] = op.idx, op.snapshot
                    compacted, log_len = op.idx, max(log_len, op.idx)
                elif isinstance(op, (SetPromise, SetAcceptedRound)):
                    key = "promise" if isinstance(op, SetPromise) else "accepted_round"
                    meta[key] = [op.ballot.n, op.ballot.priority, op.ballot.pid]
                elif isinstance(op, SetDecidedIdx):
                    meta["decided_idx"] = op.idx
                elif isinstance(op, SetStopSign):
                    ss = op.stopsign
                    meta["stopsign"] = None if ss is None else [ss.config_id, list(ss.nodes), ss.metadata]
                else:
                    raise TypeError(f"not a write operation: {op!r}")
        for step in steps:  # encoded here, so a value msgpack refuses fails the call before it begins
            if step[0] == "append":
                step[2] = self._rows(step[1], step[2])
        blobs = {key: self._pack(value) for key, value in meta.items()}
        return blobs, steps, (compacted, log_len)

    @staticmethod
    def _plan_append(steps: list, from_idx: int, entries: tuple, log_len: int) -> None:
        """Append steps are ``["append", start, parts, end of the log before it]``: ``parts`` are the entry
        tuples of the call's appends (cut where a later one replaced entries); they become rows once the
        call is planned."""
        last = steps[-1] if steps else None
        if last is None or last[0] != "append" or last[1] > from_idx:
            steps.append(["append", from_idx, [entries], log_len])
            return
        # Validation guarantees from_idx <= last's end here, so this is "truncate, then extend".
        keep, kept, total = from_idx - last[1], [], 0
        for part in last[2]:
            if total + len(part) > keep:
                if keep > total:
                    kept.append(part[:keep - total])
                break
            kept.append(part)
            total += len(part)
        kept.append(entries)
        last[2] = kept

    @staticmethod
    def _rows(start: int, parts: list) -> list:
        """Rows of at most MAX_ROW_ENTRIES from entry tuples (or lists), each row one msgpack array. A part
        packed before (the AcceptDecide to the followers carried the same tuple, or a follower decoded it
        from one) comes from `pack_entries`' cache; a row of several parts joins their element encodings
        under one array header."""
        pieces = [part[i:i + MAX_ROW_ENTRIES] if len(part) > MAX_ROW_ENTRIES else part
                  for part in parts for i in range(0, len(part), MAX_ROW_ENTRIES)]
        rows, group, count = [], [], 0
        for piece in pieces + [None]:  # None: close the last row
            if group and (piece is None or count + len(piece) > MAX_ROW_ENTRIES):
                if len(group) == 1:
                    blob = pack_entries(group[0])
                else:
                    blob = b"".join([array_header(count), *(array_body(pack_entries(p)) for p in group)])
                rows.append((start, count, blob, zlib.crc32(blob)))
                start, group, count = start + count, [], 0
            if piece:
                group.append(piece)
                count += len(piece)
        return rows

    def _row_entries(self, row: tuple) -> list:
        start, count, data, crc = row
        entries = self._decode(f"log row start={start}", data, crc)
        if not isinstance(entries, list) or len(entries) != count or count == 0:
            raise CorruptLog(f"log row start={start}: does not hold the {count} entries it claims")
        return entries

    def _execute_step(self, conn: sqlite3.Connection, step: list) -> None:
        if step[0] == "compact":
            self._split_row_at(conn, step[1])
            conn.execute("DELETE FROM log WHERE start < ?", (step[1],))
            return
        _, start, rows, log_end = step
        if start < log_end:  # replaces entries: not the plain append at the end that almost every call is
            self._split_row_at(conn, start)
            conn.execute("DELETE FROM log WHERE start >= ?", (start,))
        conn.executemany(_INSERT_ROW, rows)

    def _split_row_at(self, conn: sqlite3.Connection, idx: int) -> None:
        """Make ``idx`` the start of a row (if a row holds it), so one DELETE can cut the log there."""
        row = conn.execute("SELECT start, count, data, crc FROM log WHERE start < ? ORDER BY start DESC LIMIT 1",
                           (idx,)).fetchone()
        if row is None or row[0] + row[1] <= idx:
            return
        entries, cut = self._row_entries(row), idx - row[0]
        conn.execute("DELETE FROM log WHERE start = ?", (row[0],))
        conn.executemany(_INSERT_ROW, self._rows(row[0], [entries[:cut]]) + self._rows(idx, [entries[cut:]]))

    # -- failure ------------------------------------------------------------------------------------

    def _usable(self) -> sqlite3.Connection:
        if self._failed is not None:
            raise StorageFailure(f"{self.path}: store stopped after an earlier failure: {self._failed}")
        if self._conn is None:
            raise StorageFailure(f"{self.path}: store is closed")
        return self._conn

    def _fail(self, err: BaseException) -> None:
        """Give up on the store for good: roll back what we can, refuse everything afterwards, re-raise."""
        self._failed = err
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite may already have rolled back on its own (e.g. after SQLITE_FULL)
        self._raise_fatal(err)

    def _raise_fatal(self, err: BaseException) -> None:
        if isinstance(err, LogStoreError) or not isinstance(err, sqlite3.Error):
            raise err
        if getattr(err, "sqlite_errorcode", None) in _CORRUPTION_CODES:
            raise CorruptLog(f"{self.path}: SQLite reports a damaged file: {err}") from err
        raise StorageFailure(f"{self.path}: {err}") from err
