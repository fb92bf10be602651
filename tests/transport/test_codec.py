"""Wire codec claims, one test each: round trips, strict validation, only CodecError on bad input, limits."""
from dataclasses import fields

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni.paxos import MemoryStorage, PaxosConfig, SequencePaxos
from omni.paxos.messages import (
    BLE_MESSAGES, SP_MESSAGES, AcceptDecide, Accepted, AcceptStopSign, AcceptSync, Ballot, Compaction, Decide,
    Envelope, ForwardStopSign, HeartbeatReply, HeartbeatRequest, LogSync, NotAccepted, Prepare, PrepareReq,
    Promise, ProposalForward, ReadAck, ReadProbe, SequenceNumber, SnapshotSync, StopSign,
)
from omni.transport import codec
from omni.transport.codec import CodecError, decode, encode, is_ble

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAX = 2**64 - 1
B, Z, SEQ = Ballot(3, 1, 2), Ballot(), SequenceNumber(1, 7)
NESTED = (None, True, False, -1, MAX, -2**63, 1.5, "ünïcode", b"\x00\xff", (1, (2, (3, ()))),
          {"a": {"b": (1,)}, 7: None}, msgpack.ExtType(5, b"x"))


def env(msg, src=1, dst=2, config_id=1):
    return Envelope(src, dst, config_id, msg)


EXAMPLES = [env(m) for m in (
    HeartbeatRequest(0), HeartbeatRequest(MAX),
    HeartbeatReply(5, B, Z, True), HeartbeatReply(5, Z, B, False),
    PrepareReq(Z), PrepareReq(Ballot(MAX, MAX, MAX)),
    Prepare(B, 0, Z, 0), Prepare(B, 10, Ballot(2, 0, 1), 12),
    Promise(B, Z, 0, 0, None),
    Promise(B, B, 3, 7, LogSync(3, ("a", b"b"), None, None)),
    Promise(B, B, 5, 5, LogSync(5, (), SnapshotSync("complete", ("x",) * 5, 0), StopSign(2, (1, 2, 3)))),
    AcceptSync(B, SEQ, 4, LogSync(0, (), SnapshotSync("trimmed"), None), (Z, 0)),
    AcceptSync(B, SEQ, 9, LogSync(4, NESTED, SnapshotSync("delta", {"k": (1, 2)}, 2),
                                  StopSign(7, (4, 5), {"note": "grow", "ids": (4, 5)})), (Ballot(1, 0, 1), 6)),
    AcceptDecide(B, SEQ, 0, ()), AcceptDecide(B, SEQ, 3, NESTED),
    AcceptDecide(B, SequenceNumber(MAX, MAX), MAX, tuple(bytes([i % 256]) * 100 for i in range(1000))),
    Accepted(B, 0), Accepted(B, MAX), NotAccepted(B), Decide(B, SEQ, 42),
    ProposalForward((), (0, 0)), ProposalForward(("cmd", (1, 2)), (3, 99)),
    Compaction("trim", 10), Compaction("snapshot", 0),
    AcceptStopSign(B, SEQ, StopSign(2, (1, 2, 3))),
    ForwardStopSign(StopSign(9, (1,), {"m": b"x"})), ForwardStopSign(StopSign(MAX, (MAX, 1), NESTED)),
    ReadProbe(B, 1), ReadProbe(Ballot(MAX, MAX, MAX), MAX), ReadAck(B, 0), ReadAck(Z, MAX),
)] + [Envelope(MAX, MAX, MAX, Accepted(B, 1))]


# ---- an oracle for "the types the core expects", written from messages.py, not from the codec ----------

def nat(v):
    return type(v) is int and v >= 0


def ballot_ok(v):
    return type(v) is Ballot and nat(v.n) and nat(v.priority) and nat(v.pid)


def stopsign_ok(v):
    return (type(v) is StopSign and type(v.config_id) is int and v.config_id > 0 and type(v.nodes) is tuple
            and len(v.nodes) > 0 and all(type(p) is int and p > 0 for p in v.nodes)
            and len(set(v.nodes)) == len(v.nodes))


