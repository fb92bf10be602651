"""`omni sql`: SQL on a cluster running the sql state machine, one statement or an interactive shell.

`omni sql "STATEMENT"` sends one statement and prints its result; several statements separated by `;`
run one after the other, each its own op, stopping at the first failure. A statement that reads
(it starts, after comments, with SELECT, WITH, PRAGMA, EXPLAIN or VALUES) is sent as `query`, at the
`--consistency` level; anything else as `execute`, a write through the log (so is a PRAGMA that sets a
value and a WITH that ends in INSERT, UPDATE or DELETE). Results print as aligned tables, writes as
`N rows affected`; `-o json` prints each op's result object instead. A failure ends the command with exit
code 1 and `error: CODE: message` on stderr, as every client command does (cli/common.py).

`omni sql` alone is a shell in the manner of the sqlite3 and rqlite shells: a statement runs once a line
ends with `;` (and the text is a complete statement, so a `;` inside a string or a trigger body does not
end it); dot-commands (`.help` lists them) work at the start of a statement. Errors print as one line on
stderr and the shell goes on. With a terminal it prompts and keeps its history (readline) in
~/.omni_history; without one (`echo "SELECT 1;" | omni sql`) it reads stdin to the end without prompts,
runs a last statement that lacks its `;`, and exits 1 if anything failed, so scripts and tests can
drive it.
"""
from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from omni.client import CONSISTENCY, Client, OmniError
from omni.statemachines.sql_guard import tokens

from .common import Options, client_command, print_json
from .status import _ask, _print_table, _row

HISTORY_FILE = Path("~/.omni_history")
HISTORY_LENGTH = 1000
PROMPT, CONTINUE = "omni> ", "  ...> "
QUERY_WORDS = {"SELECT", "WITH", "PRAGMA", "EXPLAIN", "VALUES"}
WRITE_WORDS = {"INSERT", "UPDATE", "DELETE", "REPLACE"}
#: Omni's own tables (the applied index, the client sessions) and SQLite's are left out of .tables/.schema
HIDDEN = "name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_omni\\_%' ESCAPE '\\'"

_consistency = click.option(
    "--consistency", type=click.Choice(CONSISTENCY), default=None,
    help="For queries: linearizable (the default) reads the latest write; leader asks the leader without "
         "a quorum round; local answers from the node asked, possibly stale.")


@click.command("sql")
@click.argument("statement", required=False)
@_consistency
@client_command
def sql(opts: Options, statement: str | None, consistency: str | None) -> None:
    """Run STATEMENT, or without it start an interactive SQL shell (reads stdin when it is not a terminal).

    Queries (SELECT, WITH, PRAGMA, EXPLAIN, VALUES) go to `query`, other statements to `execute`.
    """
    with opts.client() as client:
        if statement is not None:
            return run_statements(client, opts, statement, consistency)
        shell = Shell(client, opts, consistency)
        if shell.run(sys.stdin.isatty()):
            sys.exit(1)


def run_statements(client: Client, opts: Options, text: str, consistency: str | None) -> None:
    """The one-shot mode: every statement in ``text``, in order; the first failure raises."""
    statements = split_statements(text)
    if not statements:
        raise OmniError("BAD_REQUEST", "no SQL statement given")
    for statement in statements:
        show(run_one(client, statement, consistency), opts.json)


# --- statements ------------------------------------------------------------------------------------------

def split_statements(text: str) -> list[str]:
    """The statements in ``text``: split at each `;` that ends a complete statement (so not at one inside
    a string, a comment or a trigger body); pieces that hold only comments or spaces are dropped."""
    out, start = [], 0
    for i, char in enumerate(text):
        if char == ";" and sqlite3.complete_statement(text[start:i + 1]):
            out.append(text[start:i + 1])
            start = i + 1
    out.append(text[start:])
    return [piece.strip() for piece in out if any(t != ";" for _, t in tokens(piece))]


