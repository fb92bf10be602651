"""Claims of the node's durable log (actors/log_store.py): same meaning as MemoryStorage, atomic calls,
acknowledged writes survive kill -9, checksums catch corruption, a disk failure stops the store for good."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zlib

import msgpack

import pytest

from omni.actors.log_store import CorruptLog, SQLiteLogStore, StorageFailure
from omni.paxos.messages import Ballot, StopSign
from omni.paxos.storage import (
    AppendOnPrefix, Compact, LogState, MemoryStorage, SetAcceptedRound, SetDecidedIdx, SetPromise, SetStopSign,
    apply_op,
)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "log.db"


@pytest.fixture
def store(path):
    s = SQLiteLogStore(path)
    yield s
    s.close()


def reopen_and_load(path) -> LogState:
    with SQLiteLogStore(path) as s:
        return s.load()


def assert_same_state(got: LogState, want: LogState) -> None:
    """Field by field, entry by entry; repr() also tells True from 1, bytes from str and list from tuple."""
    for name in ("promise", "accepted_round", "decided_idx", "compacted_idx", "stopsign"):
        assert getattr(got, name) == getattr(want, name), name
    assert repr(got.snapshot) == repr(want.snapshot), "snapshot"
    assert len(got.entries) == len(want.entries), "number of entries"
    for i, (g, w) in enumerate(zip(got.entries, want.entries)):
        assert repr(g) == repr(w), f"entry {want.compacted_idx + i}"


# -- random groups, all msgpack values that round-trip exactly (lists, never tuples) ----------------------

def random_value(rng, depth=0):
    kind = rng.randrange(9 if depth < 2 else 7)
    if kind == 0:
        return rng.randint(-2**63, 2**64 - 1)
    if kind == 1:
        return rng.random() * 1e6
    if kind == 2:
        return "".join(rng.choice("aé☃z\x00") for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.randbytes(rng.randrange(40))
    if kind == 4:
        return None
    if kind == 5:
        return rng.random() < 0.5
    if kind == 6:
        return rng.randrange(100)
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["k", 1, "x"]): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def random_ballot(rng):
    return Ballot(rng.randrange(50), rng.randrange(3), rng.randrange(6))


def random_op(rng, s: LogState):
    kind = rng.choices(range(6), weights=(1, 1, 2, 5, 1, 1))[0]
    if kind == 0:
        return SetPromise(random_ballot(rng))
    if kind == 1:
        return SetAcceptedRound(random_ballot(rng))
    if kind == 2:
        return SetDecidedIdx(rng.randint(s.compacted_idx, s.log_len))
    if kind == 3:
        start = s.log_len if rng.random() < 0.6 else rng.randint(s.compacted_idx, s.log_len)
        return AppendOnPrefix(start, tuple(random_value(rng) for _ in range(rng.randrange(8))))
    if kind == 4:
        sign = StopSign(rng.randint(1, 9), tuple(rng.sample(range(1, 8), 3)), rng.choice([None, "m", {"a": [1]}]))
        return SetStopSign(rng.choice([None, sign]))
    return Compact(rng.randint(s.compacted_idx, s.log_len + 2), rng.choice([None, random_value(rng)]))


def random_groups(rng, state: LogState) -> list:
    trial, groups = state.clone(), []
    for _ in range(rng.randint(1, 5)):
        # Ops of one group are drawn one after another against the state they will meet.
        group = []
        for _ in range(rng.randint(1, 4)):
            op = random_op(rng, trial)
            apply_op(trial, op)
            group.append(op)
        groups.append(tuple(group))
    return groups


@pytest.mark.parametrize("row_entries", [4096, 3])  # 3: appends and compactions land inside rows all the time
@pytest.mark.parametrize("seed", range(6))
def test_every_op_type_round_trips_like_memory_storage(path, seed, row_entries, monkeypatch):
    from omni.actors import log_store
    monkeypatch.setattr(log_store, "MAX_ROW_ENTRIES", row_entries)
    rng, model = random.Random(seed), MemoryStorage()
    store = SQLiteLogStore(path)
    try:
        for step in range(60):
            groups = random_groups(rng, model.load())
            model.write(groups)
            store.write(groups)
            assert_same_state(store.load(), model.load())
            if step % 15 == 14:  # a restart must resume from exactly the same state
                store.close()
                store = SQLiteLogStore(path)
                assert_same_state(store.load(), model.load())
    finally:
        store.close()
    final = reopen_and_load(path)
    assert_same_state(final, model.load())
    assert final.log_len > final.compacted_idx, "the random walk should leave some entries to compare"


def test_tuples_come_back_as_lists_and_stopsign_nodes_as_a_tuple(store):
    store.write([(AppendOnPrefix(0, ((1, (2, 3)), {7: b"x"})), SetStopSign(StopSign(2, (1, 2, 3), (4,))))])
    state = store.load()
    assert state.entries == [[1, [2, 3]], {7: b"x"}]
    assert state.stopsign == StopSign(2, (1, 2, 3), [4])


def test_many_small_appends_in_one_call_match_memory_storage(store):
    # Exercises the merging of consecutive appends, including one that rewrites the previous one's tail.
    groups = [(AppendOnPrefix(i, (i, f"e{i}")),) for i in range(0, 40, 2)]
    groups += [(AppendOnPrefix(35, ("rewritten",)), SetDecidedIdx(30)), (AppendOnPrefix(36, (36,)),)]
    groups += [(Compact(10, "snap"),), (AppendOnPrefix(37, (37,)),), (AppendOnPrefix(12, ("again",)),)]
    model = MemoryStorage()
    model.write(groups)
    store.write(groups)
    assert_same_state(store.load(), model.load())


def seeded(store):
    """Entries 3-11 in two rows (3-9 left of the first append by the compaction, then 10-11)."""
    store.write([(SetPromise(Ballot(2, 0, 1)), AppendOnPrefix(0, tuple(range(10))), SetDecidedIdx(4)),
                 (Compact(3, {"sum": 3}),)])
    store.write([(AppendOnPrefix(10, (10, 11)),)])
    return store.load()


@pytest.mark.parametrize("bad", [
    AppendOnPrefix(13, ("gap",)),   # past the end of the log (12)
    AppendOnPrefix(2, ("old",)),    # below the compacted index
    Compact(2, None),               # below the compacted index
])
def test_a_group_that_fails_validation_leaves_the_store_unchanged(store, path, bad):
    before = seeded(store)
    good = (SetDecidedIdx(9), AppendOnPrefix(10, ("new",)))
    with pytest.raises(ValueError):
        store.write([good, (SetPromise(Ballot(9, 0, 2)), AppendOnPrefix(11, ("ok",)), bad)])
    assert_same_state(store.load(), before)
    assert_same_state(reopen_and_load(path), before)
    store.write([good])  # a rejected call is not a storage failure: the store keeps working
    assert store.load().entries[-1] == "new"


def test_a_non_operation_is_rejected_with_type_error_and_nothing_written(store):
    before = seeded(store)
    with pytest.raises(TypeError):
        store.write([(SetDecidedIdx(9),), ("not an op",)])
    assert_same_state(store.load(), before)


CHILD = textwrap.dedent("""
    import random, sys, time
    from omni.actors.log_store import SQLiteLogStore
    from omni.paxos.storage import AppendOnPrefix, SetDecidedIdx

    store = SQLiteLogStore(sys.argv[1])
    n = store.load().log_len
    print("ready", n, flush=True)
    while True:
        groups = []
        for _ in range(3):  # several groups per call: group commit
            groups.append((AppendOnPrefix(n, tuple([i, "x" * (i % 50)] for i in range(n, n + 7))),
                           SetDecidedIdx(n + 7)))
            n += 7
        store.write(groups)
        print("acked", n, flush=True)
        time.sleep(random.random() * 0.002)  # the host's other work: a kill often lands between writes
