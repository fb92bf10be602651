"""Real 3-node clusters with a small --snapshot-every: the log stays bounded, a node that missed compacted
entries catches up by snapshot (kv key by key, SQL row by row), a restart restores snapshot + suffix, and
exactly-once retries survive compaction and restarts."""
import re
import sqlite3
import time
import uuid

import msgpack
import pytest
import zmq

from omni.client import Client, OmniError

from .cluster import LocalCluster, request_until_outcome, wait_for

EVERY = 200


class SnapshotCluster(LocalCluster):
    def __init__(self, root, every=EVERY, **kwargs):
        super().__init__(root, **kwargs)
        self.every = every

    def command(self, pid):
        return [*super().command(pid), "--snapshot-every", str(self.every)]

    def log_text(self, pid):
        return self.logs[pid].read_text(errors="replace")


@pytest.fixture
def make_cluster(tmp_path):
    made = []

    def make(**kwargs):
        cluster = SnapshotCluster(tmp_path, **kwargs).start()
        made.append(cluster)
        cluster.leader()
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def send_all(cluster, pid, requests, window=64, deadline=180.0):
    """Pipelined requests through one node (a DEALER, many in flight), each resent until it succeeds."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.endpoint(pid))
    todo, inflight, ids = list(reversed(requests)), {}, iter(range(1, 10**9))
    end = time.monotonic() + deadline
    try:
        while todo or inflight:
            assert time.monotonic() < end, f"{len(todo) + len(inflight)} requests never succeeded"
            while todo and len(inflight) < window:
                rid, request = next(ids), todo.pop()
                sock.send_multipart([b"", msgpack.packb({**request, "id": rid, "timeout": 10}, use_bin_type=True)])
                inflight[rid] = (request, time.monotonic())
            if sock.poll(500):
                reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
                request, _ = inflight.pop(reply.get("id"), (None, 0))
                if request is not None and not reply["ok"]:
                    assert reply["error"]["code"] in ("UNAVAILABLE", "TIMEOUT"), reply
                    todo.append(request)
                    time.sleep(0.05)
            for rid, (request, at) in list(inflight.items()):
                if time.monotonic() - at > 15:  # no reply at all (the node lost it): send it again
                    del inflight[rid]
                    todo.append(request)
    finally:
        sock.close(linger=0)


def puts(start, count, prefix="k"):
    return [{"op": "put", "key": f"{prefix}{i:06d}", "value": [i, "v" * (i % 7)]} for i in range(start, start + count)]


def local(cluster, pid, request):
    try:
        with Client([cluster.endpoint(pid)], timeout=2.0, retries=0) as c:
            return c.request(request.pop("op"), consistency="local", **request)
    except OmniError:
        return None


def barrier(cluster, pids):
    """A write after everything so far; once every node in ``pids`` shows it locally, they applied all before."""
    token = uuid.uuid4().hex
    live = next(p for p in cluster.pids if cluster.alive(p))
    request_until_outcome(cluster, live, {"op": "put", "key": "~barrier", "value": token})
    for pid in pids:
        wait_for(lambda: (local(cluster, pid, {"op": "get", "key": "~barrier"}) or {}).get("value") == token,
                 deadline=90, what=f"node {pid} to apply the barrier")


def kv_state(cluster, pid):
    return local(cluster, pid, {"op": "range", "prefix": ""})["items"]


def log_rows(cluster, pid):
    """(lowest index, number of entries) of a stopped node's durable log (format 2: rows of consecutive entries)."""
    path = cluster.root / f"node-{pid}" / "log.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT min(start), sum(count) FROM log").fetchone()
    finally:
        conn.close()


def test_log_stays_bounded_while_writes_go_far_past_many_snapshot_intervals(make_cluster):
    cluster = make_cluster()
    send_all(cluster, 1, puts(0, 3000))
    barrier(cluster, cluster.pids)
    cluster.stop()
    for pid in cluster.pids:
        lowest, rows = log_rows(cluster, pid)
        assert rows < 3 * EVERY and lowest > 3000 - 3 * EVERY, (pid, lowest, rows)
        files = list((cluster.root / f"node-{pid}" / "snapshots").glob("snapshot-*.omni"))
        assert len(files) == 2, files
        assert "snapshot at" in cluster.log_text(pid)


