"""The Storage actor: makes Ready batches durable with group commit, then releases what they vouch for.

Every Ready from SequencePaxos is queued; when the mailbox is empty (or MAX_PENDING_BATCHES are
queued) the actor writes all queued write groups in one transaction with one fsync, and only then (DESIGN.md rules 1-3) sends the batches' messages
(a message to this node itself goes back to SequencePaxos: the leader's own Accepted) and hands the
decided items to the Applier, in order. A storage failure is fatal (rule 5): the exception reaches
`on_failure`, which stops the node; nothing is retried.
"""
from __future__ import annotations

import logging
import os

from .messages import Apply, Inbound, Persist, SwitchLog
from .supervision import SupervisedActor

log = logging.getLogger("omni.storage")

#: TEST-ONLY: set to "1" to skip every log write while still acknowledging (breaks durability rules 1-4
#: on purpose). It exists so the fault-injection harness can prove that it catches lost writes
#: (tests/jepsen/test_planted_anomaly.py). Never set it anywhere else.
UNSAFE_ENV = "OMNI_TEST_UNSAFE_SKIP_LOG_WRITES"

MAX_PENDING_BATCHES = 64  # Ready batches per commit at most, so a busy mailbox still commits regularly


class StorageActor(SupervisedActor):
    def __init__(self, node, store):
        super().__init__(node)
        self.store = store
        self.pending: list = []
        self.commits = 0
        self.unsafe_skip_writes = os.environ.get(UNSAFE_ENV) == "1"
        if self.unsafe_skip_writes:
            log.warning("UNSAFE: %s=1: log writes are skipped, acknowledged writes WILL be lost on a crash",
                        UNSAFE_ENV)

    def on_receive(self, message):
        if isinstance(message, Persist):
            self.pending.append(message)
        elif isinstance(message, SwitchLog):
            self._switch(message.store)
        if self.pending and (len(self.pending) >= MAX_PENDING_BATCHES or self.actor_inbox.empty()):
            self._flush()

    def _flush(self) -> None:
        batches, self.pending = self.pending, []
        groups = [group for p in batches for group in p.ready.writes]
        if groups and not self.unsafe_skip_writes:
            self.store.write(groups)
            self.commits += 1
        node = self.node
        for p in batches:
            for env in p.ready.messages:
                if env.dst == node.pid:
                    node.sequence_paxos.tell(Inbound(env))
                else:
                    node.outbox.send_core(env)
            if p.ready.decided:
                node.applier.tell(Apply(tuple(p.ready.decided), p.base))

    def _switch(self, store) -> None:
        """A new configuration: what the old core still produced goes to the old log, then the new log
        takes over and the old one is deleted (its StopSign is decided and applied: nothing needs it)."""
        if self.pending:
            self._flush()
        old, self.store = self.store, store
        old.close()
        old.destroy()

    def release(self) -> None:
        super().release()
        self.store.close()
