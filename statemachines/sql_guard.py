"""What SQL the `sql` state machine lets through: a tokenizer, static checks and SQLite authorizers.

`SQLStateMachine` (sql.py) runs client SQL on every replica, so anything that would make one replica's
database differ from another's, or reach outside the replicated database, must be refused, and refused
the same way on every node. Refusal happens in three places, all deterministic:

1. `static_refusal(sql)` looks at the tokens (string literals, quoted identifiers and comments skipped, so
   ``'VACUUM'`` or ``-- PRAGMA`` in a literal or comment never trips it). It runs in ``prepare()`` on the
   proposing node, to refuse before consensus with a clear message, and again in ``apply()``.
2. `Guard.write_authorizer` / `Guard.read_authorizer` are SQLite authorizers: SQLite calls them while it
   compiles each statement (including trigger bodies), so they see what the text hides.
3. Functions that cannot be made deterministic are replaced at run time by ones that raise (sql_stamp.py),
   because SQLite evaluates DEFAULT expressions without asking the authorizer.

Every refusal records its reason in `Guard.reason`, so the client gets that text rather than SQLite's
generic "not authorized".
"""
from __future__ import annotations

import re
import sqlite3

#: the table that holds the applied index (DESIGN.md rule 6); clients may read it, never write it
META_TABLE = "_omni_applied"
#: the client-session table (exactly-once retries, sql.py): clients and their recent outcomes; read-only too
CLIENTS_TABLE, SESSIONS_TABLE = "_omni_clients", "_omni_sessions"
#: Omni's own tables, and what each holds (for the refusal message)
OMNI_TABLES = {META_TABLE: "holds the applied log index", CLIENTS_TABLE: "holds the client sessions",
               SESSIONS_TABLE: "holds the client sessions"}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<blob>[xX]'[^']*(?:'|\Z))
  | (?P<string>'(?:[^']|'')*(?:'|\Z))
  | (?P<quoted>"(?:[^"]|"")*(?:"|\Z)|`(?:[^`]|``)*(?:`|\Z)|\[[^\]]*(?:\]|\Z))
  | (?P<param>\?\d*|[:@$][A-Za-z0-9_$]+)
  | (?P<word>[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*)
  | (?P<number>\d[\w.]*|\.\d\w*)
  | (?P<other>.)
    """,
    re.S | re.X,
)


def tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, text) for each token, without spaces and comments; words are upper-cased."""
    out = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind in ("space", "comment"):
            continue
        text = m.group()
        out.append((kind, text.upper() if kind == "word" else text))
    return out


# --- what is refused, and why -------------------------------------------------------------------------

#: functions whose result differs between replicas (build, restart) or that reach outside the database
REFUSED_FUNCTIONS = {
    "total_changes": "counts changes since this node's connection opened, so it differs after a restart",
    "sqlite_version": "differs between nodes running different SQLite builds",
    "sqlite_source_id": "differs between nodes running different SQLite builds",
    "sqlite_compileoption_get": "differs between nodes running different SQLite builds",
    "sqlite_compileoption_used": "differs between nodes running different SQLite builds",
    "fts5_source_id": "differs between nodes running different SQLite builds",
    "sqlite_offset": "depends on the layout of one node's database file",
    "load_extension": "loads code from a node's file system",
    "fts3_tokenizer": "registers native code pointers",
}
#: refused in queries too (security, not determinism)
REFUSED_IN_QUERY = {"load_extension", "fts3_tokenizer"}

#: tables whose content describes one node's file or connection, not the replicated data
NODE_LOCAL_TABLES = {"dbstat", "sqlite_stmt", "sqlite_dbpage"}

#: PRAGMAs whose value lives in the database file and is replicated: may be set by execute
SETTABLE_PRAGMAS = {"user_version", "application_id"}
#: PRAGMAs that only describe the schema; the argument names a table or index
SCHEMA_PRAGMAS = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
}
#: read-only PRAGMAs a query may also ask without an argument (node-local facts are fine in a read)
READ_PRAGMAS = SETTABLE_PRAGMAS | {
    "page_count", "page_size", "freelist_count", "encoding", "schema_version", "data_version",
    "journal_mode", "synchronous", "foreign_keys", "recursive_triggers", "auto_vacuum",
    "compile_options", "database_list", "collation_list", "function_list", "module_list", "pragma_list",
}

_TRANSACTION_WORDS = {"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"}
DATE_FUNCTIONS = {"DATE", "TIME", "DATETIME", "JULIANDAY", "UNIXEPOCH", "STRFTIME", "TIMEDIFF"}


def pragma_refusal(name: str, has_arg: bool, *, write: bool) -> str | None:
    """Why a PRAGMA is refused in execute (write) or query, or None if it is allowed.

    Reading a setting is allowed in execute too (execute returns no rows, and SQLite's own modules, such
    as fts5, read ``data_version`` on the connection); a pragma's value can reach the data only through a
    table-valued ``pragma_*`` function, which `Guard.write_authorizer` checks separately.
    """
    name = name.lower()
    if name in SCHEMA_PRAGMAS or (name in READ_PRAGMAS and not has_arg):
        return None
    if write and name in SETTABLE_PRAGMAS:
        return None
    where = "execute" if write else "query"
    return (f"PRAGMA {name} is refused in {where}: connection and durability settings are fixed by "
            f"Omni and must be the same on every replica (settable in execute: "
            f"{', '.join(sorted(SETTABLE_PRAGMAS))})")


def _node_local_pragma_table(table: str) -> bool:
    """True for pragma_xxx tables whose rows differ between nodes (file layout, paths, build)."""
    table = table.lower()
    return table.startswith("pragma_") and table[7:] not in SCHEMA_PRAGMAS | SETTABLE_PRAGMAS


def static_refusal(sql: str) -> str | None:
    """Why this execute statement is refused before it reaches SQLite, or None."""
    toks = tokens(sql)
    words = [t for k, t in toks if k == "word"]
    if not words:
        return None
    first = words[0]
    if first == "VACUUM":
        return ("VACUUM is refused: it rewrites the file outside the log (and VACUUM INTO writes a file "
                "outside the replicated database)")
    if first in ("ATTACH", "DETACH"):
        return f"{first} is refused: every replica has exactly one database"
    if first in _TRANSACTION_WORDS:
        return (f"{first} is refused: each execute command is already one transaction "
                f"(send several statements in 'statements' for an all-or-nothing batch)")
    if first == "PRAGMA":
        return _pragma_text_refusal(toks)
    for i, (kind, text) in enumerate(toks[:-1]):
        if kind == "word" and toks[i + 1][1] == "(" and text.lower() in REFUSED_FUNCTIONS:
            return f"{text.lower()}() is refused in execute: {REFUSED_FUNCTIONS[text.lower()]}"
    table = _named_omni_table(toks) if first == "CREATE" and "TRIGGER" in words[1:3] else None
    if table:  # the authorizer sees a trigger's body only when it fires; refuse the trigger itself
        return f"{table} {OMNI_TABLES[table]}: triggers may not use it"
    if first in ("CREATE", "ALTER"):
        return _now_in_pure_context(toks)
    return None


def _named_omni_table(toks: list[tuple[str, str]]) -> str | None:
    names = {text.lower() for kind, text in toks if kind == "word"}
    names |= {text[1:-1].lower() for kind, text in toks if kind == "quoted"}
    return next((table for table in OMNI_TABLES if table in names), None)


def _pragma_text_refusal(toks: list[tuple[str, str]]) -> str | None:
    rest = toks[1:]
    if len(rest) >= 3 and rest[1][1] == ".":  # PRAGMA schema.name
        rest = rest[2:]
    if not rest or rest[0][0] not in ("word", "quoted"):
        return None  # malformed: let SQLite report the syntax error
    has_arg = any(text in ("=", "(") for _, text in rest[1:2])
    return pragma_refusal(rest[0][1].strip('"`[]'), has_arg, write=True)


def _now_in_pure_context(toks: list[tuple[str, str]]) -> str | None:
    """Refuse 'now' where stock SQLite refuses it: index expressions, CHECK and generated columns.

    Omni's stamped date functions would accept it (they are declared deterministic, like SQLite's own),
    but a schema that plain SQLite rejects at run time is a trap for anyone reading the file later.
    """
    words = [t for k, t in toks if k == "word"]
    if "INDEX" in words[1:3]:  # CREATE [UNIQUE] INDEX: expressions and the partial-index WHERE
        return "'now' is refused in an index: " + _NOW_WHY if _uses_now(toks) else None
    if "TABLE" not in words[1:3] or _is_create_table_as(toks):
        return None  # views and triggers run at write time with the stamp; CREATE TABLE AS runs once
    for i, (kind, text) in enumerate(toks[:-1]):
        if kind == "word" and text in ("CHECK", "AS") and toks[i + 1][1] == "(":
            if _uses_now(_paren_group(toks, i + 1)):
                return "'now' is refused in CHECK constraints and generated columns: " + _NOW_WHY
    return None


def _is_create_table_as(toks: list[tuple[str, str]]) -> bool:
    for kind, text in toks:
        if text == "(":
            return False
        if kind == "word" and text == "AS":
            return True
    return False


_NOW_WHY = ("its value would depend on when each row is written; use a DEFAULT, a trigger, or pass "
            "the time as a parameter")


def _paren_group(toks: list[tuple[str, str]], start: int) -> list[tuple[str, str]]:
    depth = 0
    for j in range(start, len(toks)):
        depth += {"(": 1, ")": -1}.get(toks[j][1], 0)
        if depth == 0:
            return toks[start:j + 1]
    return toks[start:]


def _uses_now(toks: list[tuple[str, str]]) -> bool:
    """True if the tokens use the current time: a 'now' literal, CURRENT_*, or date() with no argument."""
    for i, (kind, text) in enumerate(toks):
        if kind == "string" and text[1:-1].lower() == "now":
            return True
        if kind == "word" and text in ("CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME"):
            return True
        if kind != "word" or text not in DATE_FUNCTIONS:
            continue
        if [t for _, t in toks[i + 1:i + 3]] == ["(", ")"]:
            return True  # date() means date('now')
        after = toks[i + 1:i + 4]
        if text == "STRFTIME" and len(after) == 3 and after[0][1] == "(" and after[1][0] == "string" \
                and after[2][1] == ")":
            return True  # strftime(format) means strftime(format, 'now')
    return False


# --- the authorizers ----------------------------------------------------------------------------------

_A = sqlite3
_TEMP_ACTIONS = {
    _A.SQLITE_CREATE_TEMP_INDEX, _A.SQLITE_CREATE_TEMP_TABLE, _A.SQLITE_CREATE_TEMP_TRIGGER,
    _A.SQLITE_CREATE_TEMP_VIEW, _A.SQLITE_DROP_TEMP_INDEX, _A.SQLITE_DROP_TEMP_TABLE,
    _A.SQLITE_DROP_TEMP_TRIGGER, _A.SQLITE_DROP_TEMP_VIEW,
}
_READ_ACTIONS = {_A.SQLITE_SELECT, _A.SQLITE_READ, _A.SQLITE_FUNCTION, _A.SQLITE_RECURSIVE}


class Guard:
    """Holds the authorizer state of one connection and the reason for the last refusal."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.internal = False  # True only while Omni runs its own statements on the applied index

    def refuse(self, reason: str) -> int:
        self.reason = reason
        return sqlite3.SQLITE_DENY

    def take_reason(self) -> str | None:
        reason, self.reason = self.reason, None
        return reason

    def write_authorizer(self, action, arg1, arg2, dbname, source) -> int:
        if self.internal:
            return sqlite3.SQLITE_OK
        if action in (_A.SQLITE_ATTACH, _A.SQLITE_DETACH):
            return self.refuse("ATTACH, DETACH and VACUUM are refused: every replica has exactly one database")
        if action in (_A.SQLITE_TRANSACTION, _A.SQLITE_SAVEPOINT):
            return self.refuse("transaction control is refused: each execute command is one transaction")
        if action in _TEMP_ACTIONS or (dbname == "temp" and action not in _READ_ACTIONS):
            return self.refuse("temporary tables, views, indexes and triggers are refused: they live in one "
                               "node's connection and vanish on restart")
        if action == _A.SQLITE_PRAGMA:
            why = pragma_refusal(arg1 or "", arg2 is not None, write=True)
            return self.refuse(why) if why else sqlite3.SQLITE_OK
        if action == _A.SQLITE_FUNCTION and (arg2 or "").lower() in REFUSED_FUNCTIONS:
            return self.refuse(f"{arg2.lower()}() is refused in execute: {REFUSED_FUNCTIONS[arg2.lower()]}")
        if action == _A.SQLITE_CREATE_VTABLE and (arg2 or "").lower() in NODE_LOCAL_TABLES:
            return self.refuse(f"virtual tables using {arg2} are refused: it describes one node")
        if action == _A.SQLITE_READ and _node_local_pragma_table(arg1 or ""):
            return self.refuse(f"{arg1} is refused in execute: its rows differ between nodes")
        if action == _A.SQLITE_READ and (arg1 or "").lower() in NODE_LOCAL_TABLES:
            return self.refuse(f"{arg1} is refused in execute: it describes one node, not the replicated data")
        if action not in _READ_ACTIONS:
            table = next((t for t in ((arg1 or "").lower(), (arg2 or "").lower()) if t in OMNI_TABLES), None)
            if table:
                return self.refuse(f"{table} {OMNI_TABLES[table]} and is read-only")
        return sqlite3.SQLITE_OK

    def read_authorizer(self, action, arg1, arg2, dbname, source) -> int:
        if action == _A.SQLITE_PRAGMA:
            why = pragma_refusal(arg1 or "", arg2 is not None, write=False)
            return self.refuse(why) if why else sqlite3.SQLITE_OK
        if action == _A.SQLITE_FUNCTION and (arg2 or "").lower() in REFUSED_IN_QUERY:
            return self.refuse(f"{arg2.lower()}() is refused: {REFUSED_FUNCTIONS[arg2.lower()]}")
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == _A.SQLITE_UPDATE and arg1 in ("sqlite_master", "sqlite_temp_master"):
            return sqlite3.SQLITE_OK  # asked when a pragma table (pragma_table_info) is first used
        return self.refuse("query is read-only: send statements that change the database with execute")
