"""`omni cluster reconfigure` and `omni cluster members`: change and show a running cluster's member set.

    omni cluster reconfigure --add 4=tcp://10.0.0.4:7101,tcp://10.0.0.4:7201 --remove 2

Any node takes the request (a follower forwards the StopSign to the leader). The command returns once
the new configuration is decided, with its id and members; a new member must already be running with
`omni node start --join ENDPOINT` (it learns the configuration from the cluster and receives the state).
Writes during the change either apply once or fail with a clear error (UNAVAILABLE while the log is
sealed); clients retry them in the new configuration.
"""
from __future__ import annotations

import click

from .common import Options, client_command, print_json


def parse_member(text: str) -> list:
    """``ID=PEER,CLIENT`` -> [id, peer, client]."""
    pid, sep, rest = text.partition("=")
    peer, comma, client = rest.partition(",")
    if not (sep and comma and pid.strip().isdigit() and int(pid) > 0 and peer.strip() and client.strip()):
        raise click.BadParameter(f"expected ID=PEER_ENDPOINT,CLIENT_ENDPOINT, got {text!r}", param_hint="--add")
    return [int(pid), _tcp(peer.strip()), _tcp(client.strip())]


def _tcp(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"tcp://{endpoint}"


@click.command("reconfigure")
@click.option("--add", "adds", multiple=True, metavar="ID=PEER,CLIENT",
              help="A node to add: its id, peer endpoint and client endpoint (repeatable).")
@click.option("--remove", "removes", multiple=True, type=click.IntRange(min=1), metavar="ID",
              help="A node id to remove (repeatable).")
@client_command
def reconfigure(opts: Options, adds, removes) -> None:
    """Move the running cluster to a new member set (decided through a StopSign)."""
    if not adds and not removes:
        raise click.UsageError("nothing to change: give --add and/or --remove")
    members = [parse_member(text) for text in adds]
    with opts.client() as client:
        result = client.reconfigure(add=members, remove=list(removes))
    if opts.json:
        print_json(result)
    else:
        pids = ", ".join(str(m[0]) for m in result["members"])
        click.echo(f"configuration {result['config_id']}: members {pids}")


@click.command("members")
@client_command
def members(opts: Options) -> None:
    """Show the configuration the answering node runs: id, members and their endpoints."""
    with opts.client() as client:
        result = client.members()
    if opts.json:
        print_json(result)
        return
    click.echo(f"configuration {result['config_id']} ({result.get('state', 'member')})")
    for pid, peer, client_endpoint in result["members"]:
        click.echo(f"  {pid}  peer {peer}  client {client_endpoint or '-'}")
