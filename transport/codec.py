"""Wire codec for node-to-node messages: `Envelope` <-> bytes, with msgpack only (never pickle).

The transport calls `encode` on every Envelope the protocol core (`omni.paxos`) emits and `decode` on every
frame a peer sends, then routes the result by `is_ble` to the BLE or the Sequence Paxos actor. A frame is one
flat msgpack array ``[VERSION, tag, src, dst, config_id, field...]`` with a small integer tag per message
type; nested values are arrays too: Ballot ``[n, priority, pid]``, SequenceNumber ``[session, counter]``,
StopSign ``[config_id, [node...], metadata]``, SnapshotSync ``[kind, data, from_idx]`` (kind a small int),
LogSync ``[sync_idx, [entry...], snapshot|nil, stopsign|nil]``, AcceptSync.base ``[ballot, idx]``. The read
confirmation messages are ReadProbe (tag 15) and ReadAck (tag 16), both ``[..., ballot, round]``.

Rules. Nonsense from the network is refused with `CodecError` and nothing else (the transport counts such
frames and drops them): frames above ``max_frame`` are refused before unpacking, the unpacker's length limits
come from the frame size (a tiny frame cannot claim a huge allocation), and every typed field is checked, so a
decoded Envelope always has the types the core expects: ints are ``int`` (never ``bool``) and non-negative,
node and configuration ids are positive, StopSign members are distinct, ``entries`` / ``suffix`` are tuples,
``base`` is ``(Ballot, int)`` and ``fid`` is ``(int, int)``. Entries, snapshot data and StopSign metadata are
opaque msgpack values and are not inspected. They are unpacked with ``use_list=False``: every array comes back
as a tuple (an entry proposed as ``[1, 2]`` is received as ``(1, 2)``), maps as dicts (non-str keys allowed),
extension types as ``msgpack.ExtType`` / ``msgpack.Timestamp``. `encode` trusts the local core's field types
(no re-validation on the hot path) but raises CodecError for an unknown message type or kind, a value msgpack
cannot pack (e.g. an int beyond 64 bits) or a frame above ``max_frame``. An AcceptDecide's entries are
packed by `pack_entries`, which remembers the bytes of each tuple: the core hands every follower's
AcceptDecide and its own log append one shared tuple, and `decode` remembers the bytes a follower received,
so each node packs a batch at most once (the log store builds its rows from the same bytes).
"""
from __future__ import annotations

from collections import deque

from msgpack import packb as _packb, unpackb as _unpackb

from omni.paxos.messages import (
    BLE_MESSAGES, AcceptDecide, Accepted, AcceptStopSign, AcceptSync, Ballot, Compaction, Decide, Envelope,
    ForwardStopSign, HeartbeatReply, HeartbeatRequest, LogSync, NotAccepted, Prepare, PrepareReq, Promise,
    ProposalForward, ReadAck, ReadProbe, SequenceNumber, SnapshotSync, StopSign,
)

__all__ = ["MAX_FRAME", "VERSION", "CodecError", "array_body", "array_header", "decode", "encode", "is_ble",
           "pack_entries"]

VERSION = 1
MAX_FRAME = 256 * 1024 * 1024
_HEADER = 5  # version, tag, src, dst, config_id

_SNAP_KINDS = ("complete", "delta", "trimmed")
_SNAP_TAGS = {k: i for i, k in enumerate(_SNAP_KINDS)}
_COMPACTION_KINDS = ("trim", "snapshot")
_COMPACTION_TAGS = {k: i for i, k in enumerate(_COMPACTION_KINDS)}


class CodecError(ValueError):
    """A frame that is not a valid node-to-node message, or an Envelope that cannot be encoded."""


def is_ble(env: Envelope) -> bool:
    """True for Ballot Leader Election messages, False for Sequence Paxos ones."""
    return isinstance(env.msg, BLE_MESSAGES)


# ---- encoding: per-type field tuples ------------------------------------------------------------------


# ---- entries packed once -----------------------------------------------------------------------------
#
# One batch of entries is encoded for each follower's AcceptDecide and for the log row: the core hands all
# of them one shared tuple (SequencePaxos.take_ready), and a follower's log write gets the very tuple its
# AcceptDecide decoded to, whose bytes `decode` kept. So the encoding is remembered per tuple *object*
# (entries are immutable values; the cache holds a reference, so an id is never reused while cached).
# Several threads use it (SequencePaxos, Storage, transport): deque appends are atomic and a lookup works
# on a snapshot of it.

