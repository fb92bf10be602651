"""Real 3-node clusters started through the CLI: replication, kill -9, restarts, catch-up, retries."""
import threading

import msgpack
import zmq

from omni.client import Client, OmniError

from .cluster import wait_for


def local_value(cluster, pid, key):
    try:
        with Client([cluster.endpoint(pid)], timeout=0.5, retries=0) as c:
            return c.get(key, consistency="local")["value"]
    except OmniError:
        return None


class Writer(threading.Thread):
    """Puts unique keys as fast as one client can, recording every acknowledged write."""

    def __init__(self, cluster, prefix):
        super().__init__(daemon=True)
        self.client = cluster.client(timeout=0.5, deadline=20.0)
        self.prefix, self.acked, self.failed = prefix, {}, 0
        self.running = True

    def run(self):
        i = 0
        while self.running:
            i += 1
            key = f"{self.prefix}-{i:06d}"
            try:
                self.client.put(key, i)
                self.acked[key] = i
            except OmniError:
                self.failed += 1
        self.client.close()

    def stop(self):
        self.running = False
        self.join(timeout=60)


def assert_all_present(cluster, acked, pid=None):
    with cluster.client(*(pid and [pid] or [])) as c:
        missing = [k for k, v in acked.items() if c.get(k)["value"] != v]
    assert not missing, f"{len(missing)} acknowledged writes missing, e.g. {missing[:5]}"


def test_write_on_one_node_is_read_on_every_other_node(cluster):
    with cluster.client(1) as c:
        revision = c.put("greeting", {"hello": ["world", 1]})["revision"]
    for pid in (2, 3):
        with cluster.client(pid) as c:
            got = c.get("greeting")
            assert got["value"] == {"hello": ["world", 1]} and got["revision"] >= revision
        assert wait_for(lambda: local_value(cluster, pid, "greeting"), what="local read") == {"hello": ["world", 1]}


def test_leader_consistency_read_at_a_follower_is_served_by_the_leader(cluster):
    leader = cluster.leader()
    follower = next(p for p in cluster.pids if p != leader)
    with cluster.client(leader) as c:
        c.put("k", "v")
    with cluster.client(follower) as c:
        assert c.get("k", consistency="leader")["value"] == "v"


def test_status_reports_each_nodes_view(cluster):
    leader = cluster.leader()
    with cluster.client(1) as c:
        c.put("a", 1)
    views = {p: cluster.status(p) for p in cluster.pids}
    assert {v["leader"] for v in views.values()} == {leader}
    assert views[leader]["role"] == "leader" and views[leader]["ballot"][2] == leader
    assert all(v["members"] == [1, 2, 3] and v["state_machine"] == "kv" for v in views.values())
    assert views[leader]["decided_idx"] >= 1


def test_kill_9_of_leader_under_load_resumes_writes_and_loses_no_acknowledged_write(cluster):
    writer = Writer(cluster, "load")
    writer.start()
    wait_for(lambda: len(writer.acked) > 50, what="writes before the kill")
    leader = cluster.leader()
    before = len(writer.acked)
    cluster.kill(leader)
    wait_for(lambda: len(writer.acked) > before + 100, deadline=30, what="writes after the kill")
    writer.stop()
    assert_all_present(cluster, writer.acked)
    cluster.start(leader)  # the old leader comes back and catches up too
    last = max(writer.acked)
    wait_for(lambda: local_value(cluster, leader, last) == writer.acked[last], what="old leader catching up")


def test_kill_9_of_every_node_then_restart_keeps_every_acknowledged_write(cluster):
    writer = Writer(cluster, "all")
    writer.start()
    wait_for(lambda: len(writer.acked) > 200, what="acknowledged writes")
    for pid in cluster.pids:
        cluster.kill(pid)
    writer.stop()
    assert writer.acked
    cluster.start()
    cluster.leader()
    assert_all_present(cluster, writer.acked)


def test_node_down_for_a_while_rejoins_and_catches_up(cluster):
    cluster.kill(1)
    with cluster.client(2, 3) as c:
        for i in range(300):
            c.put(f"missed-{i:03d}", i)
    cluster.start(1)
    wait_for(lambda: local_value(cluster, 1, "missed-299") == 299, what="node 1 catching up")
    with Client([cluster.endpoint(1)], timeout=2, retries=0) as c:
        items = c.range(prefix="missed-", consistency="local")["items"]
    assert [v for _, v in items] == list(range(300))


def test_retry_with_same_client_and_seq_is_applied_once_even_on_another_node(cluster):
    ctx = zmq.Context.instance()

    def raw(pid, request):
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cluster.endpoint(pid))
        sock.send(msgpack.packb(request))
        assert sock.poll(10_000)
        reply = msgpack.unpackb(sock.recv())
        sock.close()
        return reply

    put = {"op": "put", "key": "once", "value": 1, "client": "c-1", "seq": 7, "id": 1}
    first = raw(1, put)
    again = raw(2, {**put, "id": 2})  # the "retry", at another node
    third = raw(3, {**put, "value": 2, "id": 3})  # same (client, seq) with other content: still the first result
    assert first["ok"] and again["result"] == first["result"] and third["result"] == first["result"]
    with cluster.client() as c:
        got = c.get("once")
    assert got["value"] == 1 and got["mod_revision"] == first["result"]["revision"]