def log_sync_ok(v):
    snap = v.snapshot if type(v) is LogSync else None
    return (type(v) is LogSync and nat(v.sync_idx) and type(v.suffix) is tuple
            and (snap is None or type(snap) is SnapshotSync and snap.kind in ("complete", "delta", "trimmed")
                 and nat(snap.from_idx))
            and (v.stopsign is None or stopsign_ok(v.stopsign)))


FIELD_OK = {
    "round": nat, "decided_idx": nat, "accepted_idx": nat, "idx": nat,
    "n": ballot_ok, "n_accepted": ballot_ok, "ballot": ballot_ok, "leader": ballot_ok,
    "seq": lambda v: type(v) is SequenceNumber and nat(v.session) and nat(v.counter),
    "entries": lambda v: type(v) is tuple, "happy": lambda v: type(v) is bool,
    "log_sync": lambda v: v is None or log_sync_ok(v), "ss": stopsign_ok,
    "base": lambda v: type(v) is tuple and len(v) == 2 and ballot_ok(v[0]) and nat(v[1]),
    "fid": lambda v: type(v) is tuple and len(v) == 2 and nat(v[0]) and nat(v[1]),
    "kind": lambda v: v in ("trim", "snapshot"),
}


def assert_well_typed(e):
    assert type(e) is Envelope
    assert all(type(i) is int and i > 0 for i in (e.src, e.dst, e.config_id))
    assert type(e.msg) in BLE_MESSAGES + SP_MESSAGES
    for f in fields(e.msg):
        assert FIELD_OK[f.name](getattr(e.msg, f.name)), f"{type(e.msg).__name__}.{f.name}"
    if type(e.msg) is AcceptSync:
        assert e.msg.log_sync is not None


def raw(e):
    """The frame of ``e`` as plain msgpack data (tuples), to tamper with."""
    return msgpack.unpackb(encode(e), use_list=False, strict_map_key=False)


def replaced(t, path, value):
    if not path:
        return value
    i, rest = path[0], path[1:]
    return t[:i] + (replaced(t[i], rest, value),) + t[i + 1:]


def frame_with(e, path, value):
    return msgpack.packb(replaced(raw(e), path, value), use_bin_type=True)


# ---- round trips --------------------------------------------------------------------------------------

def test_examples_cover_every_message_type():
    assert {type(e.msg) for e in EXAMPLES} == set(BLE_MESSAGES + SP_MESSAGES)


@pytest.mark.parametrize("e", EXAMPLES, ids=lambda e: type(e.msg).__name__)
def test_every_message_type_round_trips_with_exact_types(e):
    got = decode(encode(e))
    assert got == e
    assert_well_typed(got)


def test_list_values_in_entries_come_back_as_tuples():
    got = decode(encode(env(AcceptDecide(B, SEQ, 0, ([1, [2]], {"k": [3]})))))
    assert got.msg.entries == ((1, (2,)), {"k": (3,)})


def test_is_ble_tells_heartbeats_from_sequence_paxos():
    assert [is_ble(e) for e in EXAMPLES] == [isinstance(e.msg, BLE_MESSAGES) for e in EXAMPLES]
    assert is_ble(env(HeartbeatRequest(1))) and not is_ble(env(Accepted(B, 1)))


def test_wire_tags_are_stable():
    tags = {type(e.msg).__name__: raw(e)[:2] for e in EXAMPLES}
    assert tags == {name: (1, tag) for tag, name in enumerate((
        "HeartbeatRequest", "HeartbeatReply", "PrepareReq", "Prepare", "Promise", "AcceptSync", "AcceptDecide",
        "Accepted", "NotAccepted", "Decide", "ProposalForward", "Compaction", "AcceptStopSign",
        "ForwardStopSign", "ReadProbe", "ReadAck"), start=1)}


class TupleSnapshotter:
    def create(self, entries):
        return tuple(entries)

    def merge(self, base, delta):
        return (base or ()) + tuple(delta)