_PACKED: deque = deque(maxlen=16)  # (entries tuple, its msgpack array)
_PACKED_MAX = 2 * 1024 * 1024  # a larger batch (a follower catching up) is packed each time, not pinned


def pack_entries(entries) -> bytes:
    """A msgpack array of ``entries`` (a tuple or a list): ``packb``'s bytes, or, for a tuple that `decode`
    made, the bytes it was decoded from (the same values; a sender may encode them differently)."""
    if type(entries) is tuple:
        for obj, data in tuple(_PACKED):
            if obj is entries:
                return data
    data = _packb(entries, use_bin_type=True)
    _remember(entries, data)
    return data


def _remember(entries, data: bytes) -> None:
    if type(entries) is tuple and len(data) <= _PACKED_MAX:
        _PACKED.append((entries, data))


def array_body(data: bytes) -> memoryview:
    """The element encodings of one msgpack array: ``data`` without its array header."""
    first = data[0]
    skip = 1 if 0x90 <= first <= 0x9f else 3 if first == 0xdc else 5 if first == 0xdd else None
    if skip is None:
        raise ValueError(f"not a msgpack array (first byte {first:#x})")
    return memoryview(data)[skip:]


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _b(b: Ballot) -> tuple:
    return (b.n, b.priority, b.pid)


def _s(s: SequenceNumber) -> tuple:
    return (s.session, s.counter)


def _ss(ss: StopSign) -> tuple:
    return (ss.config_id, tuple(ss.nodes), ss.metadata)


def _snap(s: SnapshotSync) -> tuple:
    return (_SNAP_TAGS[s.kind], s.data, s.from_idx)


def _sync(ls: LogSync) -> tuple:
    return (ls.sync_idx, ls.suffix,
            None if ls.snapshot is None else _snap(ls.snapshot),
            None if ls.stopsign is None else _ss(ls.stopsign))


_ENCODERS = {  # type -> (tag, fields of the message in wire order)
    HeartbeatRequest: (1, lambda m: (m.round,)),
    HeartbeatReply: (2, lambda m: (m.round, _b(m.ballot), _b(m.leader), m.happy)),
    PrepareReq: (3, lambda m: (_b(m.n),)),
    Prepare: (4, lambda m: (_b(m.n), m.decided_idx, _b(m.n_accepted), m.accepted_idx)),
    Promise: (5, lambda m: (_b(m.n), _b(m.n_accepted), m.decided_idx, m.accepted_idx,
                            None if m.log_sync is None else _sync(m.log_sync))),
    AcceptSync: (6, lambda m: (_b(m.n), _s(m.seq), m.decided_idx, _sync(m.log_sync),
                               (_b(m.base[0]), m.base[1]))),
    AcceptDecide: (7, lambda m: (_b(m.n), _s(m.seq), m.decided_idx, m.entries)),
    Accepted: (8, lambda m: (_b(m.n), m.accepted_idx)),
    NotAccepted: (9, lambda m: (_b(m.n),)),
    Decide: (10, lambda m: (_b(m.n), _s(m.seq), m.decided_idx)),
    ProposalForward: (11, lambda m: (m.entries, tuple(m.fid))),
    Compaction: (12, lambda m: (_COMPACTION_TAGS[m.kind], m.idx)),
    AcceptStopSign: (13, lambda m: (_b(m.n), _s(m.seq), _ss(m.ss))),
    ForwardStopSign: (14, lambda m: (_ss(m.ss),)),
    ReadProbe: (15, lambda m: (_b(m.n), m.round)),
    ReadAck: (16, lambda m: (_b(m.n), m.round)),
}


