"""PLANTED ANOMALY: the harness must catch a real loss when a durability rule is switched off.

*** This test needs a test-only switch in actors/storage.py that the lead adds (issue 7): ***

    UNSAFE_ENV = "OMNI_TEST_UNSAFE_SKIP_LOG_WRITES"   # module constant in omni.actors.storage

read once when the StorageActor starts (`os.environ.get(UNSAFE_ENV) == "1"`); when set, the actor logs a
WARNING containing "UNSAFE" and `_flush` skips `self.store.write(groups)` while still sending the batch's
messages and handing decided entries to the Applier. So Promise, Accepted and client acks go out for
entries that never reach the disk (ack before persist), and a whole-cluster kill -9 forgets them.
(A kill -9 cannot show a mere ack-before-fsync: the page cache survives a process kill. Skipping the
write is what a process crash can observe.)

Until the switch exists, `test_skipping_log_writes_is_caught` fails at its first assertion, by design.
`test_kill_all_without_the_switch_loses_nothing` is the control: the same schedule on the real code.
"""
from omni.actors import storage
from omni.jepsen.runner import Config, run

SWITCH = "OMNI_TEST_UNSAFE_SKIP_LOG_WRITES"


def _config(tmp_path, env):
    return Config(time=12, nodes=3, clients=4, keys=4, nemeses=("kill-all",), seed=3, quiet=(4.0, 5.0),
                  hold=(1.0, 1.5), work_dir=tmp_path, check_timeout=120, node_env=env)


def test_skipping_log_writes_is_caught(tmp_path):
    assert getattr(storage, "UNSAFE_ENV", None) == SWITCH, (
        f"omni.actors.storage has no test switch UNSAFE_ENV = {SWITCH!r}; the lead must add it "
        f"(see this file's docstring) before this test can run")
    report = run(_config(tmp_path, {SWITCH: "1"}), log=lambda line: None)
    summary = report.summary()
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "cluster").glob("node-*.log"))
    assert "UNSAFE" in logs, "the nodes did not report the switch as on"
    assert [f.name for f in report.faults].count("kill-all") >= 1, summary
    assert not report.passed, summary
    assert report.lost or report.anomalies, summary


def test_kill_all_without_the_switch_loses_nothing(tmp_path):
    report = run(_config(tmp_path, {}), log=lambda line: None)
    summary = report.summary()
    assert [f.name for f in report.faults].count("kill-all") >= 1, summary
    assert report.set_acked > 0, summary
    assert report.passed and report.anomalies == 0 and report.lost == [], summary
