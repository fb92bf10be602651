"""The `omni` command group."""
import click


@click.group()
def main():
    """Omni: a replicated state machine on OmniPaxos."""


@main.command()
def version():
    click.echo("omni 0.1.0")