def encode(env: Envelope, max_frame: int = MAX_FRAME) -> bytes:
    """The frame for ``env``; CodecError for an unknown message, an unpackable value or an oversized frame."""
    spec = _ENCODERS.get(type(env.msg))
    if spec is None:
        raise CodecError(f"no wire format for {type(env.msg).__name__}")
    tag, fields = spec
    try:
        frame = (VERSION, tag, env.src, env.dst, env.config_id) + fields(env.msg)
        if tag == _ACCEPT_DECIDE:  # its entries, the last field, come from pack_entries (once per batch)
            data = array_header(len(frame)) + _packed_head(frame) + pack_entries(frame[-1])
        else:
            data = _packb(frame, use_bin_type=True)
    except (TypeError, ValueError, OverflowError, KeyError, AttributeError, IndexError) as e:
        raise CodecError(f"cannot encode {type(env.msg).__name__}: {type(e).__name__}: {e}") from e
    if len(data) > max_frame:
        raise CodecError(f"{type(env.msg).__name__} frame of {len(data)} bytes exceeds {max_frame}")
    return data


# ---- decoding: checks, then per-tag constructors ------------------------------------------------------


def _nat(v) -> int:
    if type(v) is not int or v < 0:
        raise CodecError(f"expected a non-negative int, got {type(v).__name__}")
    return v


def _id(v) -> int:
    if type(v) is not int or v <= 0:
        raise CodecError(f"expected a positive int id, got {type(v).__name__}")
    return v


def _arr(v, n: int, what: str) -> tuple:
    if type(v) is not tuple or len(v) != n:
        raise CodecError(f"{what} must be an array of {n}")
    return v


def _entries(v) -> tuple:
    if type(v) is not tuple:
        raise CodecError(f"entries must be an array, got {type(v).__name__}")
    return v


_BALLOTS: dict = {}  # (n, priority, pid) -> Ballot: the same few ballots recur in nearly every message


def _ballot(v) -> Ballot:
    n, priority, pid = _arr(v, 3, "Ballot")
    if type(n) is not int or type(priority) is not int or type(pid) is not int or n < 0 or priority < 0 or pid < 0:
        raise CodecError("a Ballot is three non-negative ints")
    ballot = _BALLOTS.get(v)  # looked up only once the types are exact: (True, 0, 1) == (1, 0, 1)
    if ballot is None:
        if len(_BALLOTS) >= 256:
            _BALLOTS.clear()
        ballot = _BALLOTS[v] = Ballot(n, priority, pid)
    return ballot


def _seq(v) -> SequenceNumber:
    session, counter = _arr(v, 2, "SequenceNumber")
    return SequenceNumber(_nat(session), _nat(counter))


def _stopsign(v) -> StopSign:
    config_id, nodes, metadata = _arr(v, 3, "StopSign")
    if type(nodes) is not tuple or not nodes:
        raise CodecError("StopSign nodes must be a non-empty array")
    for pid in nodes:
        _id(pid)
    if len(set(nodes)) != len(nodes):
        raise CodecError("StopSign nodes must be distinct")
    return StopSign(_id(config_id), nodes, metadata)


def _snapshot(v) -> SnapshotSync:
    kind, data, from_idx = _arr(v, 3, "SnapshotSync")
    if type(kind) is not int or not 0 <= kind < len(_SNAP_KINDS):
        raise CodecError("unknown SnapshotSync kind")
    return SnapshotSync(_SNAP_KINDS[kind], data, _nat(from_idx))


def _log_sync(v) -> LogSync:
    sync_idx, suffix, snapshot, stopsign = _arr(v, 4, "LogSync")
    return LogSync(_nat(sync_idx), _entries(suffix),
                   None if snapshot is None else _snapshot(snapshot),
                   None if stopsign is None else _stopsign(stopsign))


def _base(v) -> tuple:
    ballot, idx = _arr(v, 2, "AcceptSync base")
    return (_ballot(ballot), _nat(idx))


def _fid(v) -> tuple:
    incarnation, counter = _arr(v, 2, "ProposalForward fid")
    return (_nat(incarnation), _nat(counter))


def _happy(v) -> bool:
    if type(v) is not bool:
        raise CodecError("happy must be a bool")
    return v


def _compaction(f) -> Compaction:
    kind = f[5]
    if type(kind) is not int or not 0 <= kind < len(_COMPACTION_KINDS):
        raise CodecError("unknown Compaction kind")
    return Compaction(_COMPACTION_KINDS[kind], _nat(f[6]))