""")


def run_child_and_kill(path, delay: float) -> int:
    """Start a writer, let it acknowledge at least one write, SIGKILL it after ``delay``; return last ack."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for expected in ("ready", "acked"):
            line = child.stdout.readline()
            assert line.startswith(expected), f"child said {line!r}, stderr: {child.stderr.read()}"
        time.sleep(delay)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    rest = line + child.stdout.read()
    child.stdout.close()
    child.stderr.close()
    complete = [l for l in rest.splitlines(keepends=True) if l.startswith("acked") and l.endswith("\n")]
    return int(complete[-1].split()[1])


@pytest.mark.timeout(120)  # a child that never reports would otherwise block readline() forever
def test_acknowledged_writes_survive_kill_9(path):
    rng = random.Random(9)
    for _ in range(6):
        acked = run_child_and_kill(path, rng.uniform(0.0, 0.4))
        state = reopen_and_load(path)
        assert state.log_len >= acked, "an acknowledged append is missing"
        assert state.decided_idx >= acked, "an acknowledged decided index is missing"
        assert state.decided_idx == state.log_len, "a group was applied only in part"
        for i, entry in enumerate(state.entries):
            assert entry == [i, "x" * (i % 50)], f"entry {i}"


def test_a_corrupted_log_row_makes_load_raise_corrupt_log_naming_the_row(store, path):
    seeded(store)
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE log SET data = ? WHERE start = 10", (b"\x07",))  # valid msgpack, stale crc
    raw.close()
    with SQLiteLogStore(path) as reopened, pytest.raises(CorruptLog, match="start=10"):
        reopened.load()


