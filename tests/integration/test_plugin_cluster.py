"""A third-party state machine plug-in (examples/omni-counter) installed and run in a real 3-node cluster.

The example is installed with pip, offline, into a private target directory (as
tests/statemachines/test_counter_plugin.py does, whose helpers this reuses), and the node processes get
that directory on PYTHONPATH: so they find the plug-in only through its entry point, exactly as an
installed package is found. Claims: `--state-machine counter` starts a working cluster; `incr` is a
write (sent with client and seq, so a retry at another node is applied once) and `get` a read, served
alike by different nodes.
"""
import os
import shutil
import time

import pytest

from omni.client import Client, OmniError
from tests.statemachines.test_counter_plugin import EXAMPLE, build_wheel_by_hand, pip_install

from .cluster import LocalCluster, request_until_outcome


def install_example(tmp_path):
    """The example installed into a private directory; returns that directory."""
    source, target = tmp_path / "omni-counter", tmp_path / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = pip_install(target, source)
    if result.returncode != 0:  # no offline wheel builder on this machine: install the same package as a wheel
        result = pip_install(target, build_wheel_by_hand(source, tmp_path))
    assert result.returncode == 0, result.stderr
    assert list(target.glob("omni_counter-*.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def counter_cluster(tmp_path):
    site = install_example(tmp_path)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    c = LocalCluster(tmp_path, state_machine="counter", env={**os.environ, "PYTHONPATH": path}).start()
    try:
        c.leader()
        yield c
    finally:
        c.stop()


def counter_client(cluster, *pids):
    return cluster.client(*pids, write_ops={"incr"})  # the plug-in's write op: sent with client and seq


def test_plugin_cluster_counts_through_the_log_and_answers_on_every_node(counter_cluster):
    with counter_client(counter_cluster, 1) as c:
        assert c.status()["state_machine"] == "counter"
        assert c.request("incr", name="visits") == {"value": 1}
        assert c.request("incr", name="visits", by=41) == {"value": 42}
        with pytest.raises(OmniError) as bad:
            c.request("incr", name="visits", by="x")
        assert c.request("get", name="visits") == {"value": 42}
    assert bad.value.code == "BAD_REQUEST"

    with counter_client(counter_cluster, 2) as c:
        assert c.request("get", name="visits") == {"value": 42}  # linearizable at another node
        assert c.request("incr", name="visits") == {"value": 43}
        assert c.status()["state_machine"] == "counter"
    end = time.monotonic() + 60
    while time.monotonic() < end:  # a local read at the third node, once it has applied everything
        with counter_client(counter_cluster, 3) as c:
            if c.request("get", name="visits", consistency="local") == {"value": 43}:
                break
        time.sleep(0.1)
    else:
        raise AssertionError("node 3 never applied the increments")


def test_plugin_write_retried_at_another_node_is_applied_once(counter_cluster):
    incr = {"op": "incr", "name": "once", "by": 5, "client": "counter-client", "seq": 1}
    first = request_until_outcome(counter_cluster, 1, {**incr, "id": 1}, poll_ms=5000)
    again = request_until_outcome(counter_cluster, 2, {**incr, "id": 2}, poll_ms=5000)
    assert first["ok"] and first["result"] == again["result"] == {"value": 5}
    with Client([counter_cluster.endpoint(3)], timeout=2, retries=10) as c:
        assert c.request("get", name="once") == {"value": 5}
