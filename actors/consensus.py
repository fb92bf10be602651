"""The two consensus actors: thin shells around the protocol cores in `omni.paxos`.

`SequencePaxosActor` feeds its core everything that arrives (peer messages, proposals, ticks, leader
ballots, reconnects) and drains the core's `Ready` only when its mailbox is empty: under load many
proposals are folded into one batch (one AcceptDecide per follower, one storage transaction), and when the
node is idle each proposal goes out at once. The Ready's early messages (replication traffic that vouches
for nothing on this disk) are sent at once; the rest goes to the Storage actor, which alone may release
its messages and decisions (after fsync). Linearizable reads (`LinearizableReads`) are registered with the
core, which confirms them with a quorum round (paxos/reads.py); a confirmed read goes to the Applier with the
index it must wait for, a refused or failed one back to the gateway as UNAVAILABLE. `BleActor` runs
Ballot Leader Election on its own thread, so heartbeats are answered promptly however busy replication is;
heartbeats need no persistence and go straight to the transport.
"""
from __future__ import annotations

import logging


from omni.paxos import BallotLeaderElection, CompactionError, ProposalRejected, SequencePaxos

from .messages import (
    CompactLog, Inbound, LeadWith, LinearizableReads, NodeStatus, Persist, PromiseChanged, Propose, Queries, Query,
    Reconfigure, Reconnected, Reply, SwitchConfig, SwitchLog, Tick,
)
from .supervision import SupervisedActor

log = logging.getLogger("omni.consensus")

MAX_BATCH_MESSAGES = 512  # inputs folded into one Ready at most


