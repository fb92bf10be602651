"""`omni node start` from flags or a cluster TOML file, bad configuration, and `omni cluster up`."""
import signal
import socket
import subprocess
import sys
import time

from click.testing import CliRunner

from omni.cli import main
from omni.cli.bench import LOCAL_PORTS, free_base_port, local_port_range
from omni.client import Client

from .cluster import free_ports


def wait_for_ping(endpoint, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with Client([endpoint], timeout=0.3, retries=0) as c:
                return c.ping()
        except Exception:
            time.sleep(0.1)
    raise AssertionError(f"{endpoint} never answered")


def test_nodes_started_from_a_cluster_toml_form_a_working_cluster(tmp_path):
    ports = free_ports(6)
    lines = ['state_machine = "kv"']
    for i, pid in enumerate((5, 6, 7)):
        lines += [f"[nodes.{pid}]", f'listen = "tcp://127.0.0.1:{ports[i]}"',
                  f'client = "tcp://127.0.0.1:{ports[3 + i]}"', f'data_dir = "{tmp_path}/n{pid}"']
    toml = tmp_path / "cluster.toml"
    toml.write_text("\n".join(lines) + "\n")
    procs = [subprocess.Popen([sys.executable, "-m", "omni.cli", "node", "start", "--config", str(toml),
                               "--id", str(pid)], stderr=subprocess.DEVNULL) for pid in (5, 6, 7)]
    try:
        endpoints = [f"tcp://127.0.0.1:{p}" for p in ports[3:]]
        with Client(endpoints, timeout=1, retries=None, deadline=30) as c:
            c.put("from-toml", 1)
        with Client([endpoints[2]], timeout=1, retries=None, deadline=30) as c:
            assert c.get("from-toml")["value"] == 1
            assert c.status()["members"] == [5, 6, 7]
    finally:
        for p in procs:
            p.terminate()
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=30))
            except subprocess.TimeoutExpired:
                p.kill()  # never leave a node behind, even when the test fails
                codes.append("hung")
        assert codes == [0, 0, 0], f"nodes did not stop cleanly on SIGTERM: {codes}"


def test_bad_node_configuration_is_a_one_line_error_not_a_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["node", "start", "--id", "1", "--listen", "tcp://127.0.0.1:1",
                                  "--client", "tcp://127.0.0.1:2", "--peers", "two=nowhere"])
    assert result.exit_code != 0 and "expected ID=tcp://HOST:PORT" in result.output
    result = runner.invoke(main, ["node", "start", "--id", "1", "--listen", "tcp://127.0.0.1:1",
                                  "--client", "tcp://127.0.0.1:2", "--state-machine", "nosuch"])
    assert result.exit_code != 0 and "nosuch" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["node", "start", "--id", "1"])
    assert result.exit_code != 0 and "--listen" in result.output


def test_node_whose_port_is_taken_exits_with_an_error(tmp_path):
    peer, client = free_ports(2)
    args = [sys.executable, "-m", "omni.cli", "node", "start", "--id", "1", "--listen",
            f"tcp://127.0.0.1:{peer}", "--client", f"tcp://127.0.0.1:{client}"]
    first = subprocess.Popen(args + ["--data-dir", str(tmp_path / "a")], stderr=subprocess.DEVNULL)
    try:
        wait_for_ping(f"tcp://127.0.0.1:{client}")
        second = subprocess.run(args + ["--data-dir", str(tmp_path / "b")], capture_output=True, text=True,
                                timeout=30)
        assert second.returncode == 1 and "error: cannot bind" in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=10)


def test_local_node_ports_come_from_below_the_ephemeral_range_where_it_leaves_room():
    """Outgoing connections take their local ports from the ephemeral range; a node port picked there could
    be taken by one (a node's own link, say) before the node binds it."""
    assert local_port_range(32768) == range(10000, 32000)  # Linux's default range starts at 32768
    assert local_port_range(20000) == range(10000, 20000)
    assert local_port_range(1024) == range(10000, 32000)  # no room below: the default window all the same


def test_free_ports_are_distinct_bindable_and_from_the_local_port_range():
    ports = free_ports(40)
    assert len(set(ports)) == 40 and all(port in LOCAL_PORTS for port in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_cluster_up_serves_clients_and_ctrl_c_stops_every_node(tmp_path):
    base = free_base_port(3)  # node N: peers on base+N, clients on base+100+N, all six checked free
    proc = subprocess.Popen([sys.executable, "-m", "omni.cli", "cluster", "up", "--base-port", str(base),
                             "--data-dir", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    endpoints = [f"tcp://127.0.0.1:{base + 100 + n}" for n in (1, 2, 3)]
    try:
        with Client(endpoints, timeout=1, retries=None, deadline=30) as c:
            c.put("up", "yes")
            assert c.get("up")["value"] == "yes"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "cluster stopped" in err and "OMNI_ENDPOINTS" in err
    gone = subprocess.run(["pgrep", "-f", "--", f"--data-dir {tmp_path}/node-"], capture_output=True)
    assert gone.returncode == 1, "node processes left behind"