_DECODERS = {  # tag -> (number of fields, constructor from the whole frame)
    1: (1, lambda f: HeartbeatRequest(_nat(f[5]))),
    2: (4, lambda f: HeartbeatReply(_nat(f[5]), _ballot(f[6]), _ballot(f[7]), _happy(f[8]))),
    3: (1, lambda f: PrepareReq(_ballot(f[5]))),
    4: (4, lambda f: Prepare(_ballot(f[5]), _nat(f[6]), _ballot(f[7]), _nat(f[8]))),
    5: (5, lambda f: Promise(_ballot(f[5]), _ballot(f[6]), _nat(f[7]), _nat(f[8]),
                             None if f[9] is None else _log_sync(f[9]))),
    6: (5, lambda f: AcceptSync(_ballot(f[5]), _seq(f[6]), _nat(f[7]), _log_sync(f[8]), _base(f[9]))),
    7: (4, lambda f: AcceptDecide(_ballot(f[5]), _seq(f[6]), _nat(f[7]), _entries(f[8]))),
    8: (2, lambda f: Accepted(_ballot(f[5]), _nat(f[6]))),
    9: (1, lambda f: NotAccepted(_ballot(f[5]))),
    10: (3, lambda f: Decide(_ballot(f[5]), _seq(f[6]), _nat(f[7]))),
    11: (2, lambda f: ProposalForward(_entries(f[5]), _fid(f[6]))),
    12: (2, _compaction),
    13: (3, lambda f: AcceptStopSign(_ballot(f[5]), _seq(f[6]), _stopsign(f[7]))),
    14: (1, lambda f: ForwardStopSign(_stopsign(f[5]))),
    15: (2, lambda f: ReadProbe(_ballot(f[5]), _nat(f[6]))),
    16: (2, lambda f: ReadAck(_ballot(f[5]), _nat(f[6]))),
}
assert {tag for tag, _ in _ENCODERS.values()} == set(_DECODERS)
_ACCEPT_DECIDE = _ENCODERS[AcceptDecide][0]


def _show(v) -> str:
    """An int as itself, anything else by its type only (never the repr of a large attacker-made value)."""
    return str(v) if type(v) is int else f"of type {type(v).__name__}"


def _unpack(data, size: int):
    try:
        return _unpackb(data, raw=False, strict_map_key=False, use_list=False, max_str_len=size,
                        max_bin_len=size, max_array_len=size, max_map_len=size // 2, max_ext_len=size)
    except Exception as e:  # ValueError, FormatError, StackError, TypeError (unhashable map key), ...
        raise CodecError(f"not a msgpack frame: {type(e).__name__}: {str(e)[:80]}") from None


def decode(data: bytes, max_frame: int = MAX_FRAME) -> Envelope:
    """The Envelope in ``data``; CodecError (and only CodecError) for anything that is not a valid frame."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"a frame is bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_frame:
        raise CodecError(f"frame of {size} bytes exceeds {max_frame}")
    f = _unpack(data, size)
    if type(f) is not tuple or len(f) < _HEADER:
        raise CodecError("a frame is an array [version, tag, src, dst, config_id, field...]")
    version, tag = f[0], f[1]
    if type(version) is not int or version != VERSION:
        raise CodecError(f"unknown codec version {_show(version)}")
    spec = _DECODERS.get(tag) if type(tag) is int else None
    if spec is None:
        raise CodecError(f"unknown message tag {_show(tag)}")
    arity, build = spec
    if len(f) != _HEADER + arity:
        raise CodecError(f"message tag {tag} takes {arity} fields, got {len(f) - _HEADER}")
    env = Envelope(_id(f[2]), _id(f[3]), _id(f[4]), build(f))
    if tag == _ACCEPT_DECIDE:
        _remember_received_entries(data, f)
    return env


def _packed_head(frame: tuple) -> memoryview:
    """The element encodings of every field of ``frame`` but the last (which the caller adds)."""
    return array_body(_packb(frame[:-1], use_bin_type=True))


def _remember_received_entries(data, f: tuple) -> None:
    """Keep the bytes of an AcceptDecide's entries for the follower's log row (see pack_entries). Where
    they begin is known only if the fields before them were encoded as `encode` encodes them: a frame
    whose first bytes are exactly that encoding has its entries right after (a msgpack value's encoding
    ends where it ends). Another encoder's frame is simply not remembered, and its entries are packed."""
    head = array_header(len(f)) + _packed_head(f)
    if memoryview(data)[:len(head)] == head:
        _remember(f[-1], bytes(memoryview(data)[len(head):]))
