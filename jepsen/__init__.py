"""omni.jepsen: a Jepsen-style fault-injection harness and linearizability checker for real Omni clusters.

The pieces, in the order a run uses them:
- `history`: the recorder. Every client operation is an invoke/complete pair with monotonic timestamps and
  a status: ok (it happened), fail (it definitely did not), info (unknown: it may happen at any later time).
- `linearizability`: a Wing-Gong-Lowe checker for a KV register model, split per key.
- `cluster`: real node processes (`python -m omni.cli node start`), node N on its own 127.0.0.x address.
- `netfilter`: iptables rules in a chain of our own, for partitions that really drop packets.
- `nemesis`: the faults: kill -9 / restart, SIGSTOP / SIGCONT, and partitions (majority/minority, isolated
  leader, ring, bridge, and the OmniPaxos paper's quorum-loss, constrained-election and chained cases).
- `workload`: the client workers (threads, one omni.client.Client each) that drive load and record it.
- `runner`: start a cluster, run workers plus a nemesis schedule, heal, read back, check, summarise
  (`report` prints it); `omni torture` is its command line, bench/recovery.py measures recovery times.
- `synthetic`: linearizable-by-construction histories from a simulated register, for the checker's tests
  and its speed (`python -m omni.jepsen.synthetic`).
"""
