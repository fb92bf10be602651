"""`omni status`: ask every endpoint for its own view of the cluster and print one row per node.

Unlike the other client commands, this one does not fail over: it sends `status` to each endpoint
separately (in parallel, each with the command's timeout and no retries), because the point is to see
each node, including the ones that are down or disagree about the leader. A node that does not answer
shows as `unreachable`, one that answers with an error shows `error: CODE`. The exit code is non-zero
only if no node answers at all. `-o json` prints a list with one object per endpoint:
`{"endpoint", "ok": true, "status": {...}}` or `{"endpoint", "ok": false, "error": {"code", "message"}}`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from omni.client import Client, OmniError

from .common import Options, client_command, fail, print_json

# (header, key in the status result); the endpoint column is filled from the request, not the reply
_COLUMNS = [
    ("NODE", "node"), ("ENDPOINT", None), ("ROLE", "role"), ("LEADER", "leader"), ("BALLOT", "ballot"),
    ("DECIDED_IDX", "decided_idx"), ("CONFIG_ID", "config_id"), ("MEMBERS", "members"),
    ("STATE_MACHINE", "state_machine"),
]


@click.command("status")
@client_command
def status(opts: Options) -> None:
    """Show each node's role, leader, ballot, decided index, configuration and state machine."""
    with ThreadPoolExecutor(max_workers=len(opts.endpoints)) as pool:
        answers = list(pool.map(lambda endpoint: _ask(endpoint, opts.timeout), opts.endpoints))
    if opts.json:
        print_json(answers)
    else:
        _print_table([_row(answer) for answer in answers])
    if not any(answer["ok"] for answer in answers):
        fail("UNAVAILABLE", f"none of the {len(answers)} endpoint(s) answered")


def _ask(endpoint: str, timeout: float) -> dict:
    """One endpoint's answer, never an exception: the table needs a row for every node."""
    try:
        with Client([endpoint], timeout=timeout, retries=0, deadline=timeout) as client:
            return {"endpoint": endpoint, "ok": True, "status": client.status()}
    except OmniError as e:
        return {"endpoint": endpoint, "ok": False, "error": {"code": e.code, "message": e.message}}


def _row(answer: dict) -> list[str]:
    if not answer["ok"]:
        code = answer["error"]["code"]
        role = "unreachable" if code == "UNAVAILABLE" else f"error: {code}"
        return ["-", answer["endpoint"], role] + ["-"] * (len(_COLUMNS) - 3)
    result = answer["status"] if isinstance(answer["status"], dict) else {}
    return [answer["endpoint"] if key is None else _cell(result.get(key)) for _, key in _COLUMNS]


def _cell(value: Any) -> str:
    """Compact text for one status field: lists joined by commas, maps as k=v, nothing as '-'."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def _print_table(rows: list[list[str]]) -> None:
    table = [[header for header, _ in _COLUMNS]] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