def test_a_node_down_while_its_entries_were_compacted_catches_up_by_snapshot_key_by_key(make_cluster):
    cluster = make_cluster()
    leader = cluster.leader()
    victim = next(p for p in cluster.pids if p != leader)
    send_all(cluster, leader, puts(0, 300))
    cluster.kill(victim)
    send_all(cluster, leader, puts(200, 3000))  # overwrites 200..299, then adds 3000 more
    send_all(cluster, leader, [{"op": "delete", "key": f"k{i:06d}"} for i in range(0, 300, 3)])
    cluster.start(victim)
    others = [p for p in cluster.pids if p != victim]
    barrier(cluster, cluster.pids)
    text = cluster.log_text(victim)
    assert "fetching a snapshot" in text and re.search(r"installed snapshot at \d+ from node", text), \
        cluster.tail_logs()
    reference = kv_state(cluster, others[0])
    assert len(reference) == 3200 - 100 + 1  # every key, minus the deleted, plus the barrier
    for pid in (victim, others[1]):
        assert kv_state(cluster, pid) == reference, f"node {pid} differs"


def test_a_restart_after_a_snapshot_restores_it_and_replays_only_the_suffix(make_cluster):
    cluster = make_cluster()
    send_all(cluster, 1, puts(0, 1100))
    barrier(cluster, cluster.pids)
    pid = 2
    before = kv_state(cluster, pid)
    cluster.kill(pid)
    offset = len(cluster.log_text(pid))
    cluster.start(pid)
    wait_for(lambda: "replayed" in cluster.log_text(pid)[offset:], deadline=60, what="the restart to replay")
    text = cluster.log_text(pid)[offset:]
    restored = int(re.search(r"restored snapshot at (\d+)", text).group(1))
    replayed = int(re.search(r"replayed (\d+) entries", text).group(1))
    assert restored >= 1100 - EVERY and replayed < EVERY, (restored, replayed)
    assert wait_for(lambda: kv_state(cluster, pid) if local(cluster, pid, {"op": "get", "key": "x"}) else None,
                    what="the restarted node to serve") == before


def test_a_sql_node_down_while_its_entries_were_compacted_catches_up_row_by_row(make_cluster):
    cluster = make_cluster(state_machine="sql")
    leader = cluster.leader()
    victim = next(p for p in cluster.pids if p != leader)
    request_until_outcome(cluster, leader, {"op": "execute",
                                            "sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n REAL)"})
    insert = "INSERT OR REPLACE INTO t (id, v, n) VALUES (?, ?, ?)"
    rows = lambda a, b: [{"op": "execute", "sql": insert, "params": [i, f"row {i}", i / 7]} for i in range(a, b)]
    send_all(cluster, leader, rows(0, 300))
    cluster.kill(victim)
    send_all(cluster, leader, rows(300, 2500))
    send_all(cluster, leader, [{"op": "execute", "sql": "UPDATE t SET v = 'even' WHERE id % 2 = 0"}])
    send_all(cluster, leader, [{"op": "execute", "sql": "DELETE FROM t WHERE id % 5 = 0"}])
    cluster.start(victim)
    token = uuid.uuid4().hex
    request_until_outcome(cluster, leader, {"op": "execute", "sql": "INSERT INTO t (id, v) VALUES (-1, ?)",
                                            "params": [token]})
    select = {"op": "query", "sql": "SELECT id, v, n FROM t ORDER BY id"}
    for pid in cluster.pids:
        wait_for(lambda: (local(cluster, pid, dict(select)) or {"rows": [[0, 0]]})["rows"][0][1] == token,
                 deadline=90, what=f"node {pid} to apply the last write")
    assert re.search(r"installed snapshot at \d+ from node", cluster.log_text(victim)), cluster.tail_logs()
    reference = local(cluster, leader, dict(select))["rows"]
    assert len(reference) == 2500 - 500 + 1
    for pid in cluster.pids:
        assert local(cluster, pid, dict(select))["rows"] == reference, f"node {pid} differs"


def test_a_retry_of_a_write_below_the_snapshot_index_is_answered_from_the_session_table(make_cluster):
    cluster = make_cluster()
    first = request_until_outcome(cluster, 1, {"op": "put", "key": "x", "value": "first", "client": "alice",
                                               "seq": 1})
    assert first["ok"]
    send_all(cluster, 1, puts(0, 1000))
    barrier(cluster, cluster.pids)
    for pid in cluster.pids:  # every node restarts: the table must come from its snapshot file
        cluster.kill(pid)
    cluster.start()
    cluster.leader()
    for pid in cluster.pids:
        assert "restored snapshot at" in cluster.log_text(pid)
        retry = request_until_outcome(cluster, pid, {"op": "put", "key": "x", "value": "second",
                                                     "client": "alice", "seq": 1})
        assert retry["result"] == first["result"], (pid, retry)
    with cluster.client() as c:
        got = c.get("x")
    assert got["value"] == "first" and got["mod_revision"] == first["result"]["revision"]