def test_a_cluster_talking_only_through_the_codec_decides_the_same_log():
    pids, disks = (1, 2, 3), {p: MemoryStorage() for p in (1, 2, 3)}

    def cfg(p):
        return PaxosConfig(p, pids, snapshotter=TupleSnapshotter())

    nodes, down, seen, confirmed = {p: SequencePaxos(cfg(p)) for p in pids}, set(), set(), []

    def pump():
        for _ in range(50):
            inbox = []
            for p, sp in nodes.items():
                ready = sp.take_ready()
                disks[p].write(ready.writes)
                confirmed.extend(ready.reads)
                inbox += [m for m in ready.early + ready.messages if p not in down and m.dst not in down]
            for e in inbox:
                got = decode(encode(e))
                assert got == e
                assert_well_typed(got)
                seen.add(type(e.msg))
                nodes[got.dst].handle(got)
            if not inbox:
                return

    nodes[3].handle_leader(Ballot(1, 0, 3))
    nodes[3].propose([("set", "a", i) for i in range(5)])
    nodes[1].propose([b"forwarded", {"k": (1, 2)}])
    pump()
    down.add(2)
    nodes[3].propose([("set", "b", i) for i in range(5)])
    pump()
    nodes[3].snapshot()
    pump()
    nodes[3].read(7)
    pump()
    assert confirmed == [(7, 12)]  # every entry decided so far
    down.discard(2)
    nodes[2] = SequencePaxos(cfg(2), disks[2].load(), incarnation=1)
    pump()
    nodes[1].reconfigure((1, 2, 3, 4))
    pump()
    nodes[1].handle_leader(Ballot(2, 0, 1))
    pump()
    logs = {p: tuple(disks[p].load().snapshot or ()) + tuple(disks[p].load().entries) for p in pids}
    assert logs[1] == logs[2] == logs[3] and len(logs[1]) == 12
    assert {n.decided_idx for n in nodes.values()} == {13}
    assert {n.decided_stopsign() for n in nodes.values()} == {StopSign(2, (1, 2, 3, 4))}
    assert {Prepare, Promise, AcceptSync, AcceptDecide, Accepted, Decide, ProposalForward, Compaction,
            PrepareReq, AcceptStopSign, ForwardStopSign, ReadProbe, ReadAck} <= seen


# ---- refusals ------------------------------------------------------------------------------------------

HB, ACC = env(HeartbeatRequest(3)), env(Accepted(B, 5))
SYNC = EXAMPLES[12]  # AcceptSync with a delta snapshot and a StopSign
FWD = env(ProposalForward(("x",), (1, 2)))
HB_REPLY, COMPACT = env(HeartbeatReply(1, B, B, True)), env(Compaction("trim", 1))
PROBE, ACK = env(ReadProbe(B, 4)), env(ReadAck(B, 4))

BAD = {  # name -> (valid envelope, path in its frame, replacement)
    "version bool": (HB, (0,), True), "version 2": (HB, (0,), 2), "version str": (HB, (0,), "1"),
    "tag bool": (HB, (1,), True), "tag float": (HB, (1,), 1.0), "tag unknown": (HB, (1,), 99),
    "src negative": (HB, (2,), -1), "src zero": (HB, (2,), 0), "dst str": (HB, (3,), "2"),
    "config_id bool": (HB, (4,), True), "config_id float": (HB, (4,), 1.0),
    "round str": (HB, (5,), "3"), "round negative": (HB, (5,), -3),
    "ballot short": (ACC, (5,), (7, 0)), "ballot long": (ACC, (5,), (7, 0, 3, 4)),
    "ballot negative": (ACC, (5, 1), -1), "ballot bool": (ACC, (5, 2), False), "ballot map": (ACC, (5,), {}),
    "index None": (ACC, (6,), None), "index float": (ACC, (6,), 5.0),
    "happy int": (HB_REPLY, (8,), 1), "entries str": (FWD, (5,), "x"), "entries map": (FWD, (5,), {0: "x"}),
    "fid short": (FWD, (6,), (1,)), "fid negative": (FWD, (6, 1), -2), "fid None": (FWD, (6,), None),
    "compaction kind": (COMPACT, (5,), 2), "compaction kind str": (COMPACT, (5,), "trim"),
    "snapshot kind": (SYNC, (8, 2, 0), 3), "snapshot kind str": (SYNC, (8, 2, 0), "delta"),
    "stopsign node zero": (SYNC, (8, 3, 1), (4, 0)), "stopsign node negative": (SYNC, (8, 3, 1), (-4,)),
    "stopsign no nodes": (SYNC, (8, 3, 1), ()), "stopsign duplicate": (SYNC, (8, 3, 1), (4, 4)),
    "stopsign bool node": (SYNC, (8, 3, 1), (True,)), "stopsign config zero": (SYNC, (8, 3, 0), 0),
    "base short": (SYNC, (9,), ((3, 1, 2),)), "base index negative": (SYNC, (9, 1), -1),
    "log_sync None": (SYNC, (8,), None), "suffix None": (SYNC, (8, 1), None),
    "missing field": (ACC, (), (1, 8, 1, 2, 1, (1, 0, 1))), "extra field": (HB, (), (1, 1, 1, 2, 1, 3, 4)),
    "not an array": (HB, (), {"v": 1}), "short header": (HB, (), (1, 1, 1)), "scalar": (HB, (), 1),
    "probe round negative": (PROBE, (6,), -1), "probe round str": (PROBE, (6,), "4"),
    "probe round bool": (PROBE, (6,), True), "probe round None": (PROBE, (6,), None),
    "probe ballot short": (PROBE, (5,), (3, 1)), "probe ballot str": (PROBE, (5, 0), "3"),
    "probe extra field": (PROBE, (), raw(PROBE) + (0,)), "probe missing round": (PROBE, (), raw(PROBE)[:6]),
    "ack round float": (ACK, (6,), 4.0), "ack round huge array": (ACK, (6,), (4,)),
    "ack ballot bool": (ACK, (5, 0), True), "ack ballot None": (ACK, (5,), None),
    "ack missing round": (ACK, (), raw(ACK)[:6]),
}


