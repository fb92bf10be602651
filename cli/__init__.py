"""The `omni` command group."""
import click

from .bench import bench
from .kv import kv
from .node import cluster, node
from .reconfigure import members, reconfigure
from .sim import sim
from .sql import sql
from .status import status
from .torture import torture


@click.group()
def main():
    """Omni: a replicated state machine on OmniPaxos."""


@main.command()
def version():
    """Print the version."""
    click.echo("omni 0.1.0")


main.add_command(sim)
main.add_command(kv)
main.add_command(status)
main.add_command(node)
main.add_command(cluster)
cluster.add_command(reconfigure)
cluster.add_command(members)
main.add_command(torture)
main.add_command(sql)
main.add_command(bench)
