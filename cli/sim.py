"""`omni sim`: run the deterministic fault simulator over many seeds, or replay one with its trace."""
from __future__ import annotations

import multiprocessing
import sys
import time

import click


def _run(args):
    from omni.sim.fuzz import run_seed
    seed, nodes = args
    return run_seed(seed, nodes)


@click.command("sim")
@click.option("--seeds", type=click.IntRange(min=1), default=100, show_default=True, help="How many seeds to run.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First seed.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Replay this one seed and print its trace.")
@click.option("--nodes", type=click.IntRange(min=1, max=9), default=3, show_default=True, help="Cluster size.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
def sim(seeds: int, start: int, seed: int | None, nodes: int, jobs: int | None) -> None:
    """Fuzz the protocol core: crashes, partitions, lost/duplicated/reordered messages, reconfiguration.

    Exits non-zero on the first violated invariant, printing the seed and a readable trace.
    """
    began = time.monotonic()
    if seed is not None:
        results = [_run((seed, nodes))]
        click.echo("\n".join(results[0].trace))
    else:
        work = [(s, nodes) for s in range(start, start + seeds)]
        jobs = jobs or multiprocessing.cpu_count()
        if jobs == 1:
            results = map(_run, work)
        else:
            pool = multiprocessing.get_context("fork").Pool(jobs)
            results = pool.imap_unordered(_run, work, chunksize=8)
    count = decided = 0
    for result in results:
        count += 1
        decided += result.decided
        if not result.ok:
            if seed is None:
                click.echo("\n".join(result.trace[-80:]))
            click.echo(f"VIOLATION seed={result.seed} nodes={nodes}: {result.violation}", err=True)
            click.echo(f"settings: {result.settings}", err=True)
            click.echo(f"replay with: omni sim --seed {result.seed} --nodes {nodes}", err=True)
            sys.exit(1)
    elapsed = time.monotonic() - began
    click.echo(f"seeds={count} nodes={nodes} violations=0 decided={decided} seconds={elapsed:.1f}")
