"""`omni kv put|get|del|cas|range`: the key-value ops from a shell, after etcdctl.

Each command sends one op through `omni.client` (so it retries across the endpoints and a retried put
is still applied once) and prints the result: short text for people (etcdctl's `OK`, the bare value,
the number of keys deleted), or with `-o json` the op's result object exactly as the node sent it.
Values typed on the command line are strings; `--json-value` reads them as JSON instead, so numbers,
lists, maps, true/false and null can be stored. A missing key prints nothing and still exits 0 (as
etcdctl does); a cas that does not match prints FAILED and exits 0 too: it is an answer, not a failure.
"""
from __future__ import annotations

import json
from typing import Any

import click
from omni.client import CONSISTENCY

from .common import Options, client_command, parse_value, print_json, print_value

_consistency = click.option(
    "--consistency", type=click.Choice(CONSISTENCY), default=None,
    help="linearizable (the default) reads the latest write; leader asks the leader without a quorum "
         "round; local answers from the node asked, possibly stale.")
_json_value = click.option("--json-value", is_flag=True,
                           help="Parse values as JSON instead of taking them as strings.")


@click.group("kv")
def kv() -> None:
    """Key-value ops on a cluster running the kv state machine."""


@kv.command("put")
@click.argument("key")
@click.argument("value")
@_json_value
@client_command
def put(opts: Options, key: str, value: str, json_value: bool) -> None:
    """Set KEY to VALUE."""
    parsed = parse_value(value, json_value)
    with opts.client() as client:
        result = client.put(key, parsed)
    if opts.json:
        print_json(result)
    else:
        click.echo("OK")


@kv.command("get")
@click.argument("key")
@_consistency
@client_command
def get(opts: Options, key: str, consistency: str | None) -> None:
    """Print the value of KEY (nothing if it is absent)."""
    with opts.client() as client:
        result = client.get(key, consistency=consistency)
    if opts.json:
        print_json(result)
    elif result.get("value") is not None:
        print_value(result["value"])


@kv.command("del")
@click.argument("key")
@client_command
def delete(opts: Options, key: str) -> None:
    """Delete KEY; print how many keys were deleted (1 or 0)."""
    with opts.client() as client:
        result = client.delete(key)
    if opts.json:
        print_json(result)
    else:
        click.echo("1" if result.get("deleted") else "0")


@kv.command("cas")
@click.argument("key")
@click.argument("values", nargs=-1, metavar="[EXPECTED] VALUE")
@click.option("--absent", is_flag=True, help="Succeed only if KEY is absent (then give VALUE alone).")
@_json_value
@client_command
def cas(opts: Options, key: str, values: tuple[str, ...], absent: bool, json_value: bool) -> None:
    """Set KEY to VALUE if it holds EXPECTED (or, with --absent, if it is absent).

    With --json-value, EXPECTED null also means absent. Prints SUCCEEDED, or FAILED and the current value.
    """
    expected, value = _cas_args(values, absent, json_value)
    with opts.client() as client:
        result = client.cas(key, expected, value)
    if opts.json:
        print_json(result)
        return
    click.echo("SUCCEEDED" if result.get("succeeded") else "FAILED")
    if not result.get("succeeded") and result.get("value") is not None:
        print_value(result["value"])


def _cas_args(values: tuple[str, ...], absent: bool, json_value: bool) -> tuple:
    wanted = 1 if absent else 2
    if len(values) != wanted:
        usage = "KEY VALUE with --absent" if absent else "KEY EXPECTED VALUE (or KEY VALUE with --absent)"
        raise click.UsageError(f"cas takes {usage}")
    if absent:
        return None, parse_value(values[0], json_value)
    return parse_value(values[0], json_value), parse_value(values[1], json_value)


@kv.command("range")
@click.argument("prefix", required=False)
@click.option("--start", default=None, help="First key (inclusive), instead of a prefix.")
@click.option("--end", default=None, help="Stop before this key (default: to the last key).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most this many keys (0: all).")
@_consistency
@client_command
def range_(opts: Options, prefix: str | None, start: str | None, end: str | None, limit: int | None,
           consistency: str | None) -> None:
    """Print the keys starting with PREFIX, or in [--start, --end); all keys if neither is given.

    Text output is one `key<TAB>value` line per key, in key order.
    """
    if prefix is not None and (start is not None or end is not None):
        raise click.UsageError("give a PREFIX or --start/--end, not both")
    with opts.client() as client:
        result = client.range(prefix=prefix, start=start, end=end, limit=limit, consistency=consistency)
    if opts.json:
        print_json(result)
        return
    for key, value in result.get("items", []):
        click.echo(f"{key}\t", nl=False)
        print_value(value)
    if result.get("more"):
        click.echo(f"(more keys follow; raise --limit above {limit} to see them)", err=True)


@kv.command("batch")
@click.argument("source", type=click.File("r"), default="-")
@click.option("--chunk", type=click.IntRange(min=0), default=0, show_default=True,
              help="Send at most this many ops per batch (0: all in one). Each batch is atomic on its own.")
@client_command
def batch(opts: Options, source, chunk: int) -> None:
    """Apply many ops from SOURCE (a file, or - for stdin) as one batch: one log entry, all in order.

    SOURCE holds JSON: one array, or one item per line. An item is an op map such as
    {"op": "put", "key": "k", "value": 1} (put, delete or cas), or a [key, value] pair meaning put.
    For bulk loads give --chunk 1000: every 1000 ops go as one batch (one entry each). Prints OK and the
    number of ops (and FAILED lines for cas ops that did not match); -o json prints {"results": [...]}.
    """
    ops = _read_ops(source.read())
    if not ops:
        raise click.UsageError("no ops given")
    size = chunk or len(ops)
    results: list = []
    with opts.client() as client:
        for lo in range(0, len(ops), size):
            results.extend(client.batch(ops[lo:lo + size]).get("results", []))
    if opts.json:
        print_json({"results": results})
        return
    for i, (op, result) in enumerate(zip(ops, results)):
        if op["op"] == "cas" and not result.get("succeeded"):
            click.echo(f"FAILED ops[{i}] cas {op['key']}")
    batches = -(-len(ops) // size)
    click.echo(f"OK {len(ops)} op{'s' if len(ops) != 1 else ''}" + (f" in {batches} batches" if batches > 1 else ""))


def _read_ops(text: str) -> list[dict]:
    text = text.strip()
    if not text:
        return []
    try:
        items = json.loads(text)
        if not isinstance(items, list) or (len(items) == 2 and isinstance(items[0], str)):
            items = [items]  # a single op map, or a single [key, value] pair
    except json.JSONDecodeError:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise click.BadParameter(f"line {n} is not JSON: {e}", param_hint="SOURCE") from None
    return [_as_op(item, i) for i, item in enumerate(items)]


def _as_op(item: Any, index: int) -> dict:
    if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
        return {"op": "put", "key": item[0], "value": item[1]}
    if isinstance(item, dict):
        return item
    raise click.BadParameter(f"item {index} is neither an op map nor a [key, value] pair: {item!r:.80}",
                             param_hint="SOURCE")
