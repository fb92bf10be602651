"""The Applier actor: applies the decided log to the state machine, in order, exactly once.

Log entries are msgpack maps made by a ClientGateway: a write ``{"w": command, "o": origin node, "r":
request number, "i": the origin's incarnation, "cl"?: client, "sq"?: seq}``; logs written before reads
became ReadIndex rounds may also hold read entries ``{"q": request, "o", "i", "r"}``, answered at their
place in the log. Every node applies every entry; the node named by ``"o"`` answers its
client. Retries are deduplicated by `Sessions`, which is part of the replicated state: built only from
the log in log order, so every node holds the same table and a retry sent to another node after a
failover is recognised too. A state machine that persists itself is not replayed below its
``applied_index`` after a restart, so an in-memory table would come back empty and a retry would be
applied twice; such a machine declares ``keeps_sessions`` and keeps the table itself, written in the same
transaction as each command (statemachines/base.py), with the same window as `Sessions`. Queries are answered
from the current state: `leader` reads and linearizable reads the leader's core confirmed (`Queries`, from
SequencePaxos) once at least ``min_applied`` entries are applied; `local` reads (`LocalQueries`) at once,
straight to the client (or TIMEOUT, if this thread was busy past their deadline). A waiting query whose
index is never applied (say, entries a deposed leader had adopted and its successor did not keep) is
dropped once no request can still be waiting for it (MAX_TIMEOUT): its client got TIMEOUT long before.

Snapshots (actors/snapshots.py has the file format and the rules that make them crash-safe): the Applier
writes the state machine's snapshot, plus `Sessions` for a machine without ``keeps_sessions``, to a durable
file, then lets SequencePaxos compact the log behind it. It does so once ``snapshot_every`` entries are
applied since the last file AND the requests applied since then (their sizes plus ENTRY_OVERHEAD each) add
up to SNAPSHOT_GROWTH of that file's size: a snapshot costs time in proportion to the state, so a fixed
entry count made a large state snapshot all the time (a million keys: a 124 MB file every 10,000 puts;
pipelined puts fell from about 5,500/s to 1,918/s with a p99 of 3.7 s). This way each request pays a
bounded share of snapshotting whatever the state's size, and the log kept in between stays a bounded share
of it. The byte threshold is stretched by up to a quarter per node (from its id) so that the nodes of a
cluster do not all pause at the same index (a small state, where the entry count decides, still does).
While a file is being written, a snapshot that falls due waits for it (one file at a time, in order). The file itself is written on a thread of its own (`_take_snapshot`).
At start it restores the newest file and applies only the log suffix above it. When the log hands it a
`DecidedSnapshot` beyond what it applied (its entries are compacted everywhere it could get them), it
holds back later items, pulls a snapshot file from a peer, installs it, and goes on.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque

import msgpack

from omni.paxos import DecidedEntries, DecidedSnapshot, StopSign
from omni.statemachines import StateMachine, StateMachineError
from omni.statemachines.base import SESSION_CLIENTS, SESSION_SEQS, session_too_old

from .messages import (
    MAX_TIMEOUT, Apply, CompactLog, LocalQueries, PeerReply, PeerRequest, Queries, Query, Replies, Reply, Tick,
)
from .snapshots import Snapshot, SnapshotError, SnapshotFetch, SnapshotStore, decode, payload_parts, serve
from .supervision import SupervisedActor, name_this_thread

log = logging.getLogger("omni.applier")

INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)
SNAPSHOT_GROWTH = 0.25  # request bytes applied since the last snapshot, as a share of its size, before the next
# An entry's weight: its request's size ("n", recorded by the gateway; ENTRY_BYTES where absent: older logs,
# no-ops) plus what holding it costs besides (the core keeps decided entries in memory until compaction,
# as Python objects several times the request's size: counting only the request let the log of a
# million-key state grow to 400,000 entries, 450 MiB more per node).
ENTRY_BYTES = 64
ENTRY_OVERHEAD = 256

SEQS_PER_CLIENT = SESSION_SEQS
MAX_CLIENTS = SESSION_CLIENTS
FETCH_TIMEOUT = 5.0  # seconds a snapshot chunk request may go unanswered before the next peer is asked
FETCH_PAUSE = 0.5  # seconds to wait after a peer had no suitable snapshot, before asking the next one


def _global(item, base: int):
    """A decided item with its configuration-local index turned global (actors/membership.py)."""
    if not base:
        return item
    if isinstance(item, DecidedSnapshot):
        return DecidedSnapshot(item.idx + base, item.snapshot)
    return DecidedEntries(item.start + base, item.entries)


class Sessions:
    """Per client, the results of its last SEQS_PER_CLIENT writes; deterministic, so replicated alike."""

    def __init__(self, seqs_per_client: int = SEQS_PER_CLIENT, max_clients: int = MAX_CLIENTS) -> None:
        self.seqs_per_client, self.max_clients = seqs_per_client, max_clients  # smaller only in tests
        self.clients: OrderedDict[str, OrderedDict] = OrderedDict()
        self.floor: dict[str, int] = {}

    def lookup(self, client: str, seq: int):
        """The stored result of (client, seq); raises StateMachineError for a seq too old to know."""
        seqs = self.clients.get(client)
        if seqs is not None:
            known = seqs.get(seq)  # an outcome is a tuple, never None
            if known is not None:
                return known
        if seq < self.floor.get(client, 0):
            raise session_too_old(client, seq)
        return None

    def record(self, client: str, seq: int, result: tuple) -> None:
        # Runs for every write on every replica: no table built only to be thrown away (setdefault did).
        clients = self.clients
        seqs = clients.get(client)
        if seqs is None:
            seqs = clients[client] = OrderedDict()  # a new key goes last: the most recent already
        else:
            clients.move_to_end(client)
        seqs[seq] = result
        if len(seqs) > self.seqs_per_client:
            floor = self.floor.get(client, 0)
            while len(seqs) > self.seqs_per_client:
                old, _ = seqs.popitem(last=False)
                if old >= floor:
                    floor = old + 1
            self.floor[client] = floor
        while len(clients) > self.max_clients:
            gone, _ = clients.popitem(last=False)
            self.floor.pop(gone, None)

    def dump(self) -> list:
        """The table as msgpack-able lists, in its recency orders: ``[[client, floor, [[seq, *outcome]...]]...]``."""
        return [[client, self.floor.get(client, 0), [[seq, *outcome] for seq, outcome in seqs.items()]]
                for client, seqs in self.clients.items()]

    @classmethod
    def load(cls, data) -> "Sessions":
        """The table `dump` gave (None: empty); the same lookups and evictions follow as on the original."""
        table = cls()
        for client, floor, seqs in data or ():
            table.clients[client] = OrderedDict((seq, tuple(outcome)) for seq, *outcome in seqs)
            if floor:
                table.floor[client] = floor
        return table


class ApplierActor(SupervisedActor):
    def __init__(self, node, state_machine: StateMachine, snapshots: SnapshotStore | None = None,
                 snapshot_every: int = 0, tick_seconds: float = 0.01, replay_until: int = 0):
        super().__init__(node)
        self.sm = state_machine
        self.sm_name = state_machine.name or type(state_machine).__name__
        self.applied = state_machine.applied_index
        self.sessions = Sessions()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.waiting: list[Query] = []
        self.waiting_since: dict[int, float] = {}  # request number -> when it began to wait (monotonic)
        self._replies: list[Reply] = []  # answers gathered while handling one message, told together
        self.snapshots, self.snapshot_every = snapshots, snapshot_every
        self.last_snapshot = 0  # index of the newest snapshot file (durable, or being written by _writer)
        self._writer: threading.Thread | None = None
        self.applied_bytes = 0  # request bytes applied since that file
        self.snapshot_due_bytes = 0  # ... which the next snapshot waits for (see the module docstring)
        self._stretch = 1 + (node.pid * 2654435761 % 1000) / 4000  # 1.0 to 1.25, fixed per node id
        self.fetch: SnapshotFetch | None = None  # a state transfer under way
        self.held: deque = deque()  # decided items not applied yet (all of them wait during a transfer)
        self.fetch_ticks = (max(1, round(FETCH_TIMEOUT / tick_seconds)), max(1, round(FETCH_PAUSE / tick_seconds)))
        if snapshots is not None:
            self._restore_at_start()
        self._replay_from, self._replay_until = self.applied, replay_until or None  # None: nothing to report
        self._report_replay()

    def on_receive(self, message):
        self._receive(message)
        replies, self._replies = self._replies, []
        if len(replies) == 1:
            self.node.gateway.tell(replies[0])
        elif replies:  # one tell for a whole decided batch: under load a tell per reply costs more
            self.node.gateway.tell(Replies(tuple(replies)))

    def _receive(self, message) -> None:
        if isinstance(message, Apply):
            self.held.extend(_global(item, message.base) for item in message.items)
            self._apply_held()
        elif isinstance(message, LocalQueries):
            self._answer_local(message.queries)
        elif isinstance(message, Query):
            self._query(message)
        elif isinstance(message, Queries):
            for query in message.queries:
                self._query(query)
        elif isinstance(message, Tick):
            if self.fetch is not None and self.fetch.on_tick():
                self._request_chunk()
            if self.waiting:
                self._drop_abandoned(time.monotonic())
        elif isinstance(message, PeerRequest):
            reply = serve(self.snapshots, message.request) if self.snapshots is not None else {}
            self.node.outbox.send_node(message.origin, PeerReply(message.req, reply))
        elif isinstance(message, PeerReply):
            self._on_chunk(message)

    def _apply_held(self) -> None:
        # A run of several entries in one batch: one fsync for the run, not one per entry (a machine with
        # files of its own). A single entry commits durably by itself, which costs one commit less.
        batch = sum(len(item.entries) for item in self.held if isinstance(item, DecidedEntries)) > 1
        if batch:
            self.sm.begin_batch()
        while self.held and self.fetch is None:
            self._apply_item(self.held.popleft())
        if batch:
            self.sm.end_batch()  # durable before anyone is answered (the replies go out after on_receive)
        self._answer_waiting()
        self._report_replay()

    def _apply_item(self, item) -> None:
        if isinstance(item, DecidedSnapshot):
            if item.idx > self.applied:
                self._start_fetch(item.idx)
            return
        assert isinstance(item, DecidedEntries)
        if item.start > self.applied:
            # The configuration's log starts past our state: we joined it (a new member) or missed the end
            # of the previous one. The state up to its start comes from a peer's snapshot file.
            self.held.appendleft(item)
            self._start_fetch(item.start)
            return
        end = item.start + len(item.entries)
        if item.entries and isinstance(item.entries[-1], StopSign) and end <= self.applied:
            # Our state is already past the StopSign (a restart after the snapshot taken at it, or a pulled
            # snapshot): it is not applied again, but the next configuration must still start. A kill -9
            # between that snapshot and membership.json would otherwise leave this node in the sealed
            # configuration for ever. ConfigManager.adopt ignores a configuration already running.
            self.node.configuration_decided(item.entries[-1], end)
            return
        every = self.snapshot_every
        for offset in range(self.applied - item.start, len(item.entries)):
            idx = item.start + offset
            entry = item.entries[offset]
            self._apply_entry(idx, entry)
            self.applied = idx + 1
            if isinstance(entry, StopSign):
                self._configuration_ends(entry)
            elif every:
                size = entry.get("n") if isinstance(entry, dict) else None
                self.applied_bytes += (size if isinstance(size, int) and size > 0 else ENTRY_BYTES) + ENTRY_OVERHEAD
                if self.applied - self.last_snapshot >= every and self.applied_bytes >= self.snapshot_due_bytes:
                    self._take_snapshot()

    def _configuration_ends(self, ss: StopSign) -> None:
        """The StopSign is applied: snapshot the state exactly here (new members and laggards fetch it) and
        let the node start the next configuration, whose log begins at global index ``self.applied``."""
        self._take_snapshot(wait=True)
        self.node.configuration_decided(ss, self.applied)

    # ---- snapshots ------------------------------------------------------------------------------------

    def _restore_at_start(self) -> None:
        """Load the newest snapshot file unless the state machine's own files are already past it."""
        idx = self.last_snapshot = self.snapshots.newest()
        if idx == 0:
            return
        self._snapshot_taken(self.snapshots.size(idx) or 0)
        snap = self._checked(self.snapshots.load(idx))
        if self.sm.applied_index < idx:
            self._install(snap)
            log.info("restored snapshot at %d", idx)
        else:
            log.info("snapshot at %d not restored: the state machine's own files are at %d", idx,
                     self.sm.applied_index)
        self.applied = max(self.applied, idx)

    def _take_snapshot(self, wait: bool = False) -> None:
        """Capture the state here (it must match ``applied``), then encode it and write the file on a thread
        of its own unless ``wait``: encoding, writing and fsyncing a million keys (124 MB) kept this thread,
        and every reply of this node, waiting for seconds. One file at a time, in index order."""
        if self.snapshots is None:
            return
        self._await_writer()
        sessions = None if self.sm.keeps_sessions else self.sessions.dump()
        self.last_snapshot = idx = self.applied  # also when it fails below: try again an interval later
        self.applied_bytes = 0
        started = time.monotonic()
        encode = self.sm.snapshot_later()
        paused = time.monotonic() - started
        if wait:
            return self._write_snapshot(idx, encode, sessions, paused)
        self._writer = threading.Thread(target=self._write_snapshot_or_stop, args=(idx, encode, sessions, paused),
                                        name=f"omni-snapshot-{self.node.pid}", daemon=True)
        self._writer.start()

    def _write_snapshot(self, idx: int, encode, sessions, paused: float) -> None:
        """Encode, make the file durable, and only then let the core compact behind the previous one
        (snapshots.py rules 1 and 2)."""
        started = time.monotonic()
        try:
            parts = payload_parts(self.sm_name, encode(), sessions)
        except SnapshotError as exc:  # the node still works; only its log is not compacted
            log.error("no snapshot at %d: %s", idx, exc)
            return
        encoded = time.monotonic()
        self.snapshots.write(idx, parts)
        size = sum(len(part) for part in parts)
        self._set_due(size)  # this thread's only write to the Applier's state (it has moved on meanwhile)
        log.info("snapshot at %d written (%d bytes; the Applier paused %.2f s, %.2f s to encode, %.2f s to write)",
                 idx, size, paused, encoded - started, time.monotonic() - encoded)
        self._compact_behind()

    def _write_snapshot_or_stop(self, idx: int, encode, sessions, paused: float) -> None:
        name_this_thread("SnapshotWriter")
        try:
            self._write_snapshot(idx, encode, sessions, paused)
        except Exception as exc:  # a failed write or fsync is never retried: the node stops (DESIGN rule 5)
            if self.node.stopping:  # e.g. SequencePaxos already stopped when the file was done: nothing lost
                log.info("snapshot at %d not completed while the node stops: %s", idx, exc)
                return
            log.critical("snapshot at %d could not be written: %s", idx, exc)
            self.node.fatal(f"snapshot at {idx} could not be written: {exc}")

    def _await_writer(self, timeout: float | None = None) -> None:
        writer = self._writer
        if writer is not None:
            writer.join(timeout)
            self._writer = None

    def _snapshot_taken(self, size: int) -> None:
        self.applied_bytes = 0
        self._set_due(size)

    def _set_due(self, size: int) -> None:
        """The weight of entries the next snapshot waits for, after a file of ``size`` bytes."""
        self.snapshot_due_bytes = int(size * SNAPSHOT_GROWTH * self._stretch)

    def _compact_behind(self) -> None:
        """A new file is durable: the log may go up to the previous file (rule 2 in snapshots.py)."""
        found = self.snapshots.indexes()
        if len(found) >= 2:
            self.node.sequence_paxos.tell(CompactLog(found[-2]))
        self.snapshots.prune()

    def _install(self, snap: Snapshot) -> None:
        self.sm.restore(snap.state)
        if not self.sm.keeps_sessions:
            self.sessions = Sessions.load(snap.sessions)

    def _checked(self, snap: Snapshot) -> Snapshot:
        if snap.sm != self.sm_name:  # a misconfigured cluster: applying anything would be wrong
            raise SnapshotError(f"snapshot at {snap.idx} is of state machine {snap.sm!r}, this node runs "
                                f"{self.sm_name!r}")
        return snap

    def _start_fetch(self, need: int) -> None:
        if self.snapshots is None:
            raise RuntimeError(f"entries below {need} were compacted before this node applied them "
                               f"(applied {self.applied}) and it keeps no snapshots")
        node = self.node
        peers = list(dict.fromkeys(node.snapshot_sources()))
        self.fetch = SnapshotFetch(need, node.pid, peers, *self.fetch_ticks)
        log.info("entries below %d are compacted and only %d are applied here: fetching a snapshot from %s",
                 need, self.applied, peers)
        self._request_chunk()

    def _request_chunk(self) -> None:
        peer, request = self.fetch.request()
        self.node.outbox.send_node(peer, request)

    def _on_chunk(self, reply: PeerReply) -> None:
        fetch = self.fetch
        outcome = fetch.on_reply(reply) if fetch is not None else None
        if outcome == "more":
            self._request_chunk()
        elif outcome == "done":
            data, peer = bytes(fetch.buf), fetch.peer
            try:
                snap = decode(data)
                if snap.idx < fetch.need:
                    raise SnapshotError(f"its header says {snap.idx}, below the {fetch.need} needed")
            except SnapshotError as exc:
                log.warning("snapshot from node %d refused (%s); asking the next peer", peer, exc)
                fetch.next_peer(pause=True)
                return
            self._await_writer()  # an older file of ours still being written goes first
            self.snapshots.install(self._checked(snap), data)  # durable before it is restored (rule 4)
            self.fetch = None
            self._install(snap)
            self.applied = max(self.applied, snap.idx)
            self.last_snapshot = max(self.last_snapshot, snap.idx)
            self._snapshot_taken(len(data))
            log.info("installed snapshot at %d from node %d", snap.idx, peer)
            self._compact_behind()
            self._apply_held()

    def _report_replay(self) -> None:
        """Say once how much of the log a restart applied (a restored snapshot keeps it short)."""
        if self._replay_until is not None and self.applied >= self._replay_until:
            log.info("replayed %d entries after restart (applied %d to %d)", self.applied - self._replay_from,
                     self._replay_from, self.applied)
            self._replay_until = None

    def _apply_entry(self, idx: int, entry) -> None:
        if isinstance(entry, StopSign):
            log.info("configuration %s ends at index %d; next: %s", self.node.config_id, idx, entry)
            return
        if not isinstance(entry, dict):
            log.error("skipping undecodable entry %d: %r", idx, entry)
            return
        if "q" in entry:
            if not self._mine(entry):
                return  # a read changes nothing: only the node that asked runs it (not peers, not replay)
            outcome = self._run(self.sm.query, entry["q"])
        elif "w" in entry:
            outcome = self._apply_write(idx, entry)
        else:
            log.error("skipping entry %d without a command: %r", idx, entry)
            return
        if self._mine(entry):
            self._replies.append(Reply(entry["r"], *outcome))

    def _mine(self, entry: dict) -> bool:
        """Proposed by this very process: entries replayed from an earlier life of this node answer no one."""
        node = self.node
        return entry.get("o") == node.pid and entry.get("i") == node.incarnation and isinstance(entry.get("r"), int)

    def _apply_write(self, idx: int, entry: dict) -> tuple:
        client, seq = entry.get("cl"), entry.get("sq")
        if not (isinstance(client, str) and isinstance(seq, int)):
            return self._run(self.sm.apply, idx, entry["w"])
        if self.sm.keeps_sessions:  # looked up, applied and recorded in one transaction of the machine
            return self._run(self.sm.apply, idx, entry["w"], session=(client, seq))
        try:
            known = self.sessions.lookup(client, seq)
        except StateMachineError as exc:
            return (False, None, exc.code, exc.message)
        if known is not None:
            return known
        outcome = self._run(self.sm.apply, idx, entry["w"])
        self.sessions.record(client, seq, outcome)
        return outcome

    @staticmethod
    def _run(call, *args, **kwargs) -> tuple:
        """Run one command or query; a failure the input causes becomes an error reply, never a crash.

        A decided entry is applied by every replica, and again after each restart: if bad input could kill
        the Applier, one request would take down the whole cluster for good. Input errors are deterministic
        (same input, same state, same error everywhere), so answering them keeps replicas identical.
        Anything else (a disk failure, say) still stops the node.
        """
        try:
            return (True, call(*args, **kwargs), "", "")
        except StateMachineError as exc:
            return (False, None, exc.code, exc.message)
        except INPUT_ERRORS as exc:
            return (False, None, "BAD_REQUEST", f"cannot apply this request: {type(exc).__name__}: {exc}"[:500])

    def _query(self, query: Query) -> None:
        if query.min_applied <= self.applied:
            self._answer(query)
        else:
            self.waiting.append(query)
            self.waiting_since[query.req] = time.monotonic()

    def _answer(self, query: Query) -> None:
        self._replies.append(Reply(query.req, *self._run(self.sm.query, query.request)))

    def _answer_waiting(self) -> None:
        if self.waiting:
            ready = [q for q in self.waiting if q.min_applied <= self.applied]
            self.waiting = [q for q in self.waiting if q.min_applied > self.applied]
            for query in ready:
                self.waiting_since.pop(query.req, None)
                self._answer(query)

    def _drop_abandoned(self, now: float) -> None:
        """Forget queries older than any request's timeout: the gateway has answered them TIMEOUT already."""
        horizon = now - MAX_TIMEOUT - 1.0
        since = self.waiting_since
        if since.get(self.waiting[0].req, now) < horizon:  # the list is in arrival order: oldest first
            self.waiting = [q for q in self.waiting if since.get(q.req, now) >= horizon]
            for req in [r for r, t in since.items() if t < horizon]:
                del since[req]

    def _answer_local(self, queries: tuple) -> None:
        """Answer `local` reads on their clients' routes, in one hand-over to the transport."""
        now, replies = time.monotonic(), []
        for route, rid, request, deadline in queries:
            if now > deadline:  # this thread was busy (a snapshot, a long batch) past the client's timeout
                outcome = (False, None, "TIMEOUT", "the local read waited past its timeout; retry")
            else:
                outcome = self._run(self.sm.query, request)
            replies.append((route, self._pack(Reply(0, *outcome).to_client(rid))))
        self.node.outbox.send_clients(replies)
        self.node.local_reads_answered += len(queries)  # this thread alone writes it (the gateway reads it)

    def release(self) -> None:
        # Wait a while for a file being written (a stop that gives up earlier leaves a temporary file, which
        # the next start deletes: the previous file is still whole).
        self._await_writer(timeout=30.0)
        super().release()
        self.sm.close()
