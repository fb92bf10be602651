"""Applier snapshots: the file format, the store of snapshot files, and pulling a snapshot from a peer.

Where the state lives. The state machine's state (and, for a machine without ``keeps_sessions``, the
Applier's exactly-once session table) is snapshotted by the Applier into files of its own; the protocol
core never holds it. The core's snapshot is a constant marker (`MarkerSnapshotter`): ``Compact(idx,
MARKER)`` in the log means "the state below idx is in some node's snapshot file". The core is told to
compact only to an index that a durable file on this node covers, so its ``Compaction`` / ``LogSync``
machinery works unchanged while the bytes it carries stay tiny.

The file. ``<data_dir>/snapshots/snapshot-<idx, 20 digits>.omni``:

    header  (32 bytes, big endian): b"OMNISNAP", version u16 (=1), flags u16 (=0), idx u64,
            payload length u64, CRC32 of the payload u32
    payload msgpack map {"sm": state machine name, "state": bytes from StateMachine.snapshot(),
            "sessions": the Applier's session table (`Sessions.dump()`) or nil with keeps_sessions}

``idx`` is the Applier's applied index when the file was taken: the state of log entries [0, idx). The
payload is one msgpack value, so a snapshot is limited to msgpack's 4 GiB for ``state``; it travels
between nodes in chunks of `CHUNK` bytes, well under the transport's 256 MiB frame.

Rules, and why each holds under a crash at any point:
1. A file is written to a temporary name, fsynced, renamed to its final name, and the directory fsynced;
   only then is the core told anything. A crash before the rename leaves a temporary file (deleted at the
   next open) and the previous file intact; after it, the new file is whole.
2. The core is asked to compact to the *previous* file's index, never further: the newest durable file
   always covers the log's compacted index (a restart never lacks state it cannot rebuild), and one
   interval of log stays behind the newest snapshot, so a follower briefly behind catches up from the log
   rather than by state transfer. Disk and memory stay bounded: at most about two intervals of log, and
   the two newest files (older ones are deleted once the new one is durable). A crash between the file and
   the compaction only leaves more log than needed.
3. Restart: the newest file is loaded into the state machine if the machine's own ``applied_index`` is
   below its ``idx`` (a machine that persists itself, SQL, usually is not), then only the log suffix above
   it is applied. A file whose checksum fails is corruption: the node stops (DESIGN.md rule 5).
4. A node whose log was compacted past what it applied (the leader synced it with a ``complete`` marker
   because it had fallen behind every peer's compaction point, or it restarted after that) gets a
   ``DecidedSnapshot(C)`` with C > applied. Its Applier stops applying, buffers what follows, and pulls the
   newest file with idx >= C from its peers, a chunk at a time over the node-level peer link (one request
   in flight, a timeout moves to the next peer; every request has a fresh number so a late reply is
   ignored). Some peer always has one: C came from a node that compacted only below its own durable file,
   and files only move forward. (Nodes snapshot at different indexes, so while that node is down the
   others may have nothing at or past C until their own next file: the pull keeps asking around.) The pulled bytes are checked (header, length, CRC, state machine name),
   written as this node's own file (rule 1), then restored; a crash anywhere in between repeats the pull
   or finds the file at restart. The snapshot may be newer than this node's decided index: every decided
   prefix is the same everywhere, so entries below it are then simply skipped.
"""
from __future__ import annotations

import itertools
import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import msgpack

from .messages import PeerReply, PeerRequest

MAGIC = b"OMNISNAP"
VERSION = 1
_HEADER = struct.Struct(">8sHHQQI")
CHUNK = 4 * 1024 * 1024  # bytes per transfer message: far under codec.MAX_FRAME, few round trips
MAX_STATE = 2**32 - 1  # bytes of state at most: msgpack's largest bin
KEEP = 2  # files kept: the newest and the previous one (a transfer of it may be under way)
#: the "op" of a snapshot request and the key of its reply on the node-level peer link; neither can come
#: from the client gateway (its forwarded reads are validated ops, its replies have "ok"/"result"/"error")
SNAPSHOT_OP = "_omni.snapshot"
MARKER = "omni.applier-snapshot/1"  # what the core keeps and ships in place of a snapshot


class SnapshotError(Exception):
    """A snapshot file or transfer that is not sound (bad header, length, checksum or state machine)."""


