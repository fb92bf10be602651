"""Deterministic stand-ins for SQLite's clock, random and build-dependent functions.

The `sql` state machine (sql.py) installs these on its write connection. SQLite lets an application
function replace a built-in of the same name (checked on this Python's SQLite, including the
CURRENT_TIMESTAMP / CURRENT_DATE / CURRENT_TIME keywords, which SQLite compiles into calls of functions
with those names, in DEFAULT clauses too). While one command is applied, `Stamper.begin(stamp)` gives
them the values the proposing node stamped into the command (``{"now": unix seconds, "seed": int}``),
so every replica computes the same clock readings and the same random numbers:

- the date functions (date, time, datetime, julianday, unixepoch, strftime, timediff) read 'now', or a
  missing time value, as the stamped time, and otherwise call SQLite's own implementation on a private
  in-memory connection, so every modifier behaves exactly as in SQLite; 'localtime' and 'utc' depend on
  the node's time zone and are refused;
- random() and randomblob(N) draw from SHA-256 in counter mode keyed by the stamped seed;
- the functions in `sql_guard.REFUSED_FUNCTIONS` raise, because SQLite evaluates DEFAULT expressions
  without consulting the authorizer.

A command without a stamp still runs; it fails only if it asks for the time or a random number.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
import sqlite3
from typing import Any, Callable

from .sql_guard import REFUSED_FUNCTIONS, Guard

_EPOCH = _dt.datetime(1970, 1, 1)
_MAX_RANDOMBLOB = 16 * 1024 * 1024
_LEADING_INT = re.compile(r"\s*([+-]?\d+)")
#: name -> (index of the first time value, number of time values); the rest are modifiers
_DATE_FUNCTIONS = {
    "date": (0, 1), "time": (0, 1), "datetime": (0, 1), "julianday": (0, 1), "unixepoch": (0, 1),
    "strftime": (1, 1), "timediff": (0, 2),
}
_CURRENT = {"current_timestamp": "datetime", "current_date": "date", "current_time": "time"}


class StampError(Exception):
    """Raised inside a stamped function; the reason reaches the client through `Guard.reason`."""


class Stamper:
    """Registers the stand-ins on a connection and feeds them one command's stamp at a time."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._builtin = sqlite3.connect(":memory:", check_same_thread=False)  # SQLite's own functions
        self._stamp: dict | None = None
        self._now_text: str | None = None
        self._pool = b""
        self._counter = 0

    def install(self, conn: sqlite3.Connection) -> None:
        for name, (first, count) in _DATE_FUNCTIONS.items():
            if self._has_builtin(name):  # timediff exists only from SQLite 3.43
                conn.create_function(name, -1, self._wrap(self._date_function(name, first, count)),
                                     deterministic=True)
        for name, base in _CURRENT.items():
            # not deterministic, like SQLite's own: so generated columns and indexes refuse them
            conn.create_function(name, 0, self._wrap(lambda base=base: self._call(base, [self._now()])))
        conn.create_function("random", 0, self._wrap(self._random))
        conn.create_function("randomblob", 1, self._wrap(self._randomblob))
        for name, why in REFUSED_FUNCTIONS.items():
            conn.create_function(name, -1, self._wrap(self._refused(name, why)))

    def begin(self, stamp: Any) -> None:
        """Use ``stamp`` (the command's "stamp" value, or None) until `end`."""
        self._stamp = stamp if isinstance(stamp, dict) else None
        self._now_text = None
        self._pool, self._counter = b"", 0

    def end(self) -> None:
        self._stamp = None

    def close(self) -> None:
        self._builtin.close()

    # --- plumbing ---

    def _has_builtin(self, name: str) -> bool:
        row = self._builtin.execute("SELECT 1 FROM pragma_function_list WHERE name = ?", (name,)).fetchone()
        return row is not None

    def _wrap(self, fn: Callable) -> Callable:
        """SQLite only says "user-defined function raised exception": keep the real reason."""
        def call(*args):
            try:
                return fn(*args)
            except StampError as e:
                self._guard.reason = str(e)
                raise
        return call

    def _call(self, name: str, args: list) -> Any:
        sql = f"SELECT {name}({', '.join('?' * len(args))})"
        try:
            return self._builtin.execute(sql, args).fetchone()[0]
        except sqlite3.Error as e:
            raise StampError(f"{name}(): {e}") from None

    @staticmethod
    def _refused(name: str, why: str) -> Callable:
        def refuse(*args):
            raise StampError(f"{name}() is refused in execute: {why}")
        return refuse

    # --- the clock ---

    def _now(self) -> str:
        """The stamped time as SQLite's own 'now' would read it: UTC, millisecond precision."""
        if self._now_text is None:
            now = (self._stamp or {}).get("now")
            if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
                raise StampError("this command reads the clock but carries no valid stamp "
                                 "(writes must be proposed through prepare())")
            try:
                t = _EPOCH + _dt.timedelta(milliseconds=round(now * 1000))
            except OverflowError:
                raise StampError("the stamped time is out of range") from None
            self._now_text = (f"{t.year:04d}-{t.month:02d}-{t.day:02d} "
                              f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond // 1000:03d}")
        return self._now_text

    def _date_function(self, name: str, first: int, count: int) -> Callable:
        def fn(*args):
            args = list(args)
            for mod in args[first + count:]:
                if _text(mod).strip().lower() in ("localtime", "utc"):
                    raise StampError(f"{name}(): the '{_text(mod)}' modifier depends on the node's time "
                                     "zone and is refused in execute")
            if len(args) == first:  # no time value means 'now'
                args.append(self._now())
            for i in range(first, min(first + count, len(args))):
                if _text(args[i]).lower() == "now":
                    args[i] = self._now()
            return self._call(name, args)
        return fn

    # --- randomness ---

    def _bytes(self, n: int) -> bytes:
        seed = (self._stamp or {}).get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise StampError("this command uses random() or randomblob() but carries no valid stamp "
                             "(writes must be proposed through prepare())")
        while len(self._pool) < n:
            block = f"omni-sql-random:{seed}:{self._counter}".encode()
            self._pool += hashlib.sha256(block).digest()
            self._counter += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        return out

    def _random(self) -> int:
        return int.from_bytes(self._bytes(8), "big", signed=True)

    def _randomblob(self, n: Any) -> bytes:
        n = max(_as_int(n), 1)  # SQLite returns one byte for N < 1
        if n > _MAX_RANDOMBLOB:
            raise StampError(f"randomblob({n}) is refused: at most {_MAX_RANDOMBLOB} bytes")
        return self._bytes(n)


def _text(value: Any) -> str:
    """How SQLite would read a value as text (it reads blobs as UTF-8 too)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _as_int(value: Any) -> int:
    """sqlite3_value_int64's reading: numbers truncate, text uses its leading integer, else 0."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else 0
    m = _LEADING_INT.match(_text(value))
    return int(m.group(1)) if m else 0
