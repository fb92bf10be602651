"""Claims of the node's snapshots and log compaction (actors/snapshots.py, actors/applier.py, the log store):
rows really go, a restart restores snapshot + suffix, a crash at any point leaves a usable state, a node
behind every compaction point pulls the state from a peer, and exactly-once survives all of it."""
import sqlite3
import threading
import time

import msgpack
import pytest

from omni.actors import snapshots as snapshots_module
from omni.actors.applier import ENTRY_OVERHEAD, SNAPSHOT_GROWTH, ApplierActor
from omni.actors.log_store import WAL_SIZE_LIMIT, SQLiteLogStore
from omni.actors.messages import Apply, CompactLog, Replies, Reply, Tick
from omni.actors.snapshots import (
    MARKER, MarkerSnapshotter, SnapshotError, SnapshotStore, payload_parts,
)
from omni.paxos import AcceptSync, PaxosConfig, SequencePaxos
from omni.paxos.sequence_paxos import DecidedEntries, DecidedSnapshot
from omni.paxos.storage import AppendOnPrefix, Compact, SetDecidedIdx
from omni.statemachines.kv import KVStateMachine
from omni.statemachines.sql import SQLStateMachine

from ..core.test_sequence_paxos import sent, steady


class CountingKV(KVStateMachine):
    name = "kv"

    def __init__(self, data_dir=None):
        super().__init__(data_dir)
        self.applies = 0

    def apply(self, index, command):
        self.applies += 1
        return super().apply(index, command)


class FakeNode:
    """What an Applier needs of its node; tells and node-level sends are recorded (or routed)."""

    def __init__(self, pid=1, members=(1, 2, 3)):
        self.pid, self.members, self.incarnation = pid, members, 7
        self.stopping = False
        self.told, self.sent = [], []
        self.outbox = self.gateway = self.sequence_paxos = self
        self.route = None

    def snapshot_sources(self):
        return [p for p in self.members if p != self.pid]

    def tell(self, message):
        self.told.append(message)

    def send_node(self, dst, message):
        self.sent.append((dst, message))
        if self.route is not None:
            self.route(dst, message)

    def close_thread_socket(self):
        pass

    def fatal(self, reason, detail=None):
        self.fatal_reason = reason


def put(i, client=None, seq=None, key=None):
    entry = {"w": {"op": "put", "key": key or f"k{i:04d}", "value": i}, "o": 1, "i": 7, "r": 1000 + i}
    if client is not None:
        entry["cl"], entry["sq"] = client, seq
    return entry


def run_applier(node, sm, items, **kwargs):
    """Start an Applier, apply ``items`` (one Apply message), and return (actor ref, its proxy)."""
    ref = ApplierActor.start(node, sm, **kwargs)
    if items:
        ref.ask(Apply(tuple(items)))
    return ref


def replies(node):
    out = []
    for m in node.told:
        out += [m] if isinstance(m, Reply) else list(m.replies) if isinstance(m, Replies) else []
    return out


# ---- the durable log -----------------------------------------------------------------------------------

def test_compaction_deletes_log_rows_and_load_returns_the_compacted_index_and_suffix_only(tmp_path):
    path = tmp_path / "log.db"
    with SQLiteLogStore(path) as store:
        store.write([(AppendOnPrefix(0, tuple(range(100))),), (SetDecidedIdx(100),)])
        store.write([(Compact(60, MARKER),)])
    rows = sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT min(start), sum(count) FROM log").fetchone()
    assert rows == (60, 40)
    with SQLiteLogStore(path) as store:
        state = store.load()
    assert (state.compacted_idx, state.snapshot, state.entries) == (60, MARKER, list(range(60, 100)))


def test_log_disk_use_stays_bounded_under_endless_appends_with_compaction(tmp_path):
    # 40 MB appended in all, far past the WAL's checkpoint mark (1,000 pages) many times over
    path = tmp_path / "log.db"
    sizes = []
    with SQLiteLogStore(path) as store:
        for i in range(200):
            store.write([(AppendOnPrefix(i * 100, tuple("x" * 2000 for _ in range(100))),)])
            store.write([(Compact(i * 100, MARKER),)])
            sizes.append(path.stat().st_size + (tmp_path / "log.db-wal").stat().st_size)
    assert max(sizes[100:]) <= max(sizes[:100]) * 1.2, sizes  # freed pages are reused: no growth