class MarkerSnapshotter:
    """The core's `Snapshotter`: the real state is in the Applier's files, so snapshots are a marker.

    ``deltas = False`` tells the core never to fold entries into a delta snapshot for a follower (a marker
    cannot carry them): such a follower gets raw entries, and a complete marker only when it is behind
    the compaction point (paxos/leader.py, `_log_sync_for_follower`).
    """

    deltas = False

    def create(self, entries: tuple) -> str:
        return MARKER

    def merge(self, base: Any, delta: Any) -> str:
        return MARKER


@dataclass(frozen=True)
class Snapshot:
    """One decoded snapshot file."""

    idx: int
    sm: str
    state: bytes
    sessions: Any


def payload_parts(sm: str, state: bytes, sessions: Any) -> tuple[bytes, bytes, bytes]:
    """The payload as three parts whose concatenation is the msgpack map of the file format, without copying
    ``state`` into it (a million-key state is over 100 MB: the copy alone took up to half a second)."""
    if not isinstance(state, (bytes, bytearray)):  # a plug-in's mistake: no snapshot, the node goes on
        raise SnapshotError(f"the state machine's snapshot is a {type(state).__name__}, not bytes")
    if len(state) > MAX_STATE:
        raise SnapshotError(f"a state of {len(state)} bytes exceeds the snapshot limit of {MAX_STATE} bytes")
    packer = msgpack.Packer(use_bin_type=True)
    head = packer.pack_map_header(3) + packer.pack("sm") + packer.pack(sm) + packer.pack("state") + \
        _bin_header(len(state))
    return head, state, packer.pack("sessions") + packer.pack(sessions)


def _bin_header(n: int) -> bytes:
    """msgpack's bin 8/16/32 header for ``n`` bytes (the Packer has no method for it)."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def header(idx: int, parts: tuple) -> bytes:
    """The file header for a payload given as consecutive parts."""
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return _HEADER.pack(MAGIC, VERSION, 0, idx, sum(len(part) for part in parts), crc)


def decode(data: bytes | bytearray | memoryview) -> Snapshot:
    """A whole file's bytes, checked; SnapshotError if anything is off."""
    if len(data) < _HEADER.size:
        raise SnapshotError(f"snapshot of {len(data)} bytes is shorter than its header")
    magic, version, _flags, idx, length, crc = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise SnapshotError(f"not an Omni snapshot of version {VERSION} (magic {magic!r}, version {version})")
    payload = memoryview(data)[_HEADER.size:]
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise SnapshotError(f"snapshot at {idx}: payload length or checksum mismatch")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        return Snapshot(idx, str(body["sm"]), bytes(body["state"]), body.get("sessions"))
    except Exception as err:  # a good CRC with an undecodable body is still not a snapshot we can use
        raise SnapshotError(f"snapshot at {idx}: undecodable payload ({err})") from err


