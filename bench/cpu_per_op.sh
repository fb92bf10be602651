#!/bin/bash
# CPU time each node spends per operation under load: a second view beside ops/s of whether a change made
# the request path cheaper (it varies between runs too: smaller batches cost more per op). Starts a 3-node cluster (`omni cluster up`), runs
# `omni bench` against it, reads each node's utime+stime from /proc over 12 s of the measured window.
# A second line per node splits that by thread: the actors name their threads (SequencePaxos, Ble, Storage,
# Applier, Gateway, Transport, Ticker, SnapshotWriter; ZMQbg/* are libzmq's), so
# /proc/PID/task/TID/comm tells them apart.
#
#   bash bench/cpu_per_op.sh LABEL [extra omni bench options]
#   bash bench/cpu_per_op.sh baseline --workload put --processes 2 --concurrency 200
set -euo pipefail
label=${1:?usage: cpu_per_op.sh LABEL [omni bench options]}; shift
port=$((17500 + RANDOM % 400))  # below the ephemeral range; node N uses port+N and port+100+N
dir=$(mktemp -d /tmp/omni-cpu-per-op.XXXXXX)
cluster=""
trap '[ -n "$cluster" ] && kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -rf "$dir"' EXIT
omni cluster up --data-dir "$dir/data" --base-port $port > "$dir/cluster.log" 2>&1 &
cluster=$!
sleep 4
endpoints=tcp://127.0.0.1:$((port+101)),tcp://127.0.0.1:$((port+102)),tcp://127.0.0.1:$((port+103))
pids=$(pgrep -f "omni.cli node start.*--data-dir $dir/data" | paste -sd' ')
# One line per thread, all read by one process so the snapshot is quick: "pid tid utime+stime name" (the
# name sits inside parentheses in stat).
threads() { python3 - $pids <<'PY'
import os, sys
for pid in sys.argv[1:]:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            s = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:  # the thread ended meanwhile
            continue
        name, rest = s[s.index("(") + 1:s.rindex(")")], s[s.rindex(")") + 2:].split()
        print(pid, tid, int(rest[11]) + int(rest[12]), name.replace(" ", "_"))
PY
}
OMNI_ENDPOINTS=$endpoints omni bench --duration 15 --warmup 3 -o json "$@" > "$dir/out.json" 2>/dev/null &
bench=$!
sleep 3.5; threads > "$dir/t0"; t0=$(date +%s.%N); sleep 12; t1=$(date +%s.%N); threads > "$dir/t1"
wait $bench
python3 - "$label" "$dir/t0" "$dir/t1" "$dir/out.json" "$t0" "$t1" <<'PY'
import collections, json, os, sys
label, path0, path1, path, t0, t1 = sys.argv[1:]
d = json.load(open(path))
ops = d["ops_per_s"]
seconds = float(t1) - float(t0)


def read(p):
    rows = {}
    for line in open(p):
        pid, tid, ticks, name = line.split()
        rows[(pid, tid)] = (int(ticks), name)
    return rows


before, after = read(path0), read(path1)
by_node = collections.defaultdict(collections.Counter)
for key, (ticks, name) in after.items():
    start = before.get(key, (0, name))[0]  # a thread born inside the window counts from zero
    by_node[key[0]][name] += (ticks - start) / os.sysconf("SC_CLK_TCK") / seconds / ops * 1e6
nodes = sorted(by_node.values(), key=lambda c: -sum(c.values()))
print(f"{label}: {ops:.0f} ops/s, p50 {d['latency_ms']['p50']:.1f} ms; CPU us per op by node (busiest first) "
      f"{' '.join('%.0f' % sum(c.values()) for c in nodes)}, total {sum(sum(c.values()) for c in nodes):.0f}")
for i, threads in enumerate(nodes, start=1):
    parts = [f"{name} {us:.1f}" for name, us in threads.most_common() if us >= 0.05]
    print(f"  node {i}: " + ", ".join(parts))
PY
