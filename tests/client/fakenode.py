"""A fake Omni node for the client tests: a thread with a ZeroMQ ROUTER socket on a random loopback port.

It speaks the client protocol of PROTOCOL.md well enough to test the client's side of it: it answers
ping, status and the KV/SQL ops from a dict, echoes `id`, and records every request it receives (decoded)
so a test can check what was sent where. `mode` switches its behaviour between requests:
"ok"; "silent" (receives, never answers); "unavailable" or "timeout" (answers with that error);
"error:CODE" (answers with CODE); "wrong_id" (answers with an id that does not match); and `slow_first`
delays the answers to the first N requests by `delay` seconds (without delaying the others).
"""
from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import zmq


class FakeNode:
    def __init__(self, node_id: int, mode: str = "ok", *, slow_first: int = 0, delay: float = 0.0):
        self.node_id = node_id
        self.mode = mode
        self.slow_first = slow_first
        self.delay = delay
        self.requests: list[dict] = []
        self.store: dict[str, Any] = {}
        self._late: list[tuple[float, list[bytes]]] = []  # (when, frames) of delayed answers
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.endpoint = ""
        self._thread = threading.Thread(target=self._run, name=f"fake-node-{node_id}", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        # the socket is made, used and closed in this thread only: ZeroMQ sockets are not thread-safe
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(10, zmq.POLLIN):
                    self._serve(sock, sock.recv_multipart())
                self._send_late(sock)
        finally:
            sock.close(linger=0)

    def _serve(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[-1]  # REQ puts an empty delimiter between them
        request = msgpack.unpackb(body, raw=False)
        self.requests.append(request)
        reply = self._reply(request)
        if reply is None:
            return
        frames = [identity, b"", msgpack.packb(reply, use_bin_type=True)]
        if len(self.requests) <= self.slow_first:
            self._late.append((time.monotonic() + self.delay, frames))
        else:
            sock.send_multipart(frames)

    def _send_late(self, sock: zmq.Socket) -> None:
        now = time.monotonic()
        due = [frames for when, frames in self._late if when <= now]
        self._late = [(when, frames) for when, frames in self._late if when > now]
        for frames in due:
            sock.send_multipart(frames)  # to a peer that may be gone: ROUTER drops it silently

    def _reply(self, request: dict) -> dict | None:
        rid = request.get("id")
        if self.mode == "silent":
            return None
        if self.mode == "wrong_id":
            return {"ok": True, "result": {"node": self.node_id}, "id": f"not-{rid}"}
        if self.mode in ("unavailable", "timeout"):
            return _failure(rid, self.mode.upper(), f"node {self.node_id} says {self.mode}")
        if self.mode.startswith("error:"):
            return _failure(rid, self.mode.split(":", 1)[1], "refused by the fake node")
        try:
            return {"ok": True, "result": self._result(request), "id": rid}
        except KeyError as e:
            return _failure(rid, "UNKNOWN_OP", f"unknown op {e}")

    def _result(self, request: dict) -> Any:
        op = request["op"]
        if op == "ping":
            return {"node": self.node_id}
        if op == "status":
            return {"node": self.node_id, "leader": 1, "role": "leader" if self.node_id == 1 else "follower",
                    "ballot": [4, 0, 1], "decided_idx": 17, "config_id": 1, "members": [1, 2, 3],
                    "state_machine": "kv"}
        if op == "put":
            self.store[request["key"]] = request["value"]
            return {"revision": len(self.requests)}
        if op == "get":
            return {"value": self.store.get(request["key"]), "revision": len(self.requests)}
        if op == "delete":
            return {"deleted": self.store.pop(request["key"], None) is not None}
        if op == "cas":
            return {"succeeded": False, "value": self.store.get(request["key"])}
        if op == "range":
            keys = sorted(k for k in self.store if k.startswith(request.get("prefix", "")))
            return {"items": [[k, self.store[k]] for k in keys], "more": False}
        if op == "execute":
            return {"results": [{"rows_affected": 1, "last_insert_rowid": 1}]}
        if op == "query":
            return {"columns": ["x"], "rows": [[1]]}
        raise KeyError(op)


def _failure(rid: Any, code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}, "id": rid}


def dead_endpoint() -> str:
    """A loopback endpoint nothing listens on: bind a random port, then let it go."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.close(linger=0)
    return f"tcp://127.0.0.1:{port}"
