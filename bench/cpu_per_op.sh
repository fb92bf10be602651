#!/bin/bash
# CPU time each node spends per operation under load: a second view beside ops/s of whether a change made
# the request path cheaper (it varies between runs too: smaller batches cost more per op). Starts a 3-node cluster (`omni cluster up`), runs
# `omni bench` against it, reads each node's utime+stime from /proc over 12 s of the measured window.
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
pids=$(pgrep -f "omni.cli node start.*--data-dir $dir/data")
cpu() { for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | paste -sd' '; }
OMNI_ENDPOINTS=$endpoints omni bench --duration 15 --warmup 3 -o json "$@" > "$dir/out.json" 2>/dev/null &
bench=$!
sleep 3.5; c0=$(cpu); t0=$(date +%s.%N); sleep 12; c1=$(cpu); t1=$(date +%s.%N)
wait $bench
python3 - "$label" "$c0" "$c1" "$dir/out.json" "$t0" "$t1" <<'PY'
import json, os, sys
label, c0, c1, path, t0, t1 = sys.argv[1:]
d = json.load(open(path))
ops = d["ops_per_s"]
cores = [(int(b) - int(a)) / os.sysconf("SC_CLK_TCK") / (float(t1) - float(t0)) for a, b in zip(c0.split(), c1.split())]
per_op = sorted((c / ops * 1e6 for c in cores), reverse=True)
print(f"{label}: {ops:.0f} ops/s, p50 {d['latency_ms']['p50']:.1f} ms; CPU us per op by node (busiest first) "
      f"{' '.join('%.0f' % u for u in per_op)}, total {sum(per_op):.0f}")
PY