class SequencePaxosActor(SupervisedActor):
    def __init__(self, node, core: SequencePaxos, base: int = 0):
        super().__init__(node)
        self.core: SequencePaxos | None = core  # None: this node was removed from the cluster
        self.base = base  # global index of this configuration's log index 0
        self._status = None
        self._promise = None
        self._leading = False  # as last logged (kept across configurations)
        self._since_drain = 0
        self._reads: dict[int, dict] = {}  # linearizable reads the core is confirming: request number -> request

    def on_receive(self, message):
        if isinstance(message, SwitchConfig):
            self._switch(message)
        elif self.core is None:
            if isinstance(message, Propose):
                self._reject(message.entries, "NOT_MEMBER", f"node {self.node.pid} is no longer a member")
            elif isinstance(message, LinearizableReads):
                for req, _ in message.reads:
                    self._refuse(req, "NOT_MEMBER", f"node {self.node.pid} is no longer a member")
            return
        else:
            self._handle(message)
        self._since_drain += 1
        # Drain when idle (so a lone request goes out at once) or after a full batch (so a mailbox that
        # never empties under sustained load cannot hold everything back).
        if self.core is not None and (self._since_drain >= MAX_BATCH_MESSAGES or self.actor_inbox.empty()):
            self._since_drain = 0
            self._drain()

    def _handle(self, message) -> None:
        core = self.core
        if isinstance(message, Inbound):
            core.handle(message.env)
        elif isinstance(message, Propose):
            self._propose(message.entries)
        elif isinstance(message, LinearizableReads):
            for req, request in message.reads:
                self._read(req, request)
        elif isinstance(message, Tick):
            core.tick()
        elif isinstance(message, LeadWith):
            core.handle_leader(message.ballot)
        elif isinstance(message, Reconnected):
            core.reconnected(message.pid)
        elif isinstance(message, CompactLog):
            self._compact(message.idx - self.base)
        elif isinstance(message, Reconfigure):
            self._reconfigure(message)
        else:
            log.warning("SequencePaxosActor ignored %r", message)

    def _switch(self, message: SwitchConfig) -> None:
        """The configuration ended (its StopSign is decided and applied here): run the next one, or none."""
        if self.core is not None:
            self._drain()  # what the old core still has goes to the old log
        for req in self._reads:  # the old core's unconfirmed reads die with it
            self._refuse(req, "UNAVAILABLE", "the configuration changed; retry")
        self._reads.clear()
        if message.store is not None:
            self.node.storage.tell(SwitchLog(message.store))
        self.core, self.base = message.core, message.base
        self._status = self._promise = None
        if self.core is not None:
            self._drain()

    def _propose(self, entries) -> None:
        try:
            self.core.propose(entries)
        except ProposalRejected as exc:
            self._reject(entries, "UNAVAILABLE", f"{exc}; retry shortly")

    def _read(self, req: int, request: dict) -> None:
        try:
            self.core.read(req)
        except ProposalRejected as exc:  # ReadRejected: not the leader in the Accept phase (any more)
            return self._refuse(req, "UNAVAILABLE", f"{exc}; retry shortly")
        self._reads[req] = request

    def _refuse(self, req: int, code: str, message: str) -> None:
        self.node.gateway.tell(Reply(req, False, code=code, message=message))

    def _reject(self, entries, code: str, message: str) -> None:
        for entry in entries:
            if isinstance(entry, dict) and entry.get("o") == self.node.pid and isinstance(entry.get("r"), int):
                self._refuse(entry["r"], code, message)

    def _reconfigure(self, message: Reconfigure) -> None:
        try:
            self.core.reconfigure(message.nodes, metadata=message.metadata, config_id=message.config_id)
        except (ProposalRejected, ValueError) as exc:
            self._refuse(message.req, "UNAVAILABLE", str(exc))

    def _compact(self, idx: int) -> None:
        """Local only: each node compacts behind its own durable snapshot file (actors/snapshots.py)."""
        if idx <= 0:
            return  # the file is from an earlier configuration: this log has nothing below it
        try:
            self.core.snapshot(idx, local_only=True)
        except CompactionError as exc:  # the file is ahead of what this node has decided (a pulled snapshot)
            log.debug("log not compacted to %d: %s", idx, exc)

    def _drain(self) -> None:
        ready = self.core.take_ready()
        for env in ready.early:  # replication traffic: out now, so followers fsync while we do
            self.node.outbox.send_core(env)
        if ready.writes or ready.messages or ready.decided:
            self.node.storage.tell(Persist(ready, self.base))
        self._release_reads(ready)
        self._publish()

    def _release_reads(self, ready) -> None:
        """Confirmed reads go to the Applier, which answers once it has applied their index (it only applies
        decided entries, in order); reads the core could not confirm are refused with a retryable error."""
        confirmed = []
        for req, idx in ready.reads:
            request = self._reads.pop(req, None)
            if request is not None:
                confirmed.append(Query(req, request, min_applied=self.base + idx))
        if confirmed:
            self.node.applier.tell(Queries(tuple(confirmed)))
        for req in ready.failed_reads:
            if self._reads.pop(req, None) is not None:
                self._refuse(req, "UNAVAILABLE", f"node {self.node.pid} could not confirm with a quorum that it "
                                                      "still leads (deposed, or cut off); retry")

    def _publish(self) -> None:
        core = self.core
        if core.promise != self._promise:
            self._promise = core.promise
            self.node.ble.tell(PromiseChanged(core.promise))
        status = NodeStatus(leader=core.leader(), role=core.role.value, ballot=core.promise,
                            decided_idx=self.base + core.decided_idx, config_id=core.cfg.config_id,
                            members=core.nodes, accepting=core.leader_has_caught_up())
        if status != self._status:
            leading = status.leader == self.node.pid
            if leading != self._leading:  # elections, for operators: one line per change (not per configuration)
                self._leading = leading
                ballot = f"{status.ballot.n},{status.ballot.priority},{status.ballot.pid}"
                if not leading:
                    log.info("no longer the leader (ballot %s; leader now %s)", ballot, status.leader or "unknown")
                else:
                    log.info("now the leader (ballot %s)", ballot)
            self._status = status
            self.node.gateway.tell(status)


class BleActor(SupervisedActor):
    def __init__(self, node, core: BallotLeaderElection):
        super().__init__(node)
        self.core = core

    def on_receive(self, message):
        if isinstance(message, SwitchConfig):
            self.core = message.core  # None: removed, nothing to elect any more
            return
        core = self.core
        if core is None:
            return
        if isinstance(message, Inbound):
            core.handle(message.env)
        elif isinstance(message, Tick):
            ballot = core.tick()
            if ballot is not None:
                self.node.sequence_paxos.tell(LeadWith(ballot))
        elif isinstance(message, PromiseChanged):
            core.observe_promise(message.ballot)
        for env in core.take_outgoing():
            self.node.outbox.send_core(env)