def test_a_log_row_holding_fewer_entries_than_it_claims_is_corruption(store, path):
    seeded(store)
    store.close()
    blob = msgpack.packb([10])
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE log SET data = ?, crc = ? WHERE start = 10", (blob, zlib.crc32(blob)))
    raw.close()
    with pytest.raises(CorruptLog, match="start=10: does not hold the 2 entries"):
        reopen_and_load(path)


def test_a_corrupted_meta_row_is_refused(store, path):
    seeded(store)
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'decided_idx'", (b"\x09",))
    raw.close()
    with pytest.raises(CorruptLog, match="decided_idx"):
        reopen_and_load(path)


def test_a_gap_in_the_log_is_corruption(store, path):
    seeded(store)
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM log WHERE start = 3")
    raw.close()
    with pytest.raises(CorruptLog, match="start=10: expected start 3"):
        reopen_and_load(path)


def test_corrupt_log_stops_the_store(store, path):
    seeded(store)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE log SET crc = crc + 1 WHERE start = 3")
    raw.close()
    with pytest.raises(CorruptLog):
        store.load()
    with pytest.raises(StorageFailure):
        store.write([(SetDecidedIdx(5),)])


def test_disk_full_raises_storage_failure_refuses_later_calls_and_writes_nothing(store, path):
    before = seeded(store)
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    (limit,) = store._conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()
    assert limit == pages, "SQLite did not take the page limit"
    big = tuple(os.urandom(1000) for _ in range(200))
    with pytest.raises(StorageFailure, match="full"):
        store.write([(SetDecidedIdx(8),), (AppendOnPrefix(10, big), SetPromise(Ballot(7, 0, 3)))])
    with pytest.raises(StorageFailure):
        store.write([(SetDecidedIdx(9),)])  # tiny and would fit: refused all the same (never retry)
    with pytest.raises(StorageFailure):
        store.load()
    store.close()
    assert_same_state(reopen_and_load(path), before)


def test_wal_mode_and_synchronous_full_are_in_force(store, path):
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 = FULL
    with sqlite3.connect(path) as other:  # WAL is a property of the file, seen by any connection
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


def test_a_fresh_store_loads_the_empty_state(store):
    assert_same_state(store.load(), LogState())


def test_close_is_idempotent_and_a_closed_store_refuses_calls(store):
    store.close()
    store.close()
    with pytest.raises(StorageFailure, match="closed"):
        store.load()
    with pytest.raises(StorageFailure, match="closed"):
        store.write([(SetDecidedIdx(1),)])


def test_a_file_of_another_format_is_refused(path):
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StorageFailure, match="format 99"):
        SQLiteLogStore(path)


def test_torn_wal_tail_is_dropped_on_restart_and_the_prefix_survives(tmp_path):
    """Rule 5: a crash in the middle of writing the last transaction leaves a torn tail; it is dropped."""
    import shutil

    from omni.actors.log_store import SQLiteLogStore as Store
    from omni.paxos.storage import AppendOnPrefix as Append

    live = tmp_path / "live"
    live.mkdir()
    store = Store(live / "log.db")
    store.load()
    store.write([(Append(0, ("first",)),)])
    wal = live / "log.db-wal"
    size_after_first = wal.stat().st_size
    store.write([(Append(1, ("second" * 1000,)),)])
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(live / "log.db", crashed / "log.db")
    torn = wal.read_bytes()
    cut = size_after_first + (len(torn) - size_after_first) // 2  # half of the last transaction
    (crashed / "log.db-wal").write_bytes(torn[:cut])
    store.close()
    state = Store(crashed / "log.db").load()
    assert state.entries == ["first"]


