"""`omni node start` runs one node; `omni cluster up` runs a local cluster of them for trying things out.

A node is configured by flags (DESIGN.md section 6) or by a TOML file describing the whole cluster:

    state_machine = "kv"
    [nodes.1]
    listen = "tcp://127.0.0.1:7101"
    client = "tcp://127.0.0.1:7201"
    data_dir = "omni-data/node-1"      # optional

`omni node start --config cluster.toml --id 1` takes node 1's addresses and every other node as a peer.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click

DEFAULT_BASE_PORT = 7100


def _parse_peers(text: str) -> dict[int, str]:
    peers = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        pid, sep, address = item.partition("=")
        if not sep or not pid.strip().isdigit() or not address.startswith("tcp://"):
            raise click.BadParameter(f"expected ID=tcp://HOST:PORT, got {item!r}", param_hint="--peers")
        peers[int(pid)] = address.strip()
    return peers


def _from_toml(path: Path, pid: int) -> dict:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config")
    nodes = {int(k): v for k, v in doc.get("nodes", {}).items() if str(k).isdigit()}
    if pid not in nodes:
        raise click.BadParameter(f"node {pid} is not in {path} (it has {sorted(nodes)})", param_hint="--id")
    me = nodes[pid]
    try:
        return {"listen": me["listen"], "client": me["client"],
                "peers": {p: n["listen"] for p, n in nodes.items() if p != pid},
                "data_dir": me.get("data_dir"), "state_machine": doc.get("state_machine")}
    except KeyError as exc:
        raise click.BadParameter(f"node entries in {path} need 'listen' and 'client' ({exc} missing)")


@click.group()
def node():
    """Run a node."""


@node.command("start")
@click.option("--id", "pid", type=click.IntRange(min=1), required=True, help="This node's id (a positive integer).")
@click.option("--listen", help="Peer endpoint to bind, e.g. tcp://127.0.0.1:7101.")
@click.option("--client", help="Client endpoint to bind, e.g. tcp://127.0.0.1:7201.")
@click.option("--peers", default="", help="Other members: 2=tcp://127.0.0.1:7102,3=tcp://127.0.0.1:7103.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the log and state live.")
@click.option("--state-machine", help="State machine name (entry point in omni.statemachines).  [default: kv]")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A cluster TOML file instead of --listen/--client/--peers.")
@click.option("--tick-ms", type=click.FloatRange(min=1), default=10.0, show_default=True)
@click.option("--election-ticks", type=click.IntRange(min=2), default=30, show_default=True,
              help="Election timeout in ticks.")
@click.option("--snapshot-every", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Snapshot the state after at least N applied entries (and requests adding up to a quarter "
                   "of the last snapshot's size) and compact the log behind it (0: never).")
@click.option("--join", metavar="ENDPOINT",
              help="A new member: learn the configuration from this client endpoint of the running cluster "
                   "(then add the node with `omni cluster reconfigure --add`).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def start(pid, listen, client, peers, data_dir, state_machine, config_file, tick_ms, election_ticks, snapshot_every,
          join, log_level):
    """Start node ID and run it until Ctrl-C / SIGTERM."""
    from omni.actors.node import NodeConfig, run_node
    from omni.statemachines import UnknownStateMachine, load_state_machine

    settings = _from_toml(config_file, pid) if config_file else {}
    listen = listen or settings.get("listen")
    client = client or settings.get("client")
    if not listen or not client:
        raise click.UsageError("give --listen and --client, or --config FILE")
    peer_map = _parse_peers(peers) if peers else settings.get("peers", {})
    if join and peer_map:
        raise click.UsageError("--join learns the members from the cluster: do not give --peers as well")
    data_dir = data_dir or Path(settings.get("data_dir") or f"omni-data/node-{pid}")
    state_machine = state_machine or settings.get("state_machine") or "kv"
    try:
        load_state_machine(state_machine)
    except UnknownStateMachine as exc:
        raise click.BadParameter(str(exc), param_hint="--state-machine")
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s node{pid} %(levelname)s %(name)s: %(message)s")
    try:
        config = NodeConfig(pid=pid, listen=listen, client=client, peers=peer_map, data_dir=data_dir,
                            state_machine=state_machine, tick_ms=tick_ms, election_ticks=election_ticks,
                            snapshot_every=snapshot_every, join=_tcp(join) if join else None)
        sys.exit(run_node(config))
    except (OSError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@click.group()
def cluster():
    """Run a local cluster, or change a running cluster's members."""


def _tcp(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"tcp://{endpoint}"


def cluster_commands(nodes: int, base_port: int, data_dir: Path, state_machine: str) -> list[list[str]]:
    pids = range(1, nodes + 1)
    commands = []
    for pid in pids:
        peers = ",".join(f"{p}=tcp://127.0.0.1:{base_port + p}" for p in pids if p != pid)
        commands.append([sys.executable, "-m", "omni.cli", "node", "start", "--id", str(pid),
                         "--listen", f"tcp://127.0.0.1:{base_port + pid}",
                         "--client", f"tcp://127.0.0.1:{base_port + 100 + pid}",
                         "--peers", peers, "--data-dir", str(data_dir / f"node-{pid}"),
                         "--state-machine", state_machine])
    return commands


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(min=1, max=9), default=3, show_default=True)
@click.option("--base-port", type=click.IntRange(min=1024, max=65000), default=DEFAULT_BASE_PORT, show_default=True,
              help="Node N listens on BASE+N for peers and BASE+100+N for clients.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("omni-data"),
              show_default=True)
@click.option("--state-machine", default="kv", show_default=True)
def up(nodes, base_port, data_dir, state_machine):
    """Start a local cluster in the foreground; Ctrl-C stops every node cleanly."""
    commands = cluster_commands(nodes, base_port, data_dir, state_machine)
    procs = [subprocess.Popen(cmd) for cmd in commands]
    endpoints = ",".join(f"tcp://127.0.0.1:{base_port + 100 + p}" for p in range(1, nodes + 1))
    click.echo(f"omni: {nodes} nodes up (data in {data_dir}/). In another terminal:\n"
               f"  export OMNI_ENDPOINTS={endpoints}\n"
               f"  omni status\n  omni kv put hello world\n  omni kv get hello\n"
               f"Ctrl-C stops the cluster.", err=True)
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    reported: set[int] = set()
    try:  # a node that dies (say, killed to try a failover) is reported; the others keep running
        while not stopping and any(p.poll() is None for p in procs):
            for pid, p in enumerate(procs, start=1):
                if p.poll() is not None and pid not in reported:
                    reported.add(pid)
                    click.echo(f"omni: node {pid} exited with code {p.returncode}", err=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    failed = [p for p in procs if p.poll() not in (None, 0, -signal.SIGKILL)]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
    if failed:
        click.echo(f"error: a node exited with code {failed[0].returncode}", err=True)
        sys.exit(1)
    click.echo("omni: cluster stopped", err=True)