@pytest.mark.parametrize("name", BAD)
def test_wrong_values_in_a_valid_msgpack_frame_are_refused(name):
    e, path, value = BAD[name]
    decode(encode(e))  # the untouched frame is fine
    with pytest.raises(CodecError):
        decode(frame_with(e, path, value))


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x95\x01", encode(HB) + b"\x00", encode(HB)[:-1], b"\x91" * 100_000,
    b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
    b"\x95\x01\x07\x01\x02\x01\xdd\xff\xff\xff\xff",  # a valid-looking header, then a 4G-element array
    b"\x81\x80\x01", "text", None, 42,  # an unhashable map key; not bytes at all
], ids=repr)
def test_malformed_input_raises_only_codec_error(data):
    with pytest.raises(CodecError):
        decode(data)


def test_codec_error_is_a_value_error():
    assert issubclass(CodecError, ValueError)


def test_bytearray_and_memoryview_frames_decode():
    frame = encode(ACC)
    assert decode(bytearray(frame)) == decode(memoryview(frame)) == ACC


def test_frame_larger_than_max_frame_is_refused_without_unpacking(monkeypatch):
    calls = []
    monkeypatch.setattr(codec, "_unpackb", lambda *a, **k: calls.append(a))
    frame = encode(EXAMPLES[15])  # the 1000-entry AcceptDecide
    with pytest.raises(CodecError, match="exceeds"):
        decode(frame, max_frame=len(frame) - 1)
    assert calls == []


def test_unpacker_limits_are_no_larger_than_the_frame(monkeypatch):
    seen = {}
    real = codec._unpackb
    monkeypatch.setattr(codec, "_unpackb", lambda data, **kw: seen.update(kw) or real(data, **kw))
    frame = encode(ACC)
    assert decode(frame) == ACC
    limits = ("max_str_len", "max_bin_len", "max_array_len", "max_map_len", "max_ext_len")
    assert all(0 <= seen[k] <= len(frame) for k in limits)


@pytest.mark.parametrize("e", [
    env(object()), env(Compaction("shrink", 1)),
    env(AcceptSync(B, SEQ, 0, LogSync(0, (), SnapshotSync("x")), (B, 0))),
    env(Accepted(B, 2**64)), env(AcceptDecide(B, SEQ, 0, (object(),))), env(Accepted(None, 1)),
], ids=["unknown type", "compaction kind", "snapshot kind", "int over 64 bits", "unpackable entry", "no ballot"])
def test_encode_refuses_what_has_no_wire_form_with_codec_error(e):
    with pytest.raises(CodecError):
        encode(e)


def test_encode_refuses_a_frame_larger_than_max_frame():
    with pytest.raises(CodecError, match="exceeds"):
        encode(EXAMPLES[15], max_frame=1000)


# ---- properties ----------------------------------------------------------------------------------------

