"""A node's state in one log record, for operators and for hunting liveness bugs: `kill -USR1 <pid>`.

The dump is taken from the signal handler in the main thread while the actors keep running, so it reads
their state without locks: a field may be a moment out of date, which is fine for a picture of a wedged
node (nothing here changes state). Anything that cannot be read is shown as an error, never raised.
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger("omni.diagnostics")


def dump(node) -> str:
    """One JSON object describing the node: protocol cores, mailboxes, transport counters."""
    parts = {}
    for name, fn in (("sequence_paxos", _sequence_paxos), ("ble", _ble), ("mailboxes", _mailboxes),
                     ("transport", _transport)):
        try:
            parts[name] = fn(node)
        except Exception as exc:  # a racing actor changed something mid-read: say so and go on
            parts[name] = f"unavailable: {exc!r}"
    return json.dumps(parts, default=repr, sort_keys=True)


def log_dump(node) -> None:
    log.warning("node %d state: %s", node.pid, dump(node))


def _core(ref):
    actor = ref._actor_weakref()  # pykka keeps the actor behind a weak reference; read-only use here
    if actor is None:
        raise RuntimeError("actor is gone")
    return actor.core


def _sequence_paxos(node) -> dict:
    core = _core(node.sequence_paxos)
    lg = core.log
    out = {
        "role": core.role.value, "phase": core.phase.name, "promise": lg.promise,
        "accepted_round": lg.accepted_round, "accepted_idx": lg.accepted_idx, "decided_idx": lg.decided_idx,
        "log_len": lg.log_len, "compacted_idx": lg.compacted_idx, "current_seq": core.current_seq,
        "cached_promise": core.cached_promise is not None, "pending_proposals": len(core.pending_proposals),
        "stats": dict(core.stats),
    }
    ls = core.leader_state
    if ls is not None:
        out["leader"] = {
            "n": ls.n, "promised": sorted(ls.promises), "promised_higher": sorted(ls.promised_higher),
            "seqs": {str(p): s for p, s in ls.seqs.items()}, "accepted": {str(p): a for p, a in ls.accepted.items()},
            "adopted_idx": ls.adopted_idx, "buffered": len(ls.buffer),
        }
    return out


def _ble(node) -> dict:
    core = _core(node.ble)
    return {"ballot": core.ballot, "leader": core.leader, "happy": core.happy, "promise": core.promise,
            "hb_round": core.hb_round, "replies": len(core.replies), "stats": dict(core.stats)}


def _mailboxes(node) -> dict:
    return {ref.actor_class.__name__: ref.actor_inbox.qsize() for ref in node._actors}


def _transport(node) -> dict:
    return dict(node.transport.stats)
