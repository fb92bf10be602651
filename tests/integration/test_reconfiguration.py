"""Live reconfiguration with real node processes: grow, shrink and replace a dead node under a write load.

Each test keeps a writer thread putting unique keys through the members that stay, records which writes
were acknowledged, changes the member set through `reconfigure` at a follower while the writer runs, and
then checks the claim of issue 5: every acknowledged write is present on every member of the new
configuration (read locally at each member, so each member's own state is what is checked).
"""
import json
import subprocess
import sys
import threading

import msgpack
import pytest
import zmq

from omni.client import Client, OmniError

from .cluster import NODE_ARGS, LocalCluster, free_ports, wait_for


class ElasticCluster(LocalCluster):
    """A LocalCluster whose nodes can be added later with `omni node start --join`."""

    def __init__(self, root, pids=(1, 2, 3), **kwargs):
        super().__init__(root, pids, **kwargs)
        self.joiners: dict[int, str] = {}  # pid -> the client endpoint it joins through

    def add(self, pid: int, via: int) -> list:
        """Start node ``pid`` as a new member waiting to join; returns its [id, peer, client] triple."""
        self.peer_port[pid], self.client_port[pid] = free_ports(2)
        self.joiners[pid] = self.endpoint(via)
        self.start(pid)
        return [pid, f"tcp://127.0.0.1:{self.peer_port[pid]}", self.endpoint(pid)]

    def command(self, pid: int) -> list[str]:
        if pid not in self.joiners:
            return super().command(pid)
        return [sys.executable, "-m", "omni.cli", "node", "start", "--id", str(pid),
                "--listen", f"tcp://127.0.0.1:{self.peer_port[pid]}", "--client", self.endpoint(pid),
                "--join", self.joiners[pid], "--data-dir", str(self.root / f"node-{pid}"),
                "--state-machine", self.state_machine, *NODE_ARGS]


class Writer(threading.Thread):
    """Puts unique keys one after another through ``endpoints``; remembers the acknowledged ones."""

    def __init__(self, endpoints, prefix="w"):
        super().__init__(daemon=True)
        self.client = Client(endpoints, timeout=1.0, retries=None, deadline=20.0)
        self.prefix, self.acked, self.unknown = prefix, [], 0
        self.stopping = threading.Event()

    def run(self):
        i = 0
        while not self.stopping.is_set():
            key = f"{self.prefix}{i}"
            try:
                self.client.put(key, i)
                self.acked.append(key)
            except OmniError:
                self.unknown += 1  # outcome unknown: not counted as acknowledged
            i += 1

    def stop(self):
        self.stopping.set()
        self.join(timeout=60)
        self.client.close()


@pytest.fixture
def elastic(tmp_path):
    clusters = []

    def make(pids=(1, 2, 3)):
        cluster = ElasticCluster(tmp_path, pids).start()
        clusters.append(cluster)
        cluster.leader()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


def follower(cluster, members) -> int:
    """One of ``members`` that follows the leader they agree on (nodes waiting to join are not asked)."""
    views = {}

    def agreed():
        views.update({p: cluster.status(p) for p in members})
        return all(views.values()) and len({v["leader"] for v in views.values()}) == 1 and \
            views[members[0]]["leader"] != 0
    wait_for(agreed, what=f"an agreed leader among {members}")
    return next(p for p in members if p != views[members[0]]["leader"])


def reconfigure(cluster, at: int, **change) -> dict:
    with Client([cluster.endpoint(at)], timeout=10.0, retries=5, deadline=60.0) as client:
        return client.reconfigure(**change)


def assert_every_acked_write_everywhere(cluster, members, writer):
    assert writer.acked, "the writer never got an acknowledgement"
    with Client([cluster.endpoint(p) for p in members], timeout=2.0, retries=None, deadline=30.0) as c:
        c.put("barrier", len(writer.acked))  # decided after every acknowledged write
    for pid in members:
        with Client([cluster.endpoint(pid)], timeout=2.0, retries=None, deadline=30.0) as c:
            wait_for(lambda: c.get("barrier", consistency="local")["value"] == len(writer.acked), deadline=60,
                     what=f"node {pid} to apply the barrier")
            missing = [k for k in writer.acked if c.get(k, consistency="local")["value"] is None]
        assert not missing, f"node {pid} lacks {len(missing)} acknowledged writes, e.g. {missing[:5]}"