nats, ids = st.integers(0, MAX), st.integers(1, MAX)
scalars = (st.none() | st.booleans() | st.integers(-2**63, MAX) | st.floats(allow_nan=False)
           | st.text(max_size=8) | st.binary(max_size=8))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4).map(tuple)
                      | st.dictionaries(st.text(max_size=4) | st.integers(-5, 5), c, max_size=4), max_leaves=12)
OPAQUE = "<opaque>"


def envelopes(values):
    """Valid Envelopes of every type; ``values`` fills the opaque positions (entries, data, metadata)."""
    ballots, seqs = st.builds(Ballot, nats, nats, nats), st.builds(SequenceNumber, nats, nats)
    entries = st.lists(values, max_size=4).map(tuple)
    stopsigns = st.builds(StopSign, ids, st.lists(ids, min_size=1, max_size=4, unique=True).map(tuple), values)
    snaps = st.builds(SnapshotSync, st.sampled_from(("complete", "delta", "trimmed")), values, nats)
    syncs = st.builds(LogSync, nats, entries, st.none() | snaps, st.none() | stopsigns)
    msgs = st.one_of(
        st.builds(HeartbeatRequest, nats), st.builds(HeartbeatReply, nats, ballots, ballots, st.booleans()),
        st.builds(PrepareReq, ballots), st.builds(Prepare, ballots, nats, ballots, nats),
        st.builds(Promise, ballots, ballots, nats, nats, st.none() | syncs),
        st.builds(AcceptSync, ballots, seqs, nats, syncs, st.tuples(ballots, nats)),
        st.builds(AcceptDecide, ballots, seqs, nats, entries), st.builds(Accepted, ballots, nats),
        st.builds(NotAccepted, ballots), st.builds(Decide, ballots, seqs, nats),
        st.builds(ProposalForward, entries, st.tuples(nats, nats)),
        st.builds(Compaction, st.sampled_from(("trim", "snapshot")), nats),
        st.builds(AcceptStopSign, ballots, seqs, stopsigns), st.builds(ForwardStopSign, stopsigns),
        st.builds(ReadProbe, ballots, nats), st.builds(ReadAck, ballots, nats))
    return st.builds(Envelope, ids, ids, ids, msgs)


def decodes_or_refuses(data):
    try:
        e = decode(data)
    except CodecError:
        return
    assert_well_typed(e)


@FUZZ
@given(envelopes(values))
def test_every_valid_envelope_round_trips(e):
    got = decode(encode(e))
    assert got == e
    assert_well_typed(got)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_codec_error(data):
    decodes_or_refuses(data)


@FUZZ
@given(st.tuples(st.just(1), st.integers(0, 16), ids, ids, ids).flatmap(
    lambda head: st.lists(values, max_size=6).map(lambda rest: head + tuple(rest))))
def test_arbitrary_msgpack_after_a_valid_header_decodes_or_raises_codec_error(frame):
    decodes_or_refuses(msgpack.packb(frame, use_bin_type=True))


@FUZZ
@given(envelopes(values), st.data())
def test_a_valid_frame_with_one_byte_changed_decodes_or_raises_codec_error(e, data):
    frame = bytearray(encode(e))
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] ^= data.draw(st.integers(1, 255))
    decodes_or_refuses(bytes(frame))


@FUZZ
@given(envelopes(values), st.data())
def test_a_truncated_or_extended_valid_frame_raises_codec_error(e, data):
    frame = encode(e)
    cut = data.draw(st.integers(0, len(frame) - 1))
    tail = data.draw(st.binary(min_size=1, max_size=16))
    for bad in (frame[:cut], frame + tail):
        with pytest.raises(CodecError):
            decode(bad)


def typed_positions(t, path=()):
    """Every position of a frame the codec must type-check: all but the opaque values (marked OPAQUE)."""
    if t == OPAQUE:
        return
    yield path, t
    if type(t) is tuple:
        for i, child in enumerate(t):
            yield from typed_positions(child, path + (i,))


def wrong_values(v):
    """Values of another type than ``v`` that no position holding ``v`` may take (None is optional data)."""
    others = ["1", 1.0, b"\x01", {}]
    if type(v) is int:
        return others + [True, False, None, -1, (v,)]
    if type(v) is bool:
        return others + [int(v), None, (v,)]
    if v is None:
        return others + [0, True, ()]
    return others + [0, True]  # an array (typed or the entries list): never a scalar or a map