def is_query(statement: str) -> bool:
    """True if the statement only reads, judged from its first word (after comments and spaces).

    Two refinements keep writes on the write path: a PRAGMA that assigns (`PRAGMA user_version = 3`)
    and a WITH whose main statement is INSERT, UPDATE or DELETE.
    """
    toks = tokens(statement)
    words = [text for kind, text in toks if kind == "word"]
    if not words or words[0] not in QUERY_WORDS:
        return False
    if words[0] == "PRAGMA":
        return "=" not in (text for _, text in toks)
    if words[0] == "WITH":
        return not (_top_level_words(toks) & WRITE_WORDS)
    return True


def _top_level_words(toks: list[tuple[str, str]]) -> set[str]:
    """The words outside any parentheses: for WITH, those of the main statement after the CTEs."""
    depth, words = 0, set()
    for kind, text in toks:
        depth += {"(": 1, ")": -1}.get(text, 0)
        if depth == 0 and kind == "word":
            words.add(text)
    return words


def run_one(client: Client, statement: str, consistency: str | None) -> dict:
    if is_query(statement):
        return client.query(statement, consistency=consistency)
    return client.execute(statement)


# --- output ------------------------------------------------------------------------------------------------

def show(result: Any, as_json: bool) -> None:
    """Print a query's rows as a table or an execute's effects, or (json) the result object."""
    if as_json:
        print_json(result)
    elif isinstance(result, dict) and "columns" in result:
        for line in format_table(result.get("columns") or [], result.get("rows") or []):
            click.echo(line)
    elif isinstance(result, dict):
        for item in result.get("results") or []:
            click.echo(describe_write(item))


def describe_write(item: dict) -> str:
    count, rowid = item.get("rows_affected", 0), item.get("last_insert_rowid", 0)
    text = f"{count} row{'' if count == 1 else 's'} affected"
    return f"{text}, last insert rowid {rowid}" if rowid else text


def format_table(columns: list, rows: list) -> list[str]:
    """An aligned table in the style of the sqlite3 shell's `.mode table`; columns of numbers align right."""
    if not columns:
        return []
    cells = [[cell_text(value) for value in row] for row in rows]
    widths = [max([len(str(name))] + [len(row[i]) for row in cells if i < len(row)])
              for i, name in enumerate(columns)]
    numeric = [_numeric([row[i] for row in rows if i < len(row)]) for i in range(len(columns))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule, _line([str(c) for c in columns], widths, [False] * len(widths)), rule]
    lines += [_line(texts, widths, numeric) for texts in cells]
    return lines + [rule] if rows else lines


def _numeric(values: list) -> bool:
    """A column whose values are all numbers (NULLs aside)."""
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def _line(texts: list[str], widths: list[int], right: list[bool]) -> str:
    padded = [t.rjust(w) if r else t.ljust(w) for t, w, r in zip(texts, widths, right)]
    return "| " + " | ".join(padded) + " |"


