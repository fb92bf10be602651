"""One torture run: a real cluster, client load, a nemesis schedule, a final read-back, and the checks.

The phases (`run`):
1. Start `nodes` node processes (each on its own 127.0.0.x, see `cluster`) and wait for a leader; open the
   iptables chain if any partition nemesis is asked for.
2. Start `clients` workers and the probe writers; then, until `time` is up, repeat: a quiet period, one
   fault from the nemesis list (each name once per round, in seeded random order), hold it, heal it.
3. Heal everything, stop the workers, wait for a leader, read every register key ever used (recorded in
   the history as ops of process "final") and range-read the set keys.
4. Check: linearizability of the whole history (per key); acknowledged set writes missing at the end
   (lost); nodes that died on their own; final reads that failed (no recovery). Any of these fails the run.
Cleanup is unconditional (`finally`): nodes stopped (paused ones resumed first), iptables chain removed.
The history (history.jsonl), node statuses sampled every 0.5 s (status.jsonl), node logs and data
directories stay in the work directory when the run fails or `keep` is set. Recovery per fault: seconds from injection to the first successful write called after it
(during the fault), and from the heal to the first successful write called after the heal.
Times in the report are seconds; "ET" is election timeouts (tick_ms x election_ticks).
"""
from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omni.client import Client

from . import nemesis as nem
from .cluster import Cluster
from .history import OK, History, Op
from .linearizability import Verdict, check
from .netfilter import Firewall
from .workload import SET_PREFIX, KeySpace, Probe, StatusSampler, Worker


@dataclass
class Config:
    time: float = 60.0
    nodes: int = 3
    clients: int = 5
    keys: int = 10
    nemeses: tuple[str, ...] = ("kill", "pause", "partition")
    seed: int | None = None
    quiet: tuple[float, float] = (2.0, 4.0)   # seconds between faults, uniform in this range
    hold: tuple[float, float] = (3.0, 6.0)    # seconds a fault lasts
    tick_ms: float = 10.0
    election_ticks: int = 20
    attempt_timeout: float = 1.0
    ops_per_key: int = 500
    check_timeout: float = 600.0
    partition_action: str = "DROP"
    work_dir: Path | None = None
    keep: bool = False
    node_env: dict = field(default_factory=dict)
    final_deadline: float = 120.0


@dataclass
class FaultRecord:
    name: str
    detail: str
    at: float                    # seconds since the start of the load
    held: float
    first_write: float | None    # injection -> first ok write called after it, if before the heal
    recovery: float | None       # heal -> first ok write called after it


@dataclass
class Report:
    config: Config
    seed: int
    work_dir: Path
    history: History
    faults: list[FaultRecord] = field(default_factory=list)
    verdict: Verdict | None = None
    set_acked: int = 0
    lost: list[Op] = field(default_factory=list)
    final_errors: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    load_seconds: float = 0.0

    @property
    def anomalies(self) -> int:
        return len(self.verdict.illegal) if self.verdict else 0

    @property
    def passed(self) -> bool:
        return (self.verdict is not None and self.verdict.ok and not self.lost and not self.final_errors
                and not self.crashes)

    def summary(self) -> str:
        from .report import summary
        return summary(self)


def run(config: Config, log: Callable[[str], None] = print) -> Report:
    seed = config.seed if config.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    work_dir = Path(config.work_dir or tempfile.mkdtemp(prefix="omni-torture-"))
    history = History()
    report = Report(config, seed, work_dir, history)
    cluster = Cluster(work_dir / "cluster", config.nodes, tick_ms=config.tick_ms,
                      election_ticks=config.election_ticks, env=config.node_env)
    partitions = any(n == "partition" or n in nem.PARTITIONS for n in config.nemeses)
    firewall = Firewall(config.partition_action) if partitions else None
    try:
        if firewall is not None:
            firewall.open()
        cluster.start()
        cluster.leader(deadline=config.final_deadline)
        log(f"cluster up in {work_dir}; seed {seed}; load for {config.time:g}s")
        _load_and_faults(config, cluster, nem.Nemesis(cluster, firewall, rng), history, rng, report, log)
    finally:
        history.finish_pending()
        history.dump(work_dir / "history.jsonl")
        cluster.stop()
        if firewall is not None:
            firewall.close()
    log(f"checking {len(history.ops)} ops")
    report.verdict = check(history.ops, timeout=config.check_timeout, origin=history.origin)
    if report.passed and not config.keep and config.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    return report


