"""The Applier actor: applies the decided log to the state machine, in order, exactly once.

Log entries are msgpack maps made by a ClientGateway: a write ``{"w": command, "o": origin node, "r":
request number, "i": the origin's incarnation, "cl"?: client, "sq"?: seq}`` or a linearizable read
``{"q": request, "o", "i", "r"}`` that
answers at its place in the log. Every node applies every entry; the node named by ``"o"`` answers its
client. Retries are deduplicated by `Sessions`, which is part of the replicated state: built only from
the log in log order, so every node holds the same table and a retry sent to another node after a
failover is recognised too. A state machine that persists itself is not replayed below its
``applied_index`` after a restart, so an in-memory table would come back empty and a retry would be
applied twice; such a machine declares ``keeps_sessions`` and keeps the table itself, written in the same
transaction as each command (statemachines/base.py), with the same window as `Sessions`. Queries at the
`local` and `leader` levels are answered from the current state once at least ``min_applied`` entries are
applied.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from omni.paxos import DecidedEntries, DecidedSnapshot, StopSign
from omni.statemachines import StateMachine, StateMachineError
from omni.statemachines.base import SESSION_CLIENTS, SESSION_SEQS, session_too_old

from .messages import Apply, Query, Reply
from .supervision import SupervisedActor

log = logging.getLogger("omni.applier")

INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)

SEQS_PER_CLIENT = SESSION_SEQS
MAX_CLIENTS = SESSION_CLIENTS


class Sessions:
    """Per client, the results of its last SEQS_PER_CLIENT writes; deterministic, so replicated alike."""

    def __init__(self, seqs_per_client: int = SEQS_PER_CLIENT, max_clients: int = MAX_CLIENTS) -> None:
        self.seqs_per_client, self.max_clients = seqs_per_client, max_clients  # smaller only in tests
        self.clients: OrderedDict[str, OrderedDict] = OrderedDict()
        self.floor: dict[str, int] = {}

    def lookup(self, client: str, seq: int):
        """The stored result of (client, seq); raises StateMachineError for a seq too old to know."""
        seqs = self.clients.get(client)
        if seqs is not None and seq in seqs:
            return seqs[seq]
        if seq < self.floor.get(client, 0):
            raise session_too_old(client, seq)
        return None

    def record(self, client: str, seq: int, result: tuple) -> None:
        seqs = self.clients.setdefault(client, OrderedDict())
        self.clients.move_to_end(client)
        seqs[seq] = result
        while len(seqs) > self.seqs_per_client:
            old, _ = seqs.popitem(last=False)
            self.floor[client] = max(self.floor.get(client, 0), old + 1)
        while len(self.clients) > self.max_clients:
            gone, _ = self.clients.popitem(last=False)
            self.floor.pop(gone, None)


class ApplierActor(SupervisedActor):
    def __init__(self, node, state_machine: StateMachine):
        super().__init__(node)
        self.sm = state_machine
        self.applied = state_machine.applied_index
        self.sessions = Sessions()
        self.waiting: list[Query] = []

    def on_receive(self, message):
        if isinstance(message, Apply):
            for item in message.items:
                self._apply_item(item)
            self._answer_waiting()
        elif isinstance(message, Query):
            if message.min_applied <= self.applied:
                self._answer(message)
            else:
                self.waiting.append(message)

    def _apply_item(self, item) -> None:
        if isinstance(item, DecidedSnapshot):
            if item.idx > self.applied:
                raise RuntimeError(f"entries below {item.idx} were compacted before this node applied them "
                                   f"(applied {self.applied}); state transfer is needed")
            return
        assert isinstance(item, DecidedEntries)
        for offset, entry in enumerate(item.entries):
            idx = item.start + offset
            if idx >= self.applied:
                self._apply_entry(idx, entry)
                self.applied = idx + 1

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
            outcome = self._run(lambda: self.sm.query(entry["q"]))
        elif "w" in entry:
            outcome = self._apply_write(idx, entry)
        else:
            log.error("skipping entry %d without a command: %r", idx, entry)
            return
        if self._mine(entry):
            self.node.gateway.tell(Reply(entry["r"], *outcome))

    def _mine(self, entry: dict) -> bool:
        """Proposed by this very process: entries replayed from an earlier life of this node answer no one."""
        node = self.node
        return entry.get("o") == node.pid and entry.get("i") == node.incarnation and isinstance(entry.get("r"), int)

    def _apply_write(self, idx: int, entry: dict) -> tuple:
        client, seq = entry.get("cl"), entry.get("sq")
        if not (isinstance(client, str) and isinstance(seq, int)):
            return self._run(lambda: self.sm.apply(idx, entry["w"]))
        if self.sm.keeps_sessions:  # looked up, applied and recorded in one transaction of the machine
            return self._run(lambda: self.sm.apply(idx, entry["w"], session=(client, seq)))
        try:
            known = self.sessions.lookup(client, seq)
        except StateMachineError as exc:
            return (False, None, exc.code, exc.message)
        if known is not None:
            return known
        outcome = self._run(lambda: self.sm.apply(idx, entry["w"]))
        self.sessions.record(client, seq, outcome)
        return outcome

    @staticmethod
    def _run(call) -> tuple:
        """Run one command or query; a failure the input causes becomes an error reply, never a crash.

        A decided entry is applied by every replica, and again after each restart: if bad input could kill
        the Applier, one request would take down the whole cluster for good. Input errors are deterministic
        (same input, same state, same error everywhere), so answering them keeps replicas identical.
        Anything else (a disk failure, say) still stops the node.
        """
        try:
            return (True, call(), "", "")
        except StateMachineError as exc:
            return (False, None, exc.code, exc.message)
        except INPUT_ERRORS as exc:
            return (False, None, "BAD_REQUEST", f"cannot apply this request: {type(exc).__name__}: {exc}"[:500])

    def _answer(self, query: Query) -> None:
        self.node.gateway.tell(Reply(query.req, *self._run(lambda: self.sm.query(query.request))))

    def _answer_waiting(self) -> None:
        if self.waiting:
            ready = [q for q in self.waiting if q.min_applied <= self.applied]
            self.waiting = [q for q in self.waiting if q.min_applied > self.applied]
            for query in ready:
                self._answer(query)

    def release(self) -> None:
        super().release()
        self.sm.close()