def test_appends_and_compactions_inside_a_row_keep_exactly_the_entries_around_them(store, path):
    store.write([(AppendOnPrefix(0, tuple(range(10))),)])  # one row, 0-9
    store.write([(AppendOnPrefix(6, ("six", "seven")),)])  # a new leader's log replaces 6-9 inside that row
    store.write([(Compact(4, None),)])  # a snapshot at 4: the row's prefix goes
    assert reopen_and_load(path).entries == [4, 5, "six", "seven"]
    rows = sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT start, count FROM log ORDER BY start")
    assert rows.fetchall() == [(4, 2), (6, 2)], "only entries at or above the compacted index are kept on disk"


def test_a_long_append_is_stored_in_rows_of_bounded_size(store, path, monkeypatch):
    from omni.actors import log_store
    monkeypatch.setattr(log_store, "MAX_ROW_ENTRIES", 4)
    store.write([(AppendOnPrefix(0, tuple(range(10))),)])
    rows = sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT start, count FROM log ORDER BY start")
    assert rows.fetchall() == [(0, 4), (4, 4), (8, 2)]
    assert reopen_and_load(path).entries == list(range(10))


def format_1_file(path, rows):
    """A log as the previous layout wrote it: one row per entry (idx, data, crc), PRAGMA user_version = 1."""
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE log (idx INTEGER PRIMARY KEY, data BLOB, crc INTEGER)")
        raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB, crc INTEGER)")
        for key, value in (("compacted_idx", 2), ("decided_idx", 4)):
            blob = msgpack.packb(value)
            raw.execute("INSERT INTO meta VALUES (?, ?, ?)", (key, blob, zlib.crc32(blob)))
        for idx, blob, crc in rows:
            raw.execute("INSERT INTO log VALUES (?, ?, ?)", (idx, blob, crc))
        raw.execute("PRAGMA user_version = 1")
    raw.close()


def test_a_format_1_log_is_converted_when_opened_and_loads_the_same_entries(path):
    blobs = [msgpack.packb(value) for value in (["two"], {"w": 3}, 4, None)]
    format_1_file(path, [(2 + i, blob, zlib.crc32(blob)) for i, blob in enumerate(blobs)])
    state = reopen_and_load(path)
    assert (state.compacted_idx, state.decided_idx, state.entries) == (2, 4, [["two"], {"w": 3}, 4, None])
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (2,)
        assert raw.execute("SELECT start, count FROM log").fetchall() == [(2, 4)]
    raw.close()
    with SQLiteLogStore(path) as store:  # and it goes on as a format 2 log
        store.write([(AppendOnPrefix(6, ("six",)),)])
    assert reopen_and_load(path).entries[-1] == "six"


def test_a_corrupted_format_1_log_is_refused_and_left_as_it_was(path):
    good, bad = msgpack.packb(1), msgpack.packb(2)
    format_1_file(path, [(2, good, zlib.crc32(good)), (3, bad, zlib.crc32(bad) + 1)])
    with pytest.raises(CorruptLog, match="idx=3"):
        SQLiteLogStore(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (1,)
        assert raw.execute("SELECT count(*) FROM log").fetchone() == (2,)
    raw.close()


def test_a_row_joins_the_packed_appends_of_one_call(store, path, monkeypatch):
    # A follower's AcceptDecide left its entries' bytes in the codec's cache (here with 7 as uint32, as
    # another sender might encode it): the row reuses them beside freshly packed ones under one header.
    from omni.actors import log_store
    from omni.transport import codec
    monkeypatch.setattr(log_store, "MAX_ROW_ENTRIES", 5)
    received = (7, "x")
    codec._remember(received, b"\x92\xce\x00\x00\x00\x07\xa1x")
    store.write([(AppendOnPrefix(0, (1, 2)),), (AppendOnPrefix(2, received),), (AppendOnPrefix(4, (3, 4, 5)),),
                 (AppendOnPrefix(3, ("replaced", 6)),)])
    rows = sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT start, count FROM log ORDER BY start")
    assert rows.fetchall() == [(0, 5)]
    assert reopen_and_load(path).entries == [1, 2, 7, "replaced", 6]
    store.write([(AppendOnPrefix(5, tuple(range(12))),)])
    rows = sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT start, count FROM log ORDER BY start")
    assert rows.fetchall() == [(0, 5), (5, 5), (10, 5), (15, 2)]
    assert reopen_and_load(path).entries == [1, 2, 7, "replaced", 6, *range(12)]
