"""The ClientGateway actor: the client protocol of DESIGN.md section 5, and nothing a client sends kills it.

Each frame is decoded and checked here; anything malformed gets an error reply (BAD_REQUEST, UNKNOWN_OP,
TOO_LARGE) and the gateway moves on. Valid requests are routed:
- ``ping`` and ``status`` are answered at once;
- writes become log entries proposed through SequencePaxos; this node answers once its own Applier has
  applied the entry (so any node serves any client, no redirects);
- reads by consistency: ``linearizable`` (default) is confirmed by the leader with one round to a quorum
  (ReadIndex, see paxos/reads.py; a follower forwards it to the leader) and answered from the leader's
  state once that has applied the read's index; ``leader`` is served from the leader's state without a
  round (forwarded to the leader when this node is not it); ``local`` is served from this node's state
  without waiting for anything and may be stale (the reads of one mailbox drain go to the Applier in one
  message; it answers the clients itself, or TIMEOUT if it got to one past its deadline).
A request that is not answered within its timeout gets TIMEOUT, an indefinite outcome: the write may
still be applied later, which a retry with the same ``client`` and ``seq`` resolves safely.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Optional

import msgpack

from omni.statemachines import StateMachine, StateMachineError

from .membership import Member, plan_change, public_endpoint, to_metadata
from .messages import (
    MAX_TIMEOUT, ClientFrame, ClientFrames, ConfigChanged, LinearizableReads, LocalQueries, NodeStatus, PeerReply,
    PeerRequest, Propose, Query, Reconfigure, Replies, Reply, Tick,
)
from .supervision import SupervisedActor

log = logging.getLogger("omni.gateway")

MAX_REQUEST = 16 * 1024 * 1024
MAX_DEPTH = 64  # nesting of request values: every node must be able to encode and apply them
MAX_IN_FLIGHT = 20_000  # requests waiting for an outcome (local reads too); beyond it new ones get UNAVAILABLE
MAX_PROPOSE_BATCH = 256  # entries plus reads gathered before they go to SequencePaxos
DEFAULT_TIMEOUT = 5.0
ENVELOPE_KEYS = ("id", "client", "seq", "consistency", "timeout")
CONSISTENCY = ("linearizable", "leader", "local")


class BadRequest(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Pending:
    """A request waiting for its outcome: where to answer, and until which tick."""

    deadline: int
    route: tuple = ()
    rid: Any = None
    peer: Optional[tuple] = None  # (origin node, its request number) when serving a forwarded read


class GatewayActor(SupervisedActor):
    def __init__(self, node, validator: StateMachine, tick_seconds: float):
        super().__init__(node)
        self.validator = validator  # a private instance: is_write/prepare only, never applied to
        self._pack = msgpack.Packer(use_bin_type=True).pack  # reused: far cheaper than msgpack.packb per call
        self.tick_seconds = tick_seconds
        self.status: Optional[NodeStatus] = None
        self.pending: dict[int, Pending] = {}
        # deadline tick -> request numbers due then (a dict of lists: a heap cost 4% of the leader's time)
        self.deadlines: dict[int, list] = {}
        # Request numbers start at random so a forwarded-read reply meant for an earlier life of this node
        # cannot answer a request of this one (log entries carry the incarnation for the same reason).
        self.next_req = secrets.randbits(48)
        self.now = 0
        self.late_replies = 0
        # Entries to propose, folded into one Propose per mailbox drain (adaptive batching, as the
        # SequencePaxos actor does): under load one message carries many entries; idle, each goes at once.
        self.proposals: list = []
        self.reads: list = []  # linearizable reads for the leader's core, told after the proposals
        self.local_reads: list = []  # `local` reads for the Applier, which answers them itself
        self.local_sent = 0  # local reads told to the Applier so far (it counts those it answered)
        self.reconfigs: dict[int, tuple] = {}  # request number -> (configuration id, member ids) it waits for
        # Replies encoded while handling one message, handed to the transport in one go (see send_clients).
        self.outgoing: list = []

    def on_receive(self, message):
        self._receive(message)
        if self.outgoing:
            replies, self.outgoing = self.outgoing, []
            self.node.outbox.send_clients(replies)

    def _receive(self, message) -> None:
        if isinstance(message, (ClientFrame, ClientFrames)):
            for frame in (message,) if isinstance(message, ClientFrame) else message.frames:
                self._on_frame(frame)
                if len(self.proposals) + len(self.reads) + len(self.local_reads) >= MAX_PROPOSE_BATCH:
                    self._flush_proposals()
            if (self.proposals or self.reads or self.local_reads) and self.actor_inbox.empty():
                self._flush_proposals()
            return
        if self.proposals or self.reads or self.local_reads:  # anything else first lets what was gathered go
            self._flush_proposals()
        if isinstance(message, Reply):
            self._finish(message.req, message.to_client(None))
        elif isinstance(message, Replies):
            for reply in message.replies:
                self._finish(reply.req, reply.to_client(None))
        elif isinstance(message, PeerReply):
            self._finish(message.req, message.reply)
        elif isinstance(message, PeerRequest):
            self._serve_forwarded_read(message)
        elif isinstance(message, NodeStatus):
            self.status = message
        elif isinstance(message, ConfigChanged):
            self._config_changed(message)
        elif isinstance(message, Tick):
            self.now += 1
            self._expire()

    # ---- requests ----------------------------------------------------------------------------------

    def _on_frame(self, frame: ClientFrame) -> None:
        rid = None
        try:
            if len(frame.body) > MAX_REQUEST:
                raise BadRequest("TOO_LARGE", f"request of {len(frame.body)} bytes exceeds {MAX_REQUEST}")
            request = _decode(frame.body)
            rid = request.get("id")
            self._dispatch(frame.route, rid, request, len(frame.body))
        except BadRequest as exc:
            self._send(frame.route, _error(exc.code, exc.message, rid))
        except StateMachineError as exc:
            self._send(frame.route, _error(exc.code, exc.message, rid))

    def _dispatch(self, route: tuple, rid, request: dict, size: int) -> None:
        op = request["op"]
        if op == "ping":
            return self._send(route, _ok({"node": self.node.pid}, rid))
        if op == "status":
            return self._send(route, _ok(self._status_result(), rid))
        if op in ("members", "reconfigure"):
            return self._membership_op(route, rid, op, request)
        if self.node.removed:
            raise BadRequest("NOT_MEMBER", f"node {self.node.pid} was removed from the cluster (configuration "
                                           f"{self.node.config_id} is {list(self.node.members)}); ask a member")
        client, seq, consistency, timeout = _envelope(request)
        body = request  # stripped in place (a third of the cost of a filtered copy): nothing reads the envelope again
        for key in ENVELOPE_KEYS:
            body.pop(key, None)
        if self._in_flight() >= MAX_IN_FLIGHT:
            raise BadRequest("UNAVAILABLE", f"node {self.node.pid} is overloaded: {MAX_IN_FLIGHT} requests in flight")
        write = self.validator.is_write(body)  # may refuse the request: before anything is tracked
        command = self.validator.prepare(body) if write else None
        if (write or consistency == "linearizable") and (self.status is None or self.status.leader == 0):
            raise BadRequest("UNAVAILABLE", "no leader has been elected yet; retry shortly")
        if not write and consistency == "local":  # answered by the Applier: nothing to track here
            self.local_sent += 1
            return self.local_reads.append((route, rid, body, time.monotonic() + timeout))
        req = self._track(route, rid, timeout)
        if write:
            entry = {"w": command, "o": self.node.pid, "i": self.node.incarnation, "r": req, "n": size}
            if client is not None:
                entry["cl"], entry["sq"] = client, seq
            self.proposals.append(entry)
        elif consistency == "leader":
            self._leader_read(req, body, timeout)
        else:
            self._linearizable_read(req, body, timeout)

    def _flush_proposals(self) -> None:
        """Hand over the gathered writes, then the gathered linearizable reads: a read's index then covers every
        write that arrived before it (and maybe some that arrived after it, which are concurrent with it
        anyway). Local reads go to the Applier in one tell (they are not ordered with anything)."""
        if self.proposals:
            entries, self.proposals = tuple(self.proposals), []
            self.node.sequence_paxos.tell(Propose(entries))
        if self.reads:
            reads, self.reads = tuple(self.reads), []
            self.node.sequence_paxos.tell(LinearizableReads(reads))
        if self.local_reads:
            local, self.local_reads = tuple(self.local_reads), []
            self.node.applier.tell(LocalQueries(local))

    def _in_flight(self) -> int:
        """Requests told to other actors and not answered yet: those the gateway tracks, plus the local reads
        the Applier has not answered (it only ever raises its count, so this errs on the high side)."""
        return len(self.pending) + self.local_sent - self.node.local_reads_answered

    def _track(self, route: tuple, rid, timeout: float, peer: Optional[tuple] = None) -> int:
        self.next_req += 1
        deadline = self.now + max(1, round(timeout / self.tick_seconds))
        self.pending[self.next_req] = Pending(deadline, route, rid, peer)
        due = self.deadlines.get(deadline)
        if due is None:
            self.deadlines[deadline] = [self.next_req]
        else:
            due.append(self.next_req)
        return self.next_req

    def _linearizable_read(self, req: int, body: dict, timeout: float) -> None:
        """The leader confirms it still leads (one round to a quorum, no log entry, no fsync) and answers from
        its state once that has caught up with its log; a follower forwards the read to the leader."""
        leader = self.status.leader
        if leader != self.node.pid:
            request = {**body, "consistency": "linearizable", "timeout": timeout}
            return self.node.outbox.send_node(leader, PeerRequest(self.node.pid, req, request))
        self.reads.append((req, body))

    def _leader_read(self, req: int, body: dict, timeout: float) -> None:
        status = self.status
        if status is not None and status.accepting:
            self.node.applier.tell(Query(req, body, min_applied=status.decided_idx))
        elif status is not None and status.leader not in (0, self.node.pid):
            self.node.outbox.send_node(status.leader, PeerRequest(self.node.pid, req, {**body, "timeout": timeout}))
        else:
            self._finish(req, _error("UNAVAILABLE", "no leader is known right now", None))

    def _serve_forwarded_read(self, msg: PeerRequest) -> None:
        status = self.status
        request = dict(msg.request)
        # The origin's envelope, carried along: the client's timeout holds here too (bad values: the default).
        timeout = request.pop("timeout", DEFAULT_TIMEOUT)
        if not _valid_timeout(timeout):
            timeout = DEFAULT_TIMEOUT
        if request.pop("consistency", None) == "linearizable":
            if status is None or status.leader != self.node.pid:
                reply = _error("UNAVAILABLE", f"node {self.node.pid} is not the leader", None)
                return self.node.outbox.send_node(msg.origin, PeerReply(msg.req, reply))
            req = self._track((), None, timeout, peer=(msg.origin, msg.req))
            self._linearizable_read(req, request, timeout)
            return self._flush_proposals()  # nothing else gathers it: this is not a client frame
        if status is None or not status.accepting:
            reply = _error("UNAVAILABLE", f"node {self.node.pid} is not the leader", None)
            self.node.outbox.send_node(msg.origin, PeerReply(msg.req, reply))
            return
        req = self._track((), None, timeout, peer=(msg.origin, msg.req))
        self.node.applier.tell(Query(req, request, min_applied=status.decided_idx))

    # ---- membership ----------------------------------------------------------------------------------

    def _membership_op(self, route: tuple, rid, op: str, request: dict) -> None:
        current = self.node.membership
        if op == "members":
            return self._send(route, _ok(self._members_result(current), rid))
        if self.node.removed:
            raise BadRequest("NOT_MEMBER", f"node {self.node.pid} was removed from the cluster; ask a member")
        try:
            members = plan_change(current, request.get("add", []), request.get("remove", []))
        except ValueError as exc:
            raise BadRequest("BAD_REQUEST", str(exc)) from None
        members = {p: Member(public_endpoint(m.peer), m.client) for p, m in members.items()}
        me = members.get(self.node.pid)
        if me is not None and not me.client:  # members started from flags know only their own client endpoint
            members[self.node.pid] = Member(me.peer, self.node.config.client)
        if set(members) == set(current.members):
            return self._send(route, _ok(self._members_result(current), rid))  # nothing to change (a retry)
        if self.status is None or self.status.leader == 0:
            raise BadRequest("UNAVAILABLE", "no leader has been elected yet; retry shortly")
        _, _, _, timeout = _envelope(request)
        req = self._track(route, rid, timeout)
        self.reconfigs[req] = (current.config_id + 1, frozenset(members))
        if self.proposals or self.reads:  # requests that arrived before this one go first (arrival order)
            self._flush_proposals()
        self.node.sequence_paxos.tell(Reconfigure(req, tuple(sorted(members)), to_metadata(members),
                                                  current.config_id + 1))

    def _config_changed(self, message: ConfigChanged) -> None:
        m = message.membership
        result = self._members_result(m)
        for req, (config_id, wanted) in list(self.reconfigs.items()):
            if config_id > m.config_id:
                continue
            del self.reconfigs[req]
            if wanted == set(m.members):
                self._finish(req, _ok(result, None))
            else:  # another change was decided first: ours was not, and is planned afresh on a retry
                self._finish(req, _error("UNAVAILABLE", f"another reconfiguration was decided first (configuration "
                                                        f"{m.config_id} is {list(m.pids)}); retry", None))

    def _members_result(self, m) -> dict:
        state = "removed" if self.node.pid not in m.members else "member"
        return {"config_id": m.config_id, "base": m.base, "state": state, "node": self.node.pid,
                "members": [[p, public_endpoint(x.peer), x.client] for p, x in sorted(m.members.items())],
                "previous": [[p, public_endpoint(x.peer), x.client] for p, x in sorted(m.previous.items())]}

    # ---- replies -------------------------------------------------------------------------------------

    def _finish(self, req: int, reply: dict) -> None:
        self.reconfigs.pop(req, None)
        pending = self.pending.pop(req, None)
        if pending is None:
            self.late_replies += 1  # it timed out already; the client was told TIMEOUT
            return
        if pending.peer is not None:
            origin, their_req = pending.peer
            self.node.outbox.send_node(origin, PeerReply(their_req, reply))
        else:
            reply["id"] = pending.rid  # every caller hands over a map of its own
            self._send(pending.route, reply)

    def _expire(self) -> None:
        # Each tick calls this once, and every deadline lies at least one tick ahead when set: so no bucket
        # is ever skipped.
        for req in self.deadlines.pop(self.now, ()):
            if req not in self.pending:
                continue  # answered in time
            self._finish(req, _error("TIMEOUT", "no outcome within the timeout; a write may still be applied "
                                                "(retry with the same client and seq)", None))

    def _send(self, route: tuple, reply: dict) -> None:
        if route:
            self.outgoing.append((route, self._pack(reply)))

    def _status_result(self) -> dict:
        s = self.status
        result = {"node": self.node.pid, "state_machine": self.node.state_machine_name,
                  "leader": 0, "role": "follower", "ballot": [0, 0, 0], "decided_idx": 0,
                  "config_id": self.node.config_id, "members": list(self.node.members)}
        if s is not None and not self.node.removed:
            result.update(leader=s.leader, role=s.role, ballot=[s.ballot.n, s.ballot.priority, s.ballot.pid],
                          decided_idx=s.decided_idx, config_id=s.config_id, members=list(s.members))
        if self.node.removed:
            result.update(role="removed", leader=0)
        return result


def _decode(body: bytes) -> dict:
    try:
        request = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise BadRequest("BAD_REQUEST", f"the frame is not msgpack: {type(exc).__name__}") from None
    if not isinstance(request, dict):
        raise BadRequest("BAD_REQUEST", "the frame must be a msgpack map")
    if not isinstance(request.get("op"), str):
        raise BadRequest("BAD_REQUEST", "the request needs an \"op\" string")
    if _depth_exceeds(request, MAX_DEPTH):
        raise BadRequest("BAD_REQUEST", f"values may nest at most {MAX_DEPTH} levels deep")
    return request


_CONTAINERS = frozenset({dict, list, tuple})  # what msgpack decodes to (exact types: no subclasses)


def _depth_exceeds(value, limit: int) -> bool:
    """True if containers nest deeper than ``limit`` (iterative: a deep value must not blow our stack).

    Runs on every request, so it checks exact types (cheaper than isinstance) and returns at once for the
    common flat request; map keys are never containers (msgpack cannot decode a list as a key)."""
    if type(value) is dict:
        for v in value.values():  # a plain loop: any() over a generator costs twice as much here
            if type(v) in _CONTAINERS:
                break
        else:
            return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        kind = type(item)
        if kind is dict:
            stack.extend((child, depth + 1) for child in item.values() if type(child) in _CONTAINERS)
            stack.extend((key, depth + 1) for key in item if type(key) is tuple)
        elif kind is list or kind is tuple:
            stack.extend((child, depth + 1) for child in item if type(child) in _CONTAINERS)
    return False


def _envelope(request: dict) -> tuple:
    client, seq = request.get("client"), request.get("seq")
    if (client is None) != (seq is None):
        raise BadRequest("BAD_REQUEST", "\"client\" and \"seq\" go together")
    if client is not None and (not isinstance(client, str) or not client or isinstance(seq, bool)
                               or not isinstance(seq, int) or seq < 0):
        raise BadRequest("BAD_REQUEST", "\"client\" must be a non-empty string and \"seq\" an integer >= 0")
    consistency = request.get("consistency", "linearizable")
    if consistency not in CONSISTENCY:
        raise BadRequest("BAD_REQUEST", f"\"consistency\" must be one of {', '.join(CONSISTENCY)}")
    timeout = request.get("timeout", DEFAULT_TIMEOUT)
    if not _valid_timeout(timeout):
        raise BadRequest("BAD_REQUEST", f"\"timeout\" must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    return client, seq, consistency, float(timeout)


def _valid_timeout(timeout) -> bool:
    return not isinstance(timeout, bool) and isinstance(timeout, (int, float)) and 0 < timeout <= MAX_TIMEOUT


def _ok(result, rid) -> dict:
    return {"ok": True, "result": result, "id": rid}


def _error(code: str, message: str, rid) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}, "id": rid}