@FUZZ
@given(envelopes(st.just(OPAQUE)), st.data())
def test_a_wrong_type_in_any_typed_position_raises_codec_error(e, data):
    positions = list(typed_positions(raw(e)))
    path, old = data.draw(st.sampled_from(positions))
    new = data.draw(st.sampled_from(wrong_values(old)))
    with pytest.raises(CodecError):
        decode(frame_with(e, path, new))


# ---- entries packed once (codec.pack_entries) -----------------------------------------------------------

def test_accept_decide_frame_is_the_plain_msgpack_array_of_its_fields():
    # AcceptDecide is encoded in two pieces (its entries from the cache): the bytes must not differ.
    for entries in ((), tuple(range(20)), NESTED, tuple({"w": {"op": "put", "value": b"x" * 100}} for _ in range(3))):
        e = env(AcceptDecide(B, SEQ, 5, entries), src=3, dst=9, config_id=4)
        plain = msgpack.packb((codec.VERSION, 7, 3, 9, 4, (3, 1, 2), (1, 7), 5, entries), use_bin_type=True)
        assert encode(e) == plain
        assert decode(plain) == e


def test_one_tuple_sent_to_two_followers_is_packed_once(monkeypatch):
    calls = []
    real = codec._packb
    monkeypatch.setattr(codec, "_packb", lambda v, **kw: calls.append(v) or real(v, **kw))
    entries = tuple({"k": i} for i in range(5))
    frames = [encode(env(AcceptDecide(B, SEQ, 0, entries), dst=d)) for d in (2, 3)]
    assert [c for c in calls if c is entries] == [entries], "the entries were packed more than once"
    assert decode(frames[0]).msg.entries == decode(frames[1]).msg.entries == entries
    assert codec.pack_entries(entries) == msgpack.packb(entries, use_bin_type=True)


def test_a_decoded_accept_decide_keeps_the_bytes_its_entries_came_from():
    # A sender may encode the same values differently (here 1 as uint32): the remembered bytes are the
    # sender's, and they decode to the same entries, which is all a log row needs.
    body = b"\x92\xce\x00\x00\x00\x01\xa1x"  # [1, "x"], its 1 as uint32
    frame = msgpack.packb((codec.VERSION, 7, 1, 2, 1, (3, 1, 2), (1, 7), 0), use_bin_type=True)
    frame = b"\x99" + frame[1:] + body
    got = decode(frame).msg.entries
    assert got == (1, "x")
    assert codec.pack_entries(got) == body
    assert msgpack.unpackb(codec.pack_entries(got), use_list=False) == got


def test_entries_after_a_differently_encoded_header_are_not_remembered():
    # Where the entries begin is known only when the fields before them are encoded as this codec does.
    frame = msgpack.packb((codec.VERSION, 7, 1, 2, 1, (3, 1, 2), (1, 7)), use_bin_type=True)
    frame = b"\x99" + frame[1:] + b"\xce\x00\x00\x00\x00" + b"\x91\xce\x00\x00\x00\x01"  # decided 0 as uint32
    got = decode(frame).msg
    assert got.decided_idx == 0 and got.entries == (1,)
    assert codec.pack_entries(got.entries) == b"\x91\x01", "packed afresh, not taken from the frame"


@pytest.mark.parametrize("frame", [
    b"\x99\x01\x07",  # truncated after the tag
    msgpack.packb((1, 7, 1, 2, 1, (3, 1, 2), (1, 7), 0, ()), use_bin_type=True) + b"\x00",  # a byte too many
    b"\x99\x01\x07" + b"\xc1" * 20,  # never-used msgpack byte
])
def test_a_malformed_accept_decide_frame_raises_codec_error(frame):
    with pytest.raises(CodecError):
        decode(frame)


def test_array_body_and_header_rebuild_an_array_of_any_size():
    for n in (0, 1, 15, 16, 65535, 65536):
        items = list(range(n))
        packed = msgpack.packb(items)
        assert codec.array_header(n) + bytes(codec.array_body(packed)) == packed
    with pytest.raises(ValueError):
        codec.array_body(msgpack.packb({"not": "an array"}))
