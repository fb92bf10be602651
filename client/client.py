"""The Python client for Omni: synchronous requests over a ZeroMQ REQ socket (the lazy-pirate pattern).

PROTOCOL.md is the contract this module speaks; it holds no knowledge the protocol does not state. One
request is in flight at a time: the client sends one msgpack map, polls for the reply with a timeout, and
when none comes it closes the socket (linger 0, so nothing stale is delivered later) and tries the next
endpoint, round robin, until the retry budget or the overall deadline runs out; then it raises
`Unavailable`. A node's UNAVAILABLE or TIMEOUT error is retried the same way (after a short, growing
pause, because a cluster electing a leader refuses quickly); every other error code is raised at once.
Each write carries this client's id and a fresh, increasing `seq`, and every retry of it carries the same
pair, so the cluster applies it at most once; reads carry neither. Each attempt carries a new `id` and a
reply is accepted only if it echoes that id. A Client is safe to share between threads (a lock serialises
requests) but gains nothing from it: give each thread its own for concurrency.
"""
from __future__ import annotations

import itertools
import os
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import zmq

#: the client endpoints `omni cluster up` gives its three nodes
DEFAULT_ENDPOINTS = ("tcp://127.0.0.1:7201", "tcp://127.0.0.1:7202", "tcp://127.0.0.1:7203")
#: the largest frame a node accepts (PROTOCOL.md, "Limits"); a bigger request is refused before sending
MAX_FRAME = 16 * 1024 * 1024
#: ops that change state, so they need client + seq; a plug-in state machine's writes are added per Client
WRITE_OPS = frozenset({"put", "delete", "cas", "batch", "execute"})
#: error codes that say "not here, not now": try the next node
RETRYABLE = frozenset({"UNAVAILABLE", "TIMEOUT", "NOT_MEMBER"})  # NOT_MEMBER: a removed node; next one
CONSISTENCY = ("linearizable", "leader", "local")
ENVELOPE = frozenset({"op", "id", "client", "seq"})  # keys the client sets itself
_HWM = 16  # REQ holds one message at a time; a small bound keeps a dead peer from hoarding memory


