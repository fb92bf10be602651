"""A PySyncObj key-value node with an Omni-protocol front, so `omni bench` can load it like an Omni node.

Run by bench/compare.py with a throwaway venv's Python (PySyncObj is not a dependency of Omni):

    python bench/pysyncobj_server.py --self 127.0.0.1:4321 --partners 127.0.0.1:4322,127.0.0.1:4323 \\
        --client tcp://127.0.0.1:5321 --data-dir DIR

The replicated state is a dict changed by two `@replicated` methods, `put(key, value)` and
`put_many(items)` (PySyncObj's own Raft; commands from a follower are forwarded to the leader by
PySyncObj itself). Its journal is a file (`journalFile`), PySyncObj's most durable setting, but PySyncObj
never fsyncs it: the journal is an mmap flushed only at close, so an acknowledged write lives in the page
cache of a majority, not on their disks. The default batching (appendEntriesPeriod 0.1 s) is kept unless
--append-period says otherwise.

The front is a ZeroMQ ROUTER speaking the subset of PROTOCOL.md that the bench uses: `put`, `get`
(answered from this node's dict at once, whatever `consistency` says: PySyncObj has no read protocol, so
these are `local` reads), `batch` of puts (one replicated command), `ping`, `status`. A write's reply is
sent from PySyncObj's callback (on its own thread) through an inproc socket to the front's thread.
"""
from __future__ import annotations

import argparse
import os
import queue
import signal
import threading

import msgpack
import zmq
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.syncobj import FAIL_REASON


class KV(SyncObj):
    def __init__(self, self_addr, partners, conf):
        super().__init__(self_addr, partners, conf=conf)
        self.data: dict = {}
        self.revision = 0

    @replicated
    def put(self, key, value):
        self.revision += 1
        self.data[key] = value
        return self.revision

    @replicated
    def put_many(self, items):
        for key, value in items:
            self.revision += 1
            self.data[key] = value
        return self.revision


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--self", dest="self_addr", required=True)
    ap.add_argument("--partners", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--append-period", type=float, default=None,
                    help="PySyncObj appendEntriesPeriod in seconds (default: its own, 0.1)")
    args = ap.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    conf_args = dict(journalFile=os.path.join(args.data_dir, "journal.bin"),
                     fullDumpFile=os.path.join(args.data_dir, "dump.bin"))
    if args.append_period is not None:
        conf_args["appendEntriesPeriod"] = args.append_period
    kv = KV(args.self_addr, [p for p in args.partners.split(",") if p], SyncObjConf(**conf_args))

    ctx = zmq.Context()
    front = ctx.socket(zmq.ROUTER)
    front.setsockopt(zmq.LINGER, 0)
    front.setsockopt(zmq.SNDHWM, 0)
    front.setsockopt(zmq.RCVHWM, 0)
    front.bind(args.client)
    wake_addr = f"inproc://wake-{os.getpid()}"
    wake = ctx.socket(zmq.PULL)
    wake.bind(wake_addr)
    done: queue.SimpleQueue = queue.SimpleQueue()  # (route, reply) from PySyncObj's thread
    local = threading.local()

    def finish(route, rid, result, error):
        if error == FAIL_REASON.SUCCESS:
            reply = {"ok": True, "result": {"revision": result}, "id": rid}
        else:
            code = "UNAVAILABLE" if error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER,
                                              FAIL_REASON.LEADER_CHANGED) else "TIMEOUT"
            reply = {"ok": False, "error": {"code": code, "message": f"pysyncobj: {error}"}, "id": rid}
        done.put((route, reply))
        sock = getattr(local, "sock", None)
        if sock is None:
            sock = local.sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(wake_addr)
        sock.send(b"", zmq.NOBLOCK)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(wake, zmq.POLLIN)
    pack, unpack = msgpack.packb, msgpack.unpackb
    while not stopping.is_set():
        events = dict(poller.poll(100))
        if wake in events:
            while True:
                try:
                    wake.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
        while True:  # replies from committed writes
            try:
                route, reply = done.get_nowait()
            except queue.Empty:
                break
            front.send_multipart([*route, b"", pack(reply, use_bin_type=True)])
        if front not in events:
            continue
        for _ in range(1000):
            try:
                frames = front.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            split = frames.index(b"")
            route = frames[:split]
            try:
                req = unpack(frames[-1], raw=False, strict_map_key=False)
                rid, op = req.get("id"), req.get("op")
            except Exception:
                front.send_multipart([*route, b"", pack({"ok": False, "error": {"code": "BAD_REQUEST",
                                                                                "message": "not msgpack"}})])
                continue
            if op == "put":
                kv.put(req["key"], req["value"], callback=lambda r, e, route=route, rid=rid: finish(route, rid, r, e))
                continue
            if op == "batch":
                items = [(o["key"], o["value"]) for o in req.get("ops", ())]
                kv.put_many(items, callback=lambda r, e, route=route, rid=rid: finish(route, rid, r, e))
                continue
            if op == "get":
                reply = {"ok": True, "result": {"value": kv.data.get(req.get("key")), "revision": kv.revision},
                         "id": rid}
            elif op in ("ping", "status"):
                status = kv.getStatus()
                leader = status.get("leader")
                reply = {"ok": True, "result": {"node": args.self_addr, "leader": str(leader) if leader else "",
                                                "role": "leader" if str(leader) == args.self_addr else "follower",
                                                "ready": kv.isReady()}, "id": rid}
            else:
                reply = {"ok": False, "error": {"code": "UNKNOWN_OP", "message": f"unknown op {op!r}"}, "id": rid}
            front.send_multipart([*route, b"", pack(reply, use_bin_type=True)])
    kv.destroy()
    front.close(linger=0)
    wake.close(linger=0)


if __name__ == "__main__":
    main()