def cell_text(value: Any) -> str:
    """One value as the sqlite3 shell's quote mode would show it, on one line."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "X'" + value.hex().upper() + "'"
    text = repr(value) if isinstance(value, float) else str(value)
    return text.replace("\r", "\\r").replace("\n", "\\n")  # a newline would break the table


def report(code: str, message: str) -> None:
    """An error as one line on stderr, `error: CODE: message`; the shell goes on."""
    click.echo(f"error: {code}: {' '.join(str(message).split())}", err=True)


# --- the shell ---------------------------------------------------------------------------------------------

class Shell:
    """Reads statements and dot-commands line by line and runs them; `run` returns how many failed."""

    def __init__(self, client: Client, opts: Options, consistency: str | None):
        self.client, self.opts, self.consistency = client, opts, consistency
        self.buffer: list[str] = []  # the lines of a statement not yet complete
        self.failures = 0
        self.done = False
        # name -> (method, usage, what it does)
        self.commands: dict[str, tuple[Callable[[list[str]], None], str, str]] = {
            ".tables": (self.tables, ".tables [PATTERN]", "list tables and views (PATTERN as in LIKE)"),
            ".schema": (self.schema, ".schema [TABLE]", "show the CREATE statements, of one table or all"),
            ".status": (self.status, ".status", "each node's status, as `omni status` prints it"),
            ".nodes": (self.nodes, ".nodes", "the endpoints, the node behind each, and which one leads"),
            ".consistency": (self.set_consistency, ".consistency [LEVEL]",
                             "show or set the read level of later queries: linearizable|leader|local"),
            ".help": (self.help, ".help", "show this list"),
            ".quit": (self.quit, ".quit", "leave the shell (so do .exit and Ctrl-D)"),
            ".exit": (self.quit, ".exit", "leave the shell"),
        }

    def run(self, interactive: bool) -> int:
        if not interactive:
            self.feed(line.rstrip("\n") for line in sys.stdin)
            return self.failures
        history = History()
        click.echo(f"omni sql on {', '.join(self.opts.endpoints)}. Statements end with ';'. "
                   ".help lists the commands.")
        try:
            self.feed(self._typed_lines(history))
        finally:
            history.save()
        return 0  # a person saw every error already

    def feed(self, lines: Iterable[str]) -> None:
        """Run what the lines hold: dot-commands at once, SQL once a line ends a complete statement."""
        for line in lines:
            if not self.buffer and line.strip().startswith("."):
                self.dot(line.strip())
            elif self.buffer or tokens(line):  # a line of only comments or spaces starts nothing
                self.buffer.append(line)
                text = "\n".join(self.buffer)
                if text.rstrip().endswith(";") and sqlite3.complete_statement(text):
                    self.buffer = []
                    self.execute(text)
            if self.done:
                return
        if self.buffer:  # the input ended without a `;`: run what is there
            text, self.buffer = "\n".join(self.buffer), []
            self.execute(text)

    def execute(self, text: str) -> None:
        for statement in split_statements(text):
            if not self.attempt(lambda: self.run_statement(statement)):
                return  # the statements after it likely depend on it

    def run_statement(self, statement: str) -> None:
        show(run_one(self.client, statement, self.consistency), self.opts.json)

    def attempt(self, action: Callable[[], None]) -> bool:
        """Run one statement or command; a failure of any kind is one line on stderr, never a traceback."""
        try:
            action()
            return True
        except OmniError as e:
            report(e.code, e.message)
        except ValueError as e:  # refused by the client before anything was sent
            report("BAD_REQUEST", str(e))
        except KeyboardInterrupt:
            report("INTERRUPTED", "the request was abandoned; a write may still be applied")
        except Exception as e:  # a bug must still not end the shell with a traceback
            report("INTERNAL", f"{type(e).__name__}: {e}")
        self.failures += 1
        return False

    def _typed_lines(self, history: History) -> Iterator[str]:
        """Lines typed at the terminal. Ctrl-C drops the statement being typed; Ctrl-D ends the shell."""
        while True:
            try:
                line = input(CONTINUE if self.buffer else PROMPT)
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:
                click.echo("^C")
                self.buffer = []
                continue
            yield line  # the caller handles it before asking for the next one
            if not self.buffer:
                history.statement_done()

    # --- dot-commands ---

    def dot(self, line: str) -> None:
        name, *args = line.split()
        if name not in self.commands:
            report("BAD_REQUEST", f"unknown command {name}; .help lists the commands")
            self.failures += 1
            return
        self.attempt(lambda: self.commands[name][0](args))

    def help(self, args: list[str]) -> None:
        click.echo("SQL statements end with ';' and may span several lines. Commands:")
        width = max(len(usage) for _, usage, _ in self.commands.values())
        for _, usage, what in self.commands.values():
            click.echo(f"  {usage:<{width}}  {what}")

    def quit(self, args: list[str]) -> None:
        self.done = True

    def tables(self, args: list[str]) -> None:
        where, params = (" AND name LIKE ?", [args[0]]) if args else ("", [])
        result = self.client.query(f"SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND "
                                   f"{HIDDEN}{where} ORDER BY name", params, consistency=self.consistency)
        if self.opts.json:
            return print_json(result)
        for (name,) in result["rows"]:
            click.echo(name)

    def schema(self, args: list[str]) -> None:
        where, params = (" AND tbl_name = ? COLLATE NOCASE", [args[0]]) if args else ("", [])
        result = self.client.query(f"SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND {HIDDEN}{where} "
                                   "ORDER BY tbl_name, type DESC, name", params, consistency=self.consistency)
        if self.opts.json:
            return print_json(result)
        for (text,) in result["rows"]:
            click.echo(f"{text};")

    def status(self, args: list[str]) -> None:
        answers = self._ask_all()
        if self.opts.json:
            print_json(answers)
        else:
            _print_table([_row(answer) for answer in answers])
        if not any(answer["ok"] for answer in answers):
            raise OmniError("UNAVAILABLE", f"none of the {len(answers)} endpoint(s) answered")

    def nodes(self, args: list[str]) -> None:
        answers = self._ask_all()
        if self.opts.json:
            return print_json(answers)
        rows = [["ENDPOINT", "NODE", "ROLE", "LEADER"]]
        for answer in answers:
            node, role = _row(answer)[0], _row(answer)[2]  # role: or `unreachable`, `error: CODE`
            rows.append([answer["endpoint"], node, role, "*" if role == "leader" else ""])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        click.echo(_leader_line(answers))

    def set_consistency(self, args: list[str]) -> None:
        if args and args[0] not in CONSISTENCY:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY)}, not {args[0]!r}")
        if args:
            self.consistency = args[0]
        click.echo(f"consistency: {self.consistency or 'linearizable'}")

    def _ask_all(self) -> list[dict]:
        """Every endpoint's own status, in parallel (cli/status.py): no failover, a row per node."""
        endpoints = self.opts.endpoints
        with ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
            return list(pool.map(lambda endpoint: _ask(endpoint, self.opts.timeout), endpoints))


