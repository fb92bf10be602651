"""The printed summary of a torture run (`runner.Report.summary`).

It always states: operations and their outcomes, faults injected (each with its recovery times, then per
scenario), the linearizability verdict with "anomalies=N", "acknowledged writes lost=N", nodes that died
on their own, final reads that failed, PASS or FAIL, and where the history and logs are when kept.
"""
from __future__ import annotations

from collections import Counter

from .history import OK


def summary(report) -> str:
    c, history = report.config, report.history
    counts = history.counts()
    finals = sum(1 for op in history.ops if op.process == "final")
    et = c.tick_ms * c.election_ticks / 1000
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    lines = [
        (f"omni torture: {c.nodes} nodes, {c.clients} clients, {c.keys} key slots, {c.time:g}s of load, "
         f"seed {report.seed}, nemeses {','.join(c.nemeses)}; election timeout {et:.2f}s (ET)"),
        f"operations: {len(history.ops)} ({outcomes}) in {report.load_seconds:.1f}s, of which {finals} final reads",
        _faults_line(report.faults),
    ]
    for f in report.faults:
        lines.append(f"  t={f.at:6.1f}s {f.name:14} held {f.held:4.1f}s  write during fault: {_s(f.first_write, et)}"
                     f"  after heal: {_s(f.recovery, et)}   ({f.detail})")
    if report.faults:
        from .runner import recovery_table
        lines += ["recovery time until a write succeeds again, per scenario:"]
        lines += [f"  {line}" for line in recovery_table(report.faults, et)]
    lines += _checks(report)
    return "\n".join(lines)


def _faults_line(faults) -> str:
    kinds = Counter(f.name for f in faults)
    return f"faults injected: {len(faults)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"


def _s(value, et) -> str:
    return "none" if value is None else f"{value:.2f}s ({value / et:.1f} ET)"


def _checks(report) -> list[str]:
    v = report.verdict
    lines = [v.explain() if v is not None else "linearizability: not checked",
             f"anomalies={report.anomalies}"]
    if report.final_errors:
        lines.append("acknowledged writes lost: not checked (the final reads failed)")
    else:
        lines.append(f"acknowledged writes lost={len(report.lost)} (of {report.set_acked} acknowledged set writes)")
    for op in report.lost[:10]:
        lines.append(f"  lost: {op.describe(report.history.origin)}")
    if v is not None and v.unknown:
        lines.append(f"inconclusive: {len(v.unknown)} key(s) ran out of checking budget (no violation found)")
    lines += [f"node crash: {c}" for c in report.crashes]
    lines += [f"final reads: {e}" for e in report.final_errors[:10]]
    verdict = "PASS" if report.passed else "FAIL"
    lines.append(f"result: {verdict}")
    if report.work_dir.exists():
        lines.append(f"history and node logs: {report.work_dir}")
    acked = sum(1 for op in report.history.ops if op.status == OK and op.f != "get")
    lines.append(f"(acknowledged writes in the history: {acked})")
    return lines
