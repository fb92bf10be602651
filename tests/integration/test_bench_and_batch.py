"""`omni bench` end to end (real node processes, started by the bench itself) and the kv batch op.

Benchmarks are never timed here: these tests check that the bench runs, counts what it should (ops,
errors by code) and cleans up after itself; and that a batch is one atomic write whose bad input is
refused with a clear error.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from omni.client import Client, OmniError

from .cluster import request_until_outcome


def omni(*args, timeout=120, **kwargs):
    return subprocess.run([sys.executable, "-m", "omni.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def node_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention ``marker`` (a data directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "node start" in cmd:
                found.append(cmd)
    return found


def test_bench_start_3_json_counts_ops_and_errors_and_stops_its_nodes(tmp_path):
    data = tmp_path / "bench-data"
    run = omni("bench", "--start", "3", "--duration", "2", "--warmup", "0.5", "--concurrency", "16",
               "--data-dir", str(data), "-o", "json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["workload"] == "put"
    assert result["ops"] > 0 and result["requests"] == result["ops"]
    assert isinstance(result["errors"], dict)
    assert result["errors_total"] == sum(result["errors"].values())
    assert set(result["latency_ms"]) >= {"p50", "p90", "p99", "max"}
    assert node_processes(str(data)) == []


def test_bench_put_batch_reports_entries(tmp_path):
    run = omni("bench", "--start", "3", "--workload", "put-batch", "--batch", "50", "--duration", "2",
               "--warmup", "0.5", "--concurrency", "4", "--data-dir", str(tmp_path / "d"), "-o", "json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["batch"] == 50
    assert result["requests"] > 0 and result["ops"] == 50 * result["requests"]
    assert result["entries_per_s"] == result["ops_per_s"]


def test_bench_counts_error_replies_by_code(cluster):
    """SQL ops against a kv cluster are all refused: every refusal is counted under its code, none as an op."""
    run = omni("bench", "--endpoints", cluster.endpoint(1), "--workload", "sql-insert", "--duration", "1",
               "--warmup", "0", "--concurrency", "4", "--target", "first", "-o", "json")
    assert run.returncode == 1  # nothing succeeded
    result = json.loads(run.stdout)
    assert result["ops"] == 0
    assert result["errors"]["UNKNOWN_OP"] > 0 and result["errors_total"] >= result["errors"]["UNKNOWN_OP"]
    run = omni("bench", "--endpoints", cluster.endpoint(1), "--workload", "get", "--read-level", "local",
               "--duration", "1", "--warmup", "0", "--concurrency", "4", "--keys", "100", "-o", "json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["ops"] > 0 and result["read_level"] == "local"


def test_bench_echo_workload_starts_its_own_echo_server():
    run = omni("bench", "--workload", "echo", "--duration", "1", "--warmup", "0", "--concurrency", "8", "-o", "json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["ops"] > 0 and result["errors"] == {}


def test_ctrl_c_stops_the_bench_and_every_node_it_started(tmp_path):
    data = tmp_path / "bench-data"
    proc = subprocess.Popen([sys.executable, "-m", "omni.cli", "bench", "--start", "3", "--duration", "60",
                             "--concurrency", "8", "--data-dir", str(data), "--progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(node_processes(str(data))) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # into the run (or still electing): either way Ctrl-C must clean up
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert node_processes(str(data)) == []


# ---- the kv batch op -------------------------------------------------------------------------------------

def test_batch_is_one_entry_applied_in_order(cluster):
    with cluster.client() as c:
        before = c.status()["decided_idx"]
        result = c.batch([{"op": "put", "key": "a", "value": 1}, {"op": "put", "key": "b", "value": b"\x00"},
                          {"op": "cas", "key": "a", "expected": 1, "value": 2}, {"op": "delete", "key": "b"},
                          {"op": "cas", "key": "zz", "expected": 1, "value": 3}])
        results = result["results"]
        assert [r.get("succeeded") for r in results[2::2]] == [True, False]
        assert results[3]["deleted"] is True
        assert c.get("a")["value"] == 2 and c.get("b")["value"] is None
        put = c.put_many({f"k{i}": i for i in range(500)})
        assert len(put["results"]) == 500
        assert c.get("k499", consistency="linearizable")["value"] == 499
        # one entry per batch (plus the linearizable reads, which are entries too): far fewer than 500
        assert c.status()["decided_idx"] - before < 20


@pytest.mark.parametrize("request_body, fragment", [
    ({"op": "batch"}, "needs 'ops'"),
    ({"op": "batch", "ops": "put"}, "needs 'ops'"),
    ({"op": "batch", "ops": [{"op": "get", "key": "a"}]}, "ops[0]"),
    ({"op": "batch", "ops": [{"op": "put", "key": "a", "value": 1}, {"op": "put", "value": 1}]}, "ops[1]"),
    ({"op": "batch", "ops": [{"op": "cas", "key": "a", "value": 1}]}, "expected"),
    ({"op": "batch", "ops": [{"op": "put", "key": "", "value": 1}]}, "key"),
])
def test_batch_refuses_bad_input_with_bad_request_and_applies_nothing(cluster, request_body, fragment):
    reply = request_until_outcome(cluster, 1, {**request_body, "id": 7})
    assert reply["ok"] is False and reply["id"] == 7
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert fragment in reply["error"]["message"]
    with cluster.client() as c:
        assert c.get("a")["value"] is None


def test_batch_over_the_frame_limit_is_too_large(cluster):
    ops = [{"op": "put", "key": f"k{i}", "value": b"x" * 1024} for i in range(17 * 1024)]
    with cluster.client() as c, pytest.raises(OmniError) as refused:
        c.batch(ops)
    assert refused.value.code == "TOO_LARGE"  # refused by the client before sending
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.endpoint(1))
    try:
        sock.send(msgpack.packb({"op": "batch", "ops": ops, "id": 1}, use_bin_type=True))
        assert sock.poll(30_000)
        reply = msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close(linger=0)
    assert reply["ok"] is False and reply["error"]["code"] == "TOO_LARGE"


def test_client_checks_batch_ops_before_sending():
    with Client(["tcp://127.0.0.1:9"], timeout=0.1, retries=0) as c:
        for bad, fragment in [([1], "ops[0]"), ([{"op": "put", "key": "a"}], "'value'"),
                              ([{"op": "put", "key": "a", "value": 1}, {"op": "delete", "key": 3}], "ops[1]")]:
            with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
                c.batch(bad)


def test_kv_batch_command_loads_json_lines_in_chunks(cluster, tmp_path):
    source = tmp_path / "ops.jsonl"
    source.write_text("\n".join(json.dumps([f"key{i}", {"n": i}]) for i in range(25))
                      + '\n{"op": "cas", "key": "key0", "expected": 5, "value": 0}\n')
    env = {**os.environ, "OMNI_ENDPOINTS": ",".join(cluster.endpoint(p) for p in cluster.pids)}
    run = omni("kv", "batch", str(source), "--chunk", "10", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["FAILED ops[25] cas key0", "OK 26 ops in 3 batches"]
    with cluster.client() as c:
        assert c.get("key24")["value"] == {"n": 24}
    run = omni("kv", "batch", "-", "-o", "json", input='[{"op": "delete", "key": "key1"}]', env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["results"][0]["deleted"] is True
    run = omni("kv", "batch", "-", input='{"op": "get", "key": "x"}', env=env)
    assert run.returncode == 1 and "ops[0]" in run.stderr