def raw_request(endpoint: str, request: dict) -> dict:
    """One request on a plain REQ socket: the node's own answer, with no client-side failover."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb(request, use_bin_type=True))
        assert sock.poll(10_000), "no reply"
        return msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close()


def omni_cli(cluster, pid, *args) -> dict:
    """Run an `omni` command against node ``pid`` the way an operator would; its JSON output."""
    out = subprocess.run([sys.executable, "-m", "omni.cli", *args, "--endpoints", cluster.endpoint(pid),
                          "--timeout", "60", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def members_of(cluster, pid) -> list:
    with Client([cluster.endpoint(pid)], timeout=2.0, retries=3) as c:
        return sorted(m[0] for m in c.members()["members"])


def test_grow_from_three_to_five_under_load(elastic):
    cluster = elastic()
    writer = Writer([cluster.endpoint(p) for p in (1, 2, 3)])
    writer.start()
    wait_for(lambda: len(writer.acked) >= 50, what="writes before the change")
    new = [cluster.add(4, via=1), cluster.add(5, via=2)]
    result = reconfigure(cluster, follower(cluster, (1, 2, 3)), add=new)
    assert sorted(m[0] for m in result["members"]) == [1, 2, 3, 4, 5] and result["config_id"] == 2
    wait_for(lambda: len(writer.acked) >= 150, what="writes after the change")
    writer.stop()
    for pid in (1, 2, 3, 4, 5):
        assert members_of(cluster, pid) == [1, 2, 3, 4, 5]
    shown = omni_cli(cluster, 5, "cluster", "members")
    assert shown["config_id"] == 2 and shown["state"] == "member"
    assert_every_acked_write_everywhere(cluster, (1, 2, 3, 4, 5), writer)


def test_shrink_from_five_to_three_under_load(elastic):
    cluster = elastic(pids=(1, 2, 3, 4, 5))
    writer = Writer([cluster.endpoint(p) for p in (1, 2, 3)])
    writer.start()
    wait_for(lambda: len(writer.acked) >= 50, what="writes before the change")
    result = reconfigure(cluster, follower(cluster, (1, 2, 3)), remove=[4, 5])
    assert sorted(m[0] for m in result["members"]) == [1, 2, 3]
    wait_for(lambda: len(writer.acked) >= 150, what="writes after the change")
    writer.stop()
    assert_every_acked_write_everywhere(cluster, (1, 2, 3), writer)
    for gone in (4, 5):  # removed nodes say so instead of serving
        wait_for(lambda: (cluster.status(gone) or {}).get("role") == "removed", what=f"node {gone} removed")
        reply = raw_request(cluster.endpoint(gone), {"op": "put", "key": "x", "value": 1, "id": 1})
        assert reply["ok"] is False and reply["error"]["code"] == "NOT_MEMBER"


def test_replace_a_dead_node_under_load(elastic):
    cluster = elastic()
    writer = Writer([cluster.endpoint(p) for p in (1, 2)])
    writer.start()
    wait_for(lambda: len(writer.acked) >= 50, what="writes before the failure")
    cluster.kill(3)
    wait_for(lambda: len(writer.acked) >= 100, what="writes with node 3 dead")
    replacement = cluster.add(4, via=1)
    result = omni_cli(cluster, 1, "cluster", "reconfigure", "--add", f"4={replacement[1]},{replacement[2]}",
                      "--remove", "3")
    assert sorted(m[0] for m in result["members"]) == [1, 2, 4]
    wait_for(lambda: len(writer.acked) >= 200, what="writes after the change")
    writer.stop()
    assert_every_acked_write_everywhere(cluster, (1, 2, 4), writer)


def test_members_survive_a_restart_of_every_node(elastic):
    cluster = elastic()
    reconfigure(cluster, 2, add=[cluster.add(4, via=3)])
    with cluster.client(1, 2, 3, 4) as c:
        c.put("before-restart", 1)
    for pid in (1, 2, 3, 4):
        cluster.kill(pid)
    cluster.start(1, 2, 3, 4)  # the command line still says 1, 2, 3: membership.json wins
    cluster.leader()
    for pid in (1, 2, 3, 4):
        assert members_of(cluster, pid) == [1, 2, 3, 4]
    with cluster.client(4) as c:
        assert c.get("before-restart")["value"] == 1


def test_reconfigure_refuses_nonsense_with_a_clear_error(elastic):
    cluster = elastic()
    with Client([cluster.endpoint(1)], timeout=5.0, retries=0) as c:
        for change in ({"remove": [1, 2, 3]}, {"add": [[2, "tcp://elsewhere:1", "tcp://elsewhere:2"]]},
                       {"add": [[4, "tcp://a:1", "tcp://a:2"]], "remove": [4]}):
            with pytest.raises(OmniError) as err:
                c.reconfigure(**change)
            assert err.value.code == "BAD_REQUEST"
        assert sorted(m[0] for m in c.reconfigure(remove=[9])["members"]) == [1, 2, 3]  # nothing to change
    assert members_of(cluster, 1) == [1, 2, 3]


def test_a_member_down_during_the_change_learns_the_new_configuration_when_it_returns(elastic):
    """Node 3 misses the StopSign entirely; back up, it hears the new configuration's traffic, adopts it,
    and fetches the state it lacks from a peer instead of waiting for a configuration that is over."""
    cluster = elastic()
    with cluster.client(1, 2) as c:
        for i in range(30):
            c.put(f"a{i}", i)
    cluster.kill(3)
    reconfigure(cluster, 1, add=[cluster.add(4, via=2)])
    with cluster.client(1, 2, 4) as c:
        for i in range(30):
            c.put(f"b{i}", i)
    cluster.start(3)
    wait_for(lambda: (cluster.status(3) or {}).get("config_id") == 2, what="node 3 in configuration 2")
    with Client([cluster.endpoint(p) for p in (1, 2, 4)], timeout=2.0, retries=None, deadline=30.0) as c:
        c.put("barrier", 1)
    with Client([cluster.endpoint(3)], timeout=2.0, retries=None, deadline=30.0) as c:
        wait_for(lambda: c.get("barrier", consistency="local")["value"] == 1, what="node 3 to catch up")
        assert [c.get(f"a{i}", consistency="local")["value"] for i in range(30)] == list(range(30))
        assert [c.get(f"b{i}", consistency="local")["value"] for i in range(30)] == list(range(30))


def test_a_removed_node_that_was_down_during_the_change_learns_it_was_removed(elastic):
    """Members stay linked to the previous configuration's nodes, so the removed node's old traffic is
    heard and answered with the new membership (it says NOT_MEMBER instead of hanging in a dead config)."""
    cluster = elastic(pids=(1, 2, 3, 4))
    with cluster.client(1, 2, 3) as c:
        c.put("before", 1)
    cluster.kill(4)
    reconfigure(cluster, 1, remove=[4])
    with cluster.client(1, 2, 3) as c:
        c.put("after", 1)
    cluster.start(4)
    wait_for(lambda: (cluster.status(4) or {}).get("role") == "removed", deadline=20, what="node 4 removed")
