"""`omni torture`: run the Jepsen-style harness (omni.jepsen.runner) against a real local cluster.

It starts its own nodes on 127.0.0.11.. (fresh ports), drives client load, injects faults from
`--nemesis` for `--time`, heals, reads everything back and checks the history. It prints the summary and
exits 0 on a pass, 1 on any anomaly (a linearizability violation, an acknowledged write lost, a node that
died on its own, or a cluster that did not recover), 2 if the checker ran out of budget without a verdict.
Partitions use iptables (installed with apt-get if missing), so partition nemeses need root; SIGTERM and
Ctrl-C still stop the nodes and remove the rules.
"""
from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import click

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise click.BadParameter(f"expected a duration like 90s, 10m or 1h, got {text!r}", param_hint="--time")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_range(text: str, hint: str) -> tuple[float, float]:
    try:
        low, _, high = text.partition(":")
        pair = (float(low), float(high or low))
    except ValueError:
        raise click.BadParameter(f"expected LOW:HIGH seconds, got {text!r}", param_hint=hint) from None
    if not 0 <= pair[0] <= pair[1]:
        raise click.BadParameter(f"expected 0 <= LOW <= HIGH, got {text!r}", param_hint=hint)
    return pair


@click.command()
@click.option("--time", "duration", default="10m", show_default=True, help="How long to run: 90s, 10m, 1h.")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--clients", type=click.IntRange(1, 64), default=5, show_default=True)
@click.option("--keys", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Register key slots.")
@click.option("--nemesis", default="kill,pause,partition", show_default=True,
              help="Comma-separated faults, or 'all': kill, kill-leader, kill-all, pause, pause-leader, partition, "
                   "halves, isolate-leader, ring, bridge, oneway-leader, quorum-loss, constrained, chained.")
@click.option("--seed", type=int, help="Seed for the schedule and the workload (random if not given).")
@click.option("--quiet", default="2:4", show_default=True, help="Seconds between faults, LOW:HIGH.")
@click.option("--hold", default="3:6", show_default=True, help="Seconds each fault lasts, LOW:HIGH.")
@click.option("--tick-ms", type=click.FloatRange(min=1), default=10.0, show_default=True)
@click.option("--election-ticks", type=click.IntRange(min=2), default=20, show_default=True)
@click.option("--partition-action", type=click.Choice(["DROP", "REJECT"]), default="DROP", show_default=True)
@click.option("--check-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds the linearizability checker may take.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the nodes' data, logs and the history go (default: a temporary directory).")
@click.option("--keep", is_flag=True, help="Keep the work directory even when the run passes.")
def torture(duration, nodes, clients, keys, nemesis, seed, quiet, hold, tick_ms, election_ticks,
            partition_action, check_timeout, work_dir, keep):
    """Torture a local cluster with faults while checking linearizability."""
    from omni.jepsen import nemesis as nem
    from omni.jepsen.runner import Config, run

    try:
        names = tuple(nem.parse(nemesis))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--nemesis")
    config = Config(time=parse_duration(duration), nodes=nodes, clients=clients, keys=keys, nemeses=names,
                    seed=seed, quiet=parse_range(quiet, "--quiet"), hold=parse_range(hold, "--hold"),
                    tick_ms=tick_ms, election_ticks=election_ticks, partition_action=partition_action,
                    check_timeout=check_timeout, work_dir=work_dir, keep=keep)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the cleanup in run()
    report = run(config, log=lambda line: click.echo(line, err=True))
    click.echo(report.summary())
    if report.passed:
        sys.exit(0)
    if report.anomalies or report.lost or report.crashes or report.final_errors:
        sys.exit(1)
    sys.exit(2)
