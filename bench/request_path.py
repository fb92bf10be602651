"""CPU per put of each Python stage of the write path, in one process: a steadier A/B instrument than a cluster.

    python bench/request_path.py [--batch 400] [--rounds 30] [--repeat 5]

Feeds batches of put frames (as `omni bench` makes them: 16-byte keys, 100-byte values, client/seq) through
the real code of each stage, with no threads, sockets or fsync waits, and prints the CPU time
(`time.process_time`, best of ``--repeat``) per put of:
- gateway in: a ClientGateway decoding and checking the frames, tracking them, folding them into a Propose;
- codec: the leader encoding the AcceptDecide for each of two followers, a follower decoding it;
- log write: `SQLiteLogStore.write` of the batch (its CPU only; the file is real, so is the fsync);
- apply: the leader's Applier applying its own entries (and making the replies), a follower's applying
  the decoded ones (no replies);
- gateway out: the leader's gateway turning the replies into encoded client frames.
What it leaves out (transport sockets, mailboxes, thread hand-offs) is measured in a cluster by
bench/cpu_per_op.sh; the two together tell whether a change made the path cheaper.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid

import msgpack

from omni.actors.applier import ApplierActor
from omni.actors.gateway import GatewayActor
from omni.actors.log_store import SQLiteLogStore
from omni.actors.messages import Apply, ClientFrame, ClientFrames, NodeStatus, Propose, Replies, Reply
from omni.paxos import Ballot, DecidedEntries
from omni.paxos.messages import AcceptDecide, Envelope, SequenceNumber
from omni.paxos.storage import AppendOnPrefix
from omni.statemachines.kv import KVStateMachine
from omni.transport import codec


class Recorder:
    def __init__(self):
        self.told = []

    def tell(self, message):
        self.told.append(message)


class Outbox:
    """What the real Outbox does before its socket send: one msgpack frame for a batch of replies."""

    def __init__(self):
        self.frames = 0

    def send_clients(self, replies):
        msgpack.packb([[*route, reply] for route, reply in replies], use_bin_type=True)
        self.frames += 1

    def send_client(self, route, body):
        self.frames += 1

    def send_node(self, dst, message):
        pass

    def close_thread_socket(self):
        pass


class FakeNode:
    incarnation, config_id, members, state_machine_name = 7, 1, (1, 2, 3), "kv"
    removed = stopping = False
    local_reads_answered = 0

    def __init__(self, pid: int):
        self.pid = pid
        self.sequence_paxos, self.applier, self.gateway, self.outbox = Recorder(), Recorder(), Recorder(), Outbox()

    def fatal(self, reason, detail=""):
        raise RuntimeError(reason)


def put_frames(batch: int, start: int, clients: list) -> list:
    value = os.urandom(100)
    frames = []
    for i in range(start, start + batch):
        c = i % len(clients)
        body = msgpack.packb({"op": "put", "key": f"key-{i:012d}", "value": value, "id": i, "timeout": 5.0,
                              "client": clients[c], "seq": i // len(clients) + 1})
        frames.append(ClientFrame((b"\x00k\x8bEg" + (b"%d" % (c % 2)),), body))
    return frames


class Stages:
    def __init__(self, batch: int, directory: str):
        self.batch = batch
        self.leader, self.follower = FakeNode(1), FakeNode(2)
        self.gateway = GatewayActor(self.leader, KVStateMachine(None), 0.01)
        self.gateway.on_receive(NodeStatus(leader=1, role="leader", ballot=Ballot(1, 0, 1), decided_idx=0,
                                           config_id=1, members=(1, 2, 3), accepting=True))
        self.leader_applier = ApplierActor(self.leader, KVStateMachine(None))
        self.follower_applier = ApplierActor(self.follower, KVStateMachine(None))
        self.store = SQLiteLogStore(os.path.join(directory, "log.db"))
        self.store.load()
        self.clients = [uuid.uuid4().hex for _ in range(13)]  # omni bench: one per 32 of 400 in flight
        self.idx = 0
        self.times = {k: 0.0 for k in ("gateway in", "codec encode x2", "codec decode", "log write",
                                       "apply (leader)", "apply (follower)", "gateway out")}

    def _timed(self, stage: str, call):
        started = time.process_time()
        result = call()
        self.times[stage] += time.process_time() - started
        return result

    def round(self) -> None:
        frames = put_frames(self.batch, self.idx, self.clients)
        gw, sp = self.gateway, self.leader.sequence_paxos
        sp.told.clear()
        self._timed("gateway in", lambda: gw.on_receive(ClientFrames(tuple(frames))))
        entries = tuple(e for m in sp.told if isinstance(m, Propose) for e in m.entries)
        assert len(entries) == self.batch, "the gateway did not propose every put"
        msg = AcceptDecide(Ballot(1, 0, 1), SequenceNumber(1, self.idx), self.idx, entries)
        wire = self._timed("codec encode x2", lambda: [codec.encode(Envelope(1, dst, 1, msg)) for dst in (2, 3)])
        decoded = self._timed("codec decode", lambda: codec.decode(wire[0])).msg.entries
        self._timed("log write", lambda: self.store.write([(AppendOnPrefix(self.idx, entries),)]))
        gateway_told = self.leader.gateway.told
        gateway_told.clear()
        self._timed("apply (leader)", lambda: self.leader_applier.on_receive(
            Apply((DecidedEntries(self.idx, entries),))))
        self._timed("apply (follower)", lambda: self.follower_applier.on_receive(
            Apply((DecidedEntries(self.idx, decoded),))))
        replies = [r for m in gateway_told for r in (m.replies if isinstance(m, Replies) else (m,))]
        assert len(replies) == self.batch and all(isinstance(r, Reply) and r.ok for r in replies)
        sent = self.leader.outbox.frames
        self._timed("gateway out", lambda: gw.on_receive(Replies(tuple(replies))))
        assert self.leader.outbox.frames == sent + 1 and not gw.pending, "every reply must go out in one frame"
        self.idx += self.batch


def measure(batch: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="omni-request-path-") as directory:
        stages = Stages(batch, directory)
        stages.round()  # warm-up: first-call costs, SQLite schema
        stages.times = dict.fromkeys(stages.times, 0.0)
        for _ in range(rounds):
            stages.round()
        stages.store.close()
    return {k: v / (rounds * batch) * 1e6 for k, v in stages.times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=400, help="puts per batch (2 x 200 in flight: about 400)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best of each stage is reported")
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args()
    runs = [measure(args.batch, args.rounds) for _ in range(args.repeat)]
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    leader = sum(v for k, v in best.items() if k not in ("codec decode", "apply (follower)"))
    follower = best["codec decode"] + best["apply (follower)"] + best["log write"]
    if args.output == "json":
        print(json.dumps({"us_per_put": best, "leader": leader, "follower": follower}))
        return
    for stage, us in best.items():
        print(f"{stage:<18} {us:6.2f} us per put")
    print(f"{'leader, in all':<18} {leader:6.2f}   (gateway, encode, log write, apply, replies)")
    print(f"{'follower, in all':<18} {follower:6.2f}   (decode, log write, apply)")


if __name__ == "__main__":
    main()