def wal_frames(store) -> int:
    """Frames the store's WAL holds now (a PASSIVE checkpoint reports them; it copies but never resets)."""
    return store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


def test_compaction_writes_a_few_pages_not_the_entries_it_drops(tmp_path):
    # 1,000 entries of 1 KB are about 250 pages; zeroing them (secure_delete) wrote each one to the WAL again
    with SQLiteLogStore(tmp_path / "log.db") as store:
        for start in range(0, 1000, 10):  # rows of 10 entries, as appends under load make them
            store.write([(AppendOnPrefix(start, tuple("x" * 1000 for _ in range(10))),)])
        store.write([(SetDecidedIdx(1000),)])
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.write([(Compact(990, MARKER),)])
        assert wal_frames(store) < 25
        assert store.load().entries == ["x" * 1000] * 10


def test_the_wal_is_cut_back_to_its_limit_after_a_burst(tmp_path):
    wal = tmp_path / "log.db-wal"
    with SQLiteLogStore(tmp_path / "log.db") as store:
        store.write([(AppendOnPrefix(0, tuple("x" * 4000 for _ in range(3000))),)])  # one 12 MB commit
        assert wal.stat().st_size > 2 * WAL_SIZE_LIMIT
        for i in range(3000, 3005):
            store.write([(AppendOnPrefix(i, ("small",)),)])
        assert wal.stat().st_size <= WAL_SIZE_LIMIT
        assert len(store.load().entries) == 3005


# ---- snapshot files ------------------------------------------------------------------------------------

def test_snapshot_file_round_trips_and_a_corrupt_one_is_refused(tmp_path):
    store, sessions = SnapshotStore(tmp_path), [["c", 0, [[1, True, {"r": 1}, "", ""]]]]
    store.write(42, payload_parts("kv", b"state", sessions))
    snap = store.load(42)
    assert (snap.idx, snap.sm, snap.state, snap.sessions) == (42, "kv", b"state", sessions)
    data = bytearray(store.path(42).read_bytes())
    data[-1] ^= 0xFF
    store.path(42).write_bytes(bytes(data))
    with pytest.raises(SnapshotError):
        store.load(42)


def test_a_snapshot_written_in_parts_is_the_same_file_as_one_written_whole(tmp_path):
    """The Applier writes the state without copying it into the payload; the bytes on disk do not change."""
    whole, parts = SnapshotStore(tmp_path / "whole"), SnapshotStore(tmp_path / "parts")
    sessions = [["c", 0, [[1, True, {"r": 1}, "", ""]]]]
    for size in (0, 255, 256, 65_536, 300_000):
        state = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        whole.write(size + 1, msgpack.packb({"sm": "kv", "state": state, "sessions": sessions}, use_bin_type=True))
        parts.write(size + 1, payload_parts("kv", state, sessions))
        assert parts.path(size + 1).read_bytes() == whole.path(size + 1).read_bytes()
        assert parts.load(size + 1).state == state


def test_a_snapshot_that_is_not_bytes_is_refused_as_a_snapshot_error():
    """A plug-in's snapshot() returning text is its mistake: no file, the node goes on (not a crash)."""
    with pytest.raises(SnapshotError, match="not bytes"):
        payload_parts("plugin", "some text", None)