def _load_and_faults(config, cluster, nemesis, history, rng, report, log) -> None:
    keys, stop = KeySpace(config.keys, config.ops_per_key), threading.Event()
    probe = Probe(cluster.endpoints(), per_node=2).start()
    sampler = StatusSampler(cluster, report.work_dir / "status.jsonl")
    sampler.start()
    workers = [Worker(w, cluster.endpoints(w), history, keys, rng.randrange(1 << 32), stop, config.attempt_timeout)
               for w in range(config.clients)]
    for w in workers:
        w.start()
    started = time.monotonic()
    try:
        faults = _schedule(config, cluster, nemesis, rng, started, report, log)
    finally:
        report.crashes += _crashes(cluster)
        nemesis.heal_all()
        stop.set()
        for w in workers:
            w.join(timeout=config.attempt_timeout * config.nodes + 10)
        report.load_seconds = time.monotonic() - started
    try:
        cluster.leader(deadline=config.final_deadline)
        _final_reads(cluster, history, keys, report, config.final_deadline)
    except TimeoutError as exc:
        report.final_errors.append(f"no leader after healing: {exc}")
    finally:
        probe.stop()
        sampler.stop()
    report.faults = [_record(f, probe, started) for f in faults]


def _schedule(config, cluster, nemesis, rng, started, report, log) -> list:
    end, order, faults = started + config.time, [], []
    while True:
        quiet, hold = rng.uniform(*config.quiet), rng.uniform(*config.hold)
        if time.monotonic() + quiet + min(config.hold) > end:
            break
        time.sleep(quiet)
        if not order:
            order = list(config.nemeses)
            rng.shuffle(order)
        fault = nemesis.inject(order.pop())
        faults.append(fault)
        log(f"  t={fault.injected_at - started:6.1f}s  {fault.name}: {fault.detail}")
        time.sleep(max(0.0, min(hold, end - time.monotonic())))
        report.crashes += _crashes(cluster)
        nemesis.heal(fault)
    time.sleep(max(0.0, end - time.monotonic()))
    return faults


def _crashes(cluster: Cluster) -> list[str]:
    """Nodes that exited on their own (a kill by the nemesis removes the process first)."""
    out = []
    for pid, code in cluster.exited().items():
        out.append(f"node {pid} exited with code {code}")
        cluster.procs.pop(pid, None)
    return out


def _final_reads(cluster: Cluster, history: History, keys: KeySpace, report: Report, deadline: float) -> None:
    """Read every register key, then the set keys, within ``deadline`` seconds in all; stop at a failure."""
    end = time.monotonic() + deadline
    with Client(cluster.endpoints(), timeout=2.0, retries=None, deadline=deadline) as client:
        reads = [(key, "get", lambda key=key: client.get(key)) for key in keys.all()]
        reads.append((SET_PREFIX, "range", lambda: client.range(prefix=SET_PREFIX)))
        for key, f, call in reads:
            client.deadline = max(1.0, end - time.monotonic())
            op = history.perform("final", f, key, None, call)
            if op.status != OK:
                report.final_errors.append(f"final {f} of {key!r}: {op.status} {op.error}; the cluster did not "
                                           f"recover after healing (later final reads skipped)")
                report.final_errors.append(f"node status: {_statuses(cluster)}")
                return
    present = op.result
    acked = [o for o in history.snapshot() if o.f == "put" and o.key.startswith(SET_PREFIX) and o.status == OK]
    report.set_acked = len(acked)
    report.lost = [o for o in acked if present.get(o.key) != o.value]


def _statuses(cluster: Cluster) -> str:
    out = []
    for pid in cluster.pids:
        s = cluster.status(pid)
        out.append(f"{pid}: " + ("no answer" if s is None else
                                 f"{s['role']} leader={s['leader']} ballot={s['ballot']} decided={s['decided_idx']}"))
    return "; ".join(out)


def _record(fault: nem.Fault, probe: Probe, started: float) -> FaultRecord:
    healed = fault.healed_at if fault.healed_at is not None else fault.injected_at
    return FaultRecord(fault.name, fault.detail, fault.injected_at - started, healed - fault.injected_at,
                       probe.first_ok(fault.injected_at, until=healed), probe.first_ok(healed))


def recovery_table(faults: list[FaultRecord], election_timeout: float) -> list[str]:
    """Per scenario: count, median and max seconds (and election timeouts) to the first write."""
    lines = [f"{'scenario':16} {'n':>3} {'write during fault: median / max':>34} {'after heal: median / max':>28}"]
    names = sorted({f.name for f in faults})
    for name in names:
        group = [f for f in faults if f.name == name]
        lines.append(f"{name:16} {len(group):3} {_stats([f.first_write for f in group], election_timeout):>34} "
                     f"{_stats([f.recovery for f in group], election_timeout):>28}")
    return lines


def _stats(values: list[float | None], et: float) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "none"
    med, top = statistics.median(got), max(got)
    missing = f" ({len(values) - len(got)} none)" if len(got) < len(values) else ""
    return f"{med:.2f}s/{med / et:.1f}ET / {top:.2f}s/{top / et:.1f}ET{missing}"