class OmniError(Exception):
    """An error reply from a node (or a request refused before sending); ``code`` is the protocol code."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class Unavailable(OmniError):
    """No node gave an answer within the retry budget. For a write this is indefinite: it may have happened."""

    def __init__(self, message: str = "no node answered"):
        super().__init__("UNAVAILABLE", message)


def parse_endpoints(endpoints: str | Iterable[str]) -> list[str]:
    """A list of ZeroMQ endpoints from a comma-separated string or an iterable; "host:port" means tcp."""
    parts = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = []
    for part in parts:
        part = part.strip()
        if part:
            out.append(part if "://" in part else f"tcp://{part}")
    if not out:
        raise ValueError("no endpoints given")
    return out


class Client:
    """A connection to an Omni cluster through any of its nodes' client endpoints.

    ``timeout`` is how long one attempt waits for one node; ``retries`` is how many more attempts follow
    the first (None: as many as ``deadline`` allows); ``deadline`` caps the whole call in seconds.
    ``backoff`` is the first pause after a node refuses with UNAVAILABLE or TIMEOUT; it doubles up to 1 s.
    Every method returns the op's result map as the node sent it (PROTOCOL.md lists the keys).
    """

    def __init__(self, endpoints: str | Iterable[str], *, timeout: float = 2.0, retries: int | None = 5,
                 deadline: float | None = None, backoff: float = 0.05, client_id: str | None = None,
                 write_ops: Iterable[str] = WRITE_OPS, context: zmq.Context | None = None):
        if retries is None and deadline is None:
            raise ValueError("give retries or a deadline, or the client could retry forever")
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self.retries = retries
        self.deadline = deadline
        self.backoff = backoff
        self.client_id = client_id or uuid.uuid4().hex
        self.write_ops = frozenset(write_ops)
        self._context = context or zmq.Context.instance()  # shared, so never terminated here
        self._seq = 0
        self._ids = itertools.count(1)
        self._current = 0  # the endpoint in use; it changes only when an attempt there fails
        self._socket: zmq.Socket | None = None
        self._socket_endpoint = ""
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client for the endpoints in OMNI_ENDPOINTS (comma-separated), else the local `cluster up` ones."""
        return cls(os.environ.get("OMNI_ENDPOINTS") or DEFAULT_ENDPOINTS, **kwargs)

    # --- the generic request ---

    def request(self, op: str, /, **args: Any) -> Any:
        """Send ``op`` with ``args`` and return the result; raise OmniError (or Unavailable) on failure."""
        taken = ENVELOPE.intersection(args)
        if taken:
            raise ValueError(f"{', '.join(sorted(taken))} are set by the client, not passed as arguments")
        with self._lock:
            if self._closed:
                raise ValueError("the client is closed")
            message = {"op": op, **args}
            if op in self.write_ops:
                self._seq += 1  # a new write: a new seq; its retries below reuse it
                message["client"] = self.client_id
                message["seq"] = self._seq
            return self._call(message)

    def _call(self, message: dict) -> Any:
        give_up = None if self.deadline is None else time.monotonic() + self.deadline
        attempts = itertools.count() if self.retries is None else range(self.retries + 1)
        made, refusals, last = 0, 0, "no attempt made"
        for _ in attempts:
            wait = self.timeout if give_up is None else min(self.timeout, give_up - time.monotonic())
            if wait <= 0:
                break
            endpoint = self.endpoints[self._current]
            made += 1
            reply = self._attempt(endpoint, message, wait)
            if isinstance(reply, str):
                last = f"{endpoint}: {reply}"
            else:
                error = _error(reply)
                if error is None:
                    return reply.get("result")
                if error.code not in RETRYABLE:
                    raise error
                last = f"{endpoint}: {error}"
                refusals += 1
                self._pause(refusals, give_up)
            self._current = (self._current + 1) % len(self.endpoints)
        raise Unavailable(f"no answer after {made} attempt(s) on {len(self.endpoints)} endpoint(s); last: {last}")

    def _attempt(self, endpoint: str, message: dict, wait: float) -> dict | str:
        """One send and one poll: the reply map, or a string saying why there is none."""
        message["id"] = next(self._ids)  # a new id per attempt, so a reply to an older attempt is told apart
        frame = _pack(message)
        try:
            sock = self._socket_for(endpoint)
            sock.send(frame, zmq.NOBLOCK)
            if not sock.poll(max(1, int(wait * 1000)), zmq.POLLIN):
                self._drop_socket()  # REQ now waits for a reply that may never come: start afresh
                return f"no reply within {wait:.3g}s"
            data = sock.recv()
        except zmq.ZMQError as e:  # a malformed endpoint, or a full queue
            self._drop_socket()
            return f"socket error: {e}"
        except BaseException:  # e.g. Ctrl-C mid-poll: a REQ socket left waiting would refuse the next send
            self._drop_socket()
            raise
        reply = _unpack(data)
        if not isinstance(reply, dict):
            self._drop_socket()
            return "the reply is not a msgpack map"
        if reply.get("id") != message["id"]:
            self._drop_socket()  # a stale or foreign reply: discard it and try again elsewhere
            return f"reply id {reply.get('id')!r} does not match request id {message['id']!r}"
        return reply

    def _socket_for(self, endpoint: str) -> zmq.Socket:
        if self._socket is not None and self._socket_endpoint == endpoint:
            return self._socket
        self._drop_socket()
        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, _HWM)
        sock.setsockopt(zmq.RCVHWM, _HWM)
        self._socket = sock  # before connect, so a failing connect still gets the socket closed
        self._socket_endpoint = endpoint
        sock.connect(endpoint)
        return sock

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _pause(self, refusals: int, give_up: float | None) -> None:
        """Wait a little after a refusal: a node that refuses at once would otherwise burn the budget."""
        delay = min(1.0, self.backoff * 2 ** (refusals - 1)) * random.uniform(0.5, 1.0)
        if give_up is not None:
            delay = min(delay, give_up - time.monotonic())
        if delay > 0:
            time.sleep(delay)

    # --- node ops ---

    def ping(self) -> dict:
        return self.request("ping")

    def status(self) -> dict:
        return self.request("status")

    def members(self) -> dict:
        """The answering node's configuration: ``{"config_id", "members": [[id, peer, client]...], "state"}``."""
        return self.request("members")

    def reconfigure(self, add: Iterable = (), remove: Iterable[int] = ()) -> dict:
        """Move the cluster to a new member set; returns the new configuration once it is decided.

        ``add``: ``[id, peer_endpoint, client_endpoint]`` triples; ``remove``: ids. Idempotent: a retry
        after the change went through finds nothing left to change and returns the current configuration.
        """
        return self.request("reconfigure", add=[list(m) for m in add], remove=list(remove))

    # --- KV ops ---

    def put(self, key: str, value: Any) -> dict:
        return self.request("put", key=key, value=value)

    def get(self, key: str, consistency: str | None = None) -> dict:
        return self.request("get", key=key, **_consistency(consistency))

    def delete(self, key: str) -> dict:
        return self.request("delete", key=key)

    def batch(self, ops: Iterable[dict]) -> dict:
        """Apply put/delete/cas ops (maps as PROTOCOL.md gives them) in one log entry, in order: ``{"results"}``.

        The ops are checked here first (ValueError) and again by the node (BAD_REQUEST); a frame over
        16 MiB is refused before sending (TOO_LARGE). One batch is one write: one round of consensus, one
        ``seq``, so a retry of it is applied at most once, as a whole.
        """
        return self.request("batch", ops=[_batch_op(op, i) for i, op in enumerate(ops)])

    def put_many(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict:
        """Put every (key, value) pair in one batch (one log entry); ``{"results": [{"revision"}, ...]}``."""
        pairs = items.items() if isinstance(items, Mapping) else items
        return self.batch({"op": "put", "key": k, "value": v} for k, v in pairs)

    def cas(self, key: str, expected: Any, value: Any) -> dict:
        """Set ``key`` to ``value`` if it holds ``expected``; ``expected=None`` means the key must be absent."""
        return self.request("cas", key=key, expected=expected, value=value)

    def range(self, prefix: str | None = None, start: str | None = None, end: str | None = None,
              limit: int | None = None, consistency: str | None = None) -> dict:
        """Keys with ``prefix``, or in [start, end); with neither, every key. ``end=None``: to the last key."""
        if prefix is not None and (start is not None or end is not None):
            raise ValueError("range takes a prefix or start/end, not both")
        args: dict[str, Any] = _consistency(consistency)
        if prefix is None and start is None and end is None:
            args["prefix"] = ""
        elif prefix is not None:
            args["prefix"] = prefix
        else:
            args["start"] = start or ""
            if end is not None:
                args["end"] = end
        if limit is not None:
            args["limit"] = limit
        return self.request("range", **args)

    # --- SQL ops ---

    def execute(self, sql: str, params: list | dict | None = None) -> dict:
        return self.request("execute", sql=sql, **({} if params is None else {"params": params}))

    def execute_many(self, statements: Iterable[str | tuple | list]) -> dict:
        """Run statements (each SQL text or [sql, params]) in one transaction: all or nothing."""
        listed = [[s] if isinstance(s, str) else list(s) for s in statements]
        return self.request("execute", statements=listed)

    def query(self, sql: str, params: list | dict | None = None, consistency: str | None = None) -> dict:
        args = _consistency(consistency)
        if params is not None:
            args["params"] = params
        return self.request("query", sql=sql, **args)

    # --- lifetime ---

    def close(self) -> None:
        with self._lock:
            self._drop_socket()
            self._closed = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_BATCH_FIELDS = {"put": ("key", "value"), "delete": ("key",), "cas": ("key", "expected", "value")}


def _batch_op(op: Any, index: int) -> dict:
    """One op of a batch, checked as the kv state machine will check it (so mistakes fail before sending)."""
    if not isinstance(op, Mapping) or op.get("op") not in _BATCH_FIELDS:
        raise ValueError(f"ops[{index}] must be a map with op put, delete or cas, not {op!r:.80}")
    fields = _BATCH_FIELDS[op["op"]]
    missing = [f for f in fields if f not in op]
    if missing:
        raise ValueError(f"ops[{index}]: {op['op']} needs {', '.join(repr(f) for f in missing)}")
    key = op["key"]
    if not isinstance(key, str) or not key:
        raise ValueError(f"ops[{index}]: 'key' must be a non-empty string")
    return dict(op)


def _consistency(level: str | None) -> dict:
    if level is None:
        return {}  # the node's default: linearizable
    if level not in CONSISTENCY:
        raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY)}, not {level!r}")
    return {"consistency": level}


def _pack(message: dict) -> bytes:
    try:
        frame = msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise OmniError("BAD_REQUEST", f"cannot encode the request as msgpack: {e}") from None
    if len(frame) > MAX_FRAME:
        raise OmniError("TOO_LARGE", f"the request is {len(frame)} bytes; the limit is {MAX_FRAME}")
    return frame


def _unpack(data: bytes) -> Any:
    try:
        # values may be maps with non-string keys, so strict_map_key is off
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types for garbage
        return None


def _error(reply: dict) -> OmniError | None:
    """None for a success reply, else the error it carries (BAD_REPLY if the reply is malformed)."""
    if reply.get("ok") is True:
        return None
    error = reply.get("error")
    if reply.get("ok") is False and isinstance(error, dict) and isinstance(error.get("code"), str):
        return OmniError(error["code"], str(error.get("message", "")))
    return OmniError("BAD_REPLY", f"a reply without ok/result or ok/error: {reply!r:.200}")