def test_an_interrupted_snapshot_write_leaves_the_previous_file_valid(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(10, payload_parts("kv", b"ten", None))
    (tmp_path / "snapshot-00000000000000000020.omni.tmp").write_bytes(b"OMNISNAP half a fi")  # crash mid-write
    store = SnapshotStore(tmp_path)  # the restart
    assert store.indexes() == [10] and store.load(10).state == b"ten"
    assert not list(tmp_path.glob("*.tmp"))


# ---- the Applier ---------------------------------------------------------------------------------------

def test_applier_snapshots_every_n_entries_and_compacts_only_behind_the_previous_file(tmp_path):
    node, store = FakeNode(), SnapshotStore(tmp_path)
    ref = run_applier(node, KVStateMachine(), [DecidedEntries(0, tuple(put(i) for i in range(35)))],
                      snapshots=store, snapshot_every=10)
    ref.stop()
    assert store.indexes() == [20, 30]  # the two newest are kept
    assert [m.idx for m in node.told if isinstance(m, CompactLog)] == [10, 20]


def test_a_large_state_is_snapshotted_only_once_the_requests_since_add_up_to_a_share_of_its_size(tmp_path):
    """A snapshot costs time in proportion to the state: a fixed entry count would re-write a large state
    every few requests. The next file waits until the requests applied since the last one (their "n", the
    request size the gateway records, plus a fixed overhead each) reach SNAPSHOT_GROWTH of its size,
    stretched per node."""
    node, store = FakeNode(), SnapshotStore(tmp_path)
    big = [{**put(i), "n": 20_000} for i in range(10)]
    for entry, i in zip(big, range(10)):
        entry["w"]["value"] = b"%d" % i * 20_000  # ten 20 kB values: a state of about 200 kB
    ref = run_applier(node, KVStateMachine(), [DecidedEntries(0, tuple(big))], snapshots=store, snapshot_every=10)
    deadline = time.monotonic() + 10
    while not ref.proxy().snapshot_due_bytes.get() and time.monotonic() < deadline:  # set once the file is written
        time.sleep(0.01)
    due = ref.proxy().snapshot_due_bytes.get()
    weight = 100 + ENTRY_OVERHEAD  # what each small entry counts for
    small = [{**put(i), "n": 100} for i in range(10, 10 + 2 * due // weight)]
    ref.ask(Apply((DecidedEntries(10, tuple(small)),)))
    reached = 10 + -(-due // weight)  # applied count once the weight since the first file reaches `due`
    ref.stop()
    assert store.indexes() == [10, reached]  # not at 20, 30, ... as the entry count alone would say
    first = store.path(10).stat().st_size
    assert first * SNAPSHOT_GROWTH <= due <= first * SNAPSHOT_GROWTH * 1.25


class SlowStore(SnapshotStore):
    """A snapshot store whose file writes wait until the test lets them go (or fail, if told to)."""

    def __init__(self, directory, fail: bool = False):
        super().__init__(directory)
        self.release, self.fail, self.started = threading.Event(), fail, threading.Event()

    def write(self, idx, payload):
        self.started.set()
        assert self.release.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        super().write(idx, payload)


def test_the_applier_keeps_applying_while_a_snapshot_file_is_written_and_compacts_only_once_it_is_durable(tmp_path):
    node, store = FakeNode(), SlowStore(tmp_path)
    ref = run_applier(node, KVStateMachine(), [DecidedEntries(0, tuple(put(i) for i in range(10)))],
                      snapshots=store, snapshot_every=10)
    assert store.started.wait(10)  # the file for 10 is being written ...
    ref.ask(Apply((DecidedEntries(10, tuple(put(i) for i in range(10, 15))),)))
    assert ref.proxy().applied.get() == 15  # ... while entries are applied and answered
    assert len(replies(node)) == 15 and store.indexes() == []
    store.release.set()
    ref.ask(Apply((DecidedEntries(15, tuple(put(i) for i in range(15, 25))),)))  # the next file waits for it
    ref.stop()
    assert store.indexes() == [10, 20]
    assert [m.idx for m in node.told if isinstance(m, CompactLog)] == [10]  # told after 20 was durable


def test_a_snapshot_file_that_cannot_be_written_stops_the_node(tmp_path):
    """A failed write or fsync is never retried (DESIGN.md rule 5), on the writer thread as anywhere."""
    node, store = FakeNode(), SlowStore(tmp_path, fail=True)
    ref = run_applier(node, KVStateMachine(), [DecidedEntries(0, tuple(put(i) for i in range(10)))],
                      snapshots=store, snapshot_every=10)
    store.release.set()
    ref.stop()
    assert "snapshot at 10 could not be written" in node.fatal_reason and store.indexes() == []


def test_restart_restores_the_snapshot_then_applies_only_the_log_suffix(tmp_path):
    entries = tuple(put(i) for i in range(35))
    original = KVStateMachine()
    run_applier(FakeNode(), original, [DecidedEntries(0, entries)], snapshots=SnapshotStore(tmp_path),
                snapshot_every=10).stop()
    restarted = CountingKV()  # a kv node restarts empty; the log was compacted at 20 (previous file)
    ref = run_applier(FakeNode(), restarted, [DecidedSnapshot(20, MARKER), DecidedEntries(20, entries[20:])],
                      snapshots=SnapshotStore(tmp_path), snapshot_every=10, replay_until=35)
    assert ref.proxy().applied.get() == 35
    ref.stop()
    assert restarted.applies == 5  # entries 30..34: the snapshot at 30 covered the rest
    assert restarted.snapshot() == original.snapshot()


def test_a_crash_between_the_snapshot_file_and_the_compaction_is_safe(tmp_path):
    """The newest file (30) is durable but the log was compacted only to 10: restart from file + log."""
    entries = tuple(put(i) for i in range(45))
    run_applier(FakeNode(), KVStateMachine(), [DecidedEntries(0, entries[:35])],
                snapshots=SnapshotStore(tmp_path / "snaps"), snapshot_every=10).stop()
    with SQLiteLogStore(tmp_path / "log.db") as log:  # the log as that crash left it
        log.write([(AppendOnPrefix(0, entries),), (SetDecidedIdx(45),), (Compact(10, MARKER),)])
        state = log.load()
    core = SequencePaxos(PaxosConfig(1, (1, 2, 3), snapshotter=MarkerSnapshotter()), state)
    decided = core.take_ready().decided
    assert isinstance(decided[0], DecidedSnapshot) and decided[0].idx == 10
    restarted, reference = KVStateMachine(), KVStateMachine()
    run_applier(FakeNode(), restarted, decided, snapshots=SnapshotStore(tmp_path / "snaps")).stop()
    run_applier(FakeNode(), reference, [DecidedEntries(0, entries)]).stop()
    assert restarted.snapshot() == reference.snapshot()


def test_a_retry_answered_before_a_snapshot_is_answered_the_same_after_restoring_it(tmp_path):
    first = (put(0, client="alice", seq=1, key="x"),)
    filler = tuple(put(i) for i in range(1, 30))
    node = FakeNode()
    run_applier(node, KVStateMachine(), [DecidedEntries(0, first + filler)], snapshots=SnapshotStore(tmp_path),
                snapshot_every=10).stop()
    original = replies(node)[0]
    retry = dict(put(30, client="alice", seq=1, key="x"), r=99)  # same (client, seq), new value and request
    node, sm = FakeNode(), KVStateMachine()
    run_applier(node, sm, [DecidedSnapshot(20, MARKER), DecidedEntries(20, (filler + (retry,))[19:])],
                snapshots=SnapshotStore(tmp_path)).stop()
    answer = [r for r in replies(node) if r.req == 99][0]
    assert (answer.ok, answer.result) == (original.ok, original.result)
    assert sm.query({"op": "get", "key": "x"})["value"] == 0  # not applied a second time
    assert sm.query({"op": "get", "key": "x"})["mod_revision"] == original.result["revision"]


def test_sql_state_machine_past_the_snapshot_is_not_restored_over(tmp_path):
    ddl = {"w": {"op": "execute", "sql": "CREATE TABLE t (x)"}, "o": 2, "i": 0, "r": 0}
    rows = [{"w": {"op": "execute", "sql": "INSERT INTO t VALUES (?)", "params": [i]}, "o": 2, "i": 0, "r": 0}
            for i in range(24)]
    entries = (ddl, *rows)
    sm = SQLStateMachine(tmp_path / "sm")
    run_applier(FakeNode(), sm, [DecidedEntries(0, entries)], snapshots=SnapshotStore(tmp_path / "s"),
                snapshot_every=10).stop()
    sm = SQLStateMachine(tmp_path / "sm")  # restart: its own file is at 25, the newest snapshot at 20
    ref = run_applier(FakeNode(), sm, [DecidedSnapshot(10, MARKER), DecidedEntries(10, entries[10:])],
                      snapshots=SnapshotStore(tmp_path / "s"))
    assert ref.proxy().applied.get() == 25
    ref.stop()  # closes the database
    sm = SQLStateMachine(tmp_path / "sm")
    assert sm.query({"op": "query", "sql": "SELECT count(*) FROM t"})["rows"] == [[24]]
    sm.close()


# ---- state transfer ------------------------------------------------------------------------------------

def test_a_node_behind_every_compaction_point_pulls_the_snapshot_from_a_peer_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots_module, "CHUNK", 97)  # many chunks, one in flight at a time
    entries = tuple(put(i) for i in range(35))
    source_sm, behind_sm = KVStateMachine(), KVStateMachine()
    source, empty, behind = FakeNode(1), FakeNode(3), FakeNode(2, members=(3, 1, 2))  # asks 3 first
    source_store = SnapshotStore(tmp_path / "1")
    refs = {1: run_applier(source, source_sm, [DecidedEntries(0, entries)], snapshots=source_store,
                           snapshot_every=10),
            3: run_applier(empty, KVStateMachine(), [], snapshots=SnapshotStore(tmp_path / "3"))}
    refs[2] = run_applier(behind, behind_sm, [], snapshots=SnapshotStore(tmp_path / "2"), tick_seconds=0.01)
    end = time.monotonic() + 20
    while source_store.newest() < 30 and time.monotonic() < end:  # written on its own thread
        time.sleep(0.01)
    for node in (source, empty, behind):
        node.route = lambda dst, message: refs[dst].tell(message)
    try:
        refs[2].tell(Apply((DecidedSnapshot(20, MARKER), DecidedEntries(20, entries[20:]))))
        end = time.monotonic() + 20
        while refs[2].proxy().applied.get() < 35 and time.monotonic() < end:
            refs[2].tell(Tick())  # node 3 has no snapshot: after a pause node 1 is asked
            time.sleep(0.01)
        assert refs[2].proxy().applied.get() == 35
    finally:
        for ref in refs.values():
            ref.stop()
    chunks = [m for dst, m in behind.sent if dst == 1]
    assert len(chunks) > 3 and any(dst == 3 for dst, _ in behind.sent)
    assert behind_sm.snapshot() == source_sm.snapshot()
    assert SnapshotStore(tmp_path / "2").newest() == 30  # installed durably as its own file


def test_a_snapshot_of_another_state_machine_stops_the_node(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(10, payload_parts("sql", b"...", None))
    with pytest.raises(SnapshotError, match="state machine"):
        ApplierActor(FakeNode(), KVStateMachine(), snapshots=store)


# ---- the core with marker snapshots ------------------------------------------------------------------

def test_marker_snapshots_sync_a_follower_with_raw_entries_unless_it_is_behind_the_compaction_point():
    net = steady(snapshotter=MarkerSnapshotter())
    net.down.add(1)
    net.propose(3, *"abcd")
    net.nodes[3].snapshot(2, local_only=True)
    assert net.nodes[3].log.entries == ["c", "d"]  # memory is bounded too: compacted entries are dropped
    net.down.discard(1)
    net.nodes[1].reconnected(3)
    net.pump()
    sync = [e.msg for e in sent(net, AcceptSync) if e.dst == 1][-1].log_sync
    assert sync.snapshot.kind == "complete" and sync.snapshot.data == MARKER and sync.sync_idx == 2
    assert net.disks[1].load().compacted_idx == 2  # what it lacks must now come from a snapshot file
    net.down.add(1)
    net.propose(3, *"ef")
    net.down.discard(1)
    net.nodes[1].reconnected(3)
    net.pump()
    sync = [e.msg for e in sent(net, AcceptSync) if e.dst == 1][-1].log_sync
    assert sync.snapshot is None and list(sync.suffix) == ["e", "f"]  # no delta: a marker holds no entries
    assert net.decided_log(1)[-2:] == ["e", "f"]
