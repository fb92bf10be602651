"""The `omni` command group."""
import click

from .sim import sim


@click.group()
def main():
    """Omni: a replicated state machine on OmniPaxos."""


@main.command()
def version():
    """Print the version."""
    click.echo("omni 0.1.0")


main.add_command(sim)