class SnapshotStore:
    """The snapshot files of one node, in one directory (rules 1 and 2 of the module docstring)."""

    def __init__(self, directory: str | Path, keep: int = KEEP):
        self.dir = Path(directory)
        self.keep = keep
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.glob("*.tmp"):  # a write that a crash interrupted: never a valid file
            leftover.unlink()

    def path(self, idx: int) -> Path:
        return self.dir / f"snapshot-{idx:020d}.omni"

    def indexes(self) -> list[int]:
        """The indexes of the files present, ascending."""
        out = []
        for p in self.dir.glob("snapshot-*.omni"):
            digits = p.stem.partition("-")[2]
            if digits.isdigit():
                out.append(int(digits))
        return sorted(out)

    def newest(self) -> int:
        found = self.indexes()
        return found[-1] if found else 0

    def load(self, idx: int) -> Snapshot:
        snap = decode(self.path(idx).read_bytes())
        if snap.idx != idx:
            raise SnapshotError(f"{self.path(idx)} holds the snapshot at {snap.idx}")
        return snap

    def write(self, idx: int, payload: bytes | tuple) -> None:
        """Make the file for ``idx`` durable (temp file, fsync, rename, fsync directory); the payload may be
        given in parts (`payload_parts`)."""
        parts = payload if isinstance(payload, tuple) else (payload,)
        self._write_parts(idx, (header(idx, parts), *parts))

    def install(self, snap: Snapshot, data: bytes) -> None:
        """Make a whole file received from a peer (``data``, already decoded as ``snap``) durable as our own."""
        self._write_parts(snap.idx, (data,))

    def size(self, idx: int) -> Optional[int]:
        try:
            return self.path(idx).stat().st_size
        except FileNotFoundError:
            return None

    def chunk(self, idx: int, offset: int, length: int) -> Optional[bytes]:
        """Bytes of file ``idx`` from ``offset``; None if the file is gone (pruned meanwhile)."""
        try:
            with open(self.path(idx), "rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            return None

    def prune(self) -> None:
        """Delete all but the `keep` newest files (called once a newer file is durable)."""
        for idx in self.indexes()[:-self.keep]:
            self.path(idx).unlink(missing_ok=True)

    def _write_parts(self, idx: int, parts: tuple) -> None:
        final = self.path(idx)
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as fh:
            for part in parts:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself must survive a crash before the core is told anything
        finally:
            os.close(fd)


def serve(store: SnapshotStore, request: dict) -> dict:
    """A peer's chunk request answered from our files: the reply map for `PeerReply`."""
    try:
        need, want, offset = int(request["min"]), request.get("idx"), int(request["offset"])
        idx = store.newest() if want is None else int(want)
    except (KeyError, TypeError, ValueError):
        return {SNAPSHOT_OP: {"error": "malformed request"}}
    size = store.size(idx) if idx >= need and idx > 0 else None
    data = store.chunk(idx, offset, CHUNK) if size is not None and 0 <= offset <= size else None
    if data is None:
        return {SNAPSHOT_OP: {"error": "no snapshot covers it here", "newest": store.newest()}}
    return {SNAPSHOT_OP: {"idx": idx, "size": size, "offset": offset, "data": data}}


class SnapshotFetch:
    """One state transfer in progress: pull the newest snapshot with idx >= ``need`` from the peers.

    Stop-and-wait: one chunk request in flight. A request unanswered within ``timeout_ticks``, or a peer
    without a suitable file, moves on to the next peer (after ``pause_ticks``, so a cluster where no one
    has it yet is not flooded) and starts over from offset 0: two nodes' files for the same index need not
    be byte-identical (SQLite page layout).
    """

    _numbers = itertools.count(secrets.randbits(40))  # every request its own number, process-wide

    def __init__(self, need: int, origin: int, peers: list[int], timeout_ticks: int, pause_ticks: int):
        if not peers:
            raise SnapshotError(f"entries below {need} are compacted and this node has no peer to ask")
        self.need, self.origin, self.peers = need, origin, list(peers)
        self.timeout_ticks, self.pause_ticks = timeout_ticks, pause_ticks
        self.turn = 0
        self.req = 0
        self.idx: Optional[int] = None
        self.buf = bytearray()
        self.wait = 0  # ticks until the next action: a timeout while a request is out, else a pause

    @property
    def peer(self) -> int:
        return self.peers[self.turn % len(self.peers)]

    def request(self) -> tuple[int, PeerRequest]:
        """The next chunk request and whom to send it to."""
        self.req = next(self._numbers)
        self.wait = self.timeout_ticks
        body = {"op": SNAPSHOT_OP, "min": self.need, "idx": self.idx, "offset": len(self.buf)}
        return self.peer, PeerRequest(self.origin, self.req, body)

    def on_tick(self) -> bool:
        """True when a request should go out now (its predecessor timed out, or a pause ended)."""
        self.wait -= 1
        if self.wait > 0:
            return False
        if self.req:  # a request was out and got no answer in time
            self.next_peer(pause=False)
        return True

    def on_reply(self, reply: PeerReply) -> Optional[str]:
        """Take one reply: "done" (the file is complete in ``buf``), "more" (send the next request),
        "wait" (the peer had nothing: try the next after a pause) or None (stale, ignored)."""
        if not self.req or reply.req != self.req:
            return None
        self.req = 0
        body = reply.reply.get(SNAPSHOT_OP)
        if not isinstance(body, dict) or "error" in body or not self._fits(body):
            self.next_peer(pause=True)
            return "wait"
        self.idx = body["idx"]
        self.buf += body["data"]
        return "done" if len(self.buf) >= body["size"] else "more"

    def _fits(self, body: dict) -> bool:
        idx, size, offset, data = body.get("idx"), body.get("size"), body.get("offset"), body.get("data")
        return (isinstance(idx, int) and idx >= self.need and (self.idx is None or idx == self.idx)
                and isinstance(size, int) and offset == len(self.buf) and isinstance(data, bytes)
                and len(data) > 0 and len(self.buf) + len(data) <= size)

    def next_peer(self, pause: bool) -> None:
        self.turn += 1
        self.req, self.idx, self.buf = 0, None, bytearray()
        self.wait = self.pause_ticks if pause else 0