def _leader_line(answers: list[dict]) -> str:
    views = [a["status"] for a in answers if a["ok"] and isinstance(a["status"], dict)]
    leaders = {v.get("leader") for v in views} - {0, None}
    if not leaders:
        return "leader: none known"
    if len(leaders) > 1:
        return f"leader: the nodes disagree ({', '.join(map(str, sorted(leaders)))}); an election may be on"
    leader = leaders.pop()
    where = [a["endpoint"] for a in answers if a["ok"] and isinstance(a["status"], dict)
             and a["status"].get("node") == leader]
    return f"leader: node {leader}" + (f" at {where[0]}" if where else " (not among the endpoints)")


class History:
    """readline's history, loaded from and saved to ~/.omni_history; one entry per statement."""

    def __init__(self) -> None:
        try:
            import readline  # also makes input() editable; missing on some platforms
        except ImportError:
            readline = None
        self.readline = readline
        if readline is None:
            return
        readline.set_history_length(HISTORY_LENGTH)
        try:
            readline.read_history_file(HISTORY_FILE.expanduser())
        except OSError:  # no history yet, or unreadable: start afresh
            pass
        self.mark = readline.get_current_history_length()

    def statement_done(self) -> None:
        """Join the lines typed since the last statement into one entry, as the sqlite3 shell does."""
        rl = self.readline
        if rl is None:
            return
        end = rl.get_current_history_length()
        if end - self.mark > 1:
            lines = [rl.get_history_item(i) for i in range(self.mark + 1, end + 1)]  # items count from 1
            for position in range(end - 1, self.mark - 1, -1):  # removal counts from 0
                rl.remove_history_item(position)
            rl.add_history(" ".join(line.strip() for line in lines if line))
        self.mark = rl.get_current_history_length()

    def save(self) -> None:
        if self.readline is None:
            return
        try:
            self.readline.write_history_file(HISTORY_FILE.expanduser())
        except OSError as e:
            report("HISTORY", f"could not save the history to {HISTORY_FILE}: {e}")
