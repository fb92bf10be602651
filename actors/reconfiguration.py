"""Live reconfiguration in the node: starting the next configuration when a StopSign is decided.

OmniPaxos ends a configuration by deciding a StopSign; starting the next one is the host's job
(reference/omnipaxos.md section 5). Here:
- The StopSign's metadata lists the next members with their peer and client endpoints
  (actors/membership.py). When the Applier applies it, it snapshots the state at exactly that point and
  calls `ConfigManager.decided`: membership.json is written (durably, first), the transport's peer links
  follow the new member list, and a member gets fresh cores for the new configuration with an empty log
  (``log-c<id>.db``; the SequencePaxos actor tells Storage to switch logs in order, and the old log is
  deleted). The new configuration's log index 0 is global index ``base``: the state machine and the
  snapshots count in global indexes, so nothing is applied twice or skipped across the change.
- A node that is not in the new member set is *removed*: its cores stop, its gateway answers NOT_MEMBER,
  `omni status` / `omni cluster members` say so, and membership.json keeps it that way across restarts.
- A node that never saw the StopSign decided (a new member, or an old member that lagged) learns of the
  new configuration from its traffic: a core message with a higher configuration id makes it ask that
  peer for its membership, and a message with a lower id from a member makes us tell that peer ours. A
  member of the newer configuration adopts it with whatever state it has; its Applier sees the new log
  start beyond its applied index and fetches a snapshot (the one every member took at the StopSign, or a
  newer one) from a peer before applying anything (actors/snapshots.py). This is safe because a
  configuration only starts after its predecessor's StopSign is decided.
- `omni node start --join ENDPOINT`: a node with no membership.json asks the cluster (client op
  ``members``) until a configuration includes it, then starts as a member of it, as above.
All of this runs on whichever thread calls it (Applier, transport); a lock serialises it.
"""
from __future__ import annotations

import logging
import threading
import time
from omni.paxos import BallotLeaderElection, PaxosConfig, SequencePaxos

from . import membership as ms
from .log_store import SQLiteLogStore
from .messages import ConfigChanged, PeerReply, PeerRequest, SwitchConfig
from .snapshots import MarkerSnapshotter

log = logging.getLogger("omni.reconfiguration")

MEMBERS_OP = "_omni.members"
HINT_INTERVAL = 1.0  # seconds between membership questions/hints to one peer


def entry_size(entry) -> int:
    """A log entry's size on the wire, for batching: the gateway records its request frame's size in "n"."""
    return (entry.get("n", 0) if isinstance(entry, dict) else 0) + 64


class ConfigManager:
    """Owns the node's membership: loading it, starting configurations, learning newer ones."""

    def __init__(self, node):
        self.node = node
        self._lock = threading.Lock()
        self._last_hint: dict[int, float] = {}

    # ---- start ------------------------------------------------------------------------------------------

    def load_or_join(self) -> ms.Membership:
        cfg = self.node.config
        found = ms.load(cfg.data_dir)
        if found is not None:
            if found.config_id != cfg.config_id or set(found.pids) != set(cfg.members):
                log.info("running configuration %d from %s (members %s), not the one on the command line",
                         found.config_id, cfg.data_dir / ms.FILE_NAME, list(found.pids))
            return found
        if cfg.join:
            found = wait_to_join(cfg)
        else:
            found = ms.initial(cfg.pid, cfg.listen, cfg.client, cfg.peers, cfg.config_id)
        ms.save(cfg.data_dir, found)
        return found

    def open_log(self, membership: ms.Membership) -> SQLiteLogStore:
        cfg = self.node.config
        # The name follows from the durable membership alone, never from command-line flags: a member
        # restarted with a different --join (or config id) must reopen its own log, not a fresh empty one
        # (that would forget its promise and accepted entries). base 0 is exactly the first configuration,
        # built from flags; every later one starts after a StopSign, so its base is at least 1.
        name = "log.db" if membership.base == 0 else f"log-c{membership.config_id}.db"
        return SQLiteLogStore(cfg.data_dir / name)

    def build_cores(self, membership: ms.Membership, state):
        """Sequence Paxos and BLE for this node in ``membership`` (None, None when it is not a member)."""
        node, cfg = self.node, self.node.config
        if node.pid not in membership.members:
            return None, None
        # The core's snapshots are markers; the state itself is in the Applier's files (actors/snapshots.py).
        # A snapshotter is set even with snapshots off: a peer may still sync this node with a snapshot.
        paxos = SequencePaxos(PaxosConfig(node.pid, membership.pids, config_id=membership.config_id,
                                          resend_ticks=cfg.resend_ticks, entry_size=entry_size,
                                          snapshotter=MarkerSnapshotter()), state, incarnation=node.incarnation)
        ble = BallotLeaderElection(node.pid, list(membership.pids), config_id=membership.config_id,
                                   priority=cfg.priority, election_ticks=cfg.election_ticks,
                                   recovered_promise=state.promise)
        return paxos, ble

    # ---- moving on --------------------------------------------------------------------------------------

    def decided(self, stopsign, base: int) -> None:
        """The StopSign of the current configuration is applied: start the one it names."""
        try:
            nxt = ms.Membership(stopsign.config_id, ms.from_metadata(stopsign.metadata), base,
                                self.node.membership.members)
            if set(nxt.pids) != set(stopsign.nodes):
                raise ValueError(f"metadata names {list(nxt.pids)}, the StopSign {list(stopsign.nodes)}")
        except (ValueError, TypeError) as exc:  # only our gateway proposes StopSigns: this is a bug
            self.node.fatal(f"decided StopSign for configuration {stopsign.config_id} is unusable: {exc}")
            return
        self.adopt(nxt)

    def adopt(self, nxt: ms.Membership) -> None:
        node = self.node
        with self._lock:
            if nxt.config_id <= node.membership.config_id:
                return
            ms.save(node.config.data_dir, nxt)  # durable before anything acts on it
            node.membership, node.members, node.config_id = nxt, nxt.pids, nxt.config_id
            node.outbox.set_peers(nxt.links_of(node.pid))
            removed = node.pid not in nxt.members
            node.removed = removed
            if removed:
                node.sequence_paxos.tell(SwitchConfig(None))
                node.ble.tell(SwitchConfig(None))
                log.warning("node %d is not a member of configuration %d (%s): it stops serving", node.pid,
                            nxt.config_id, list(nxt.pids))
            else:
                store = self.open_log(nxt)
                paxos, ble = self.build_cores(nxt, store.load())
                node.sequence_paxos.tell(SwitchConfig(paxos, store, nxt.base))
                node.ble.tell(SwitchConfig(ble))
                log.info("node %d runs configuration %d: members %s, log starts at global index %d", node.pid,
                         nxt.config_id, list(nxt.pids), nxt.base)
            node.gateway.tell(ConfigChanged(nxt, removed))

    # ---- learning of other configurations ---------------------------------------------------------------

    def current(self, env) -> bool:
        """True for traffic of our configuration; otherwise ask or tell the sender about membership."""
        ours = self.node.membership.config_id
        if env.config_id == ours:
            return True
        if self._may_hint(env.src):
            if env.config_id > ours:
                self.node.outbox.send_node(env.src, PeerRequest(self.node.pid, 0, {"op": MEMBERS_OP}))
            else:
                self._tell(env.src, 0)
        return False

    def on_node_message(self, message) -> bool:
        """Membership questions and answers between nodes; True if it was one."""
        if isinstance(message, PeerRequest) and message.request.get("op") == MEMBERS_OP:
            self._tell(message.origin, message.req)
            return True
        if isinstance(message, PeerReply) and MEMBERS_OP in message.reply:
            try:
                nxt = ms.Membership.from_json(message.reply[MEMBERS_OP])
            except (ValueError, TypeError, KeyError) as exc:
                log.debug("ignored a malformed membership from a peer: %s", exc)
                return True
            if nxt.config_id > self.node.membership.config_id:
                log.info("learned of configuration %d from a peer", nxt.config_id)
                self.adopt(nxt)
            return True
        return False

    def _tell(self, pid: int, req: int) -> None:
        self.node.outbox.send_node(pid, PeerReply(req, {MEMBERS_OP: self.node.membership.to_json()}))

    def _may_hint(self, pid: int) -> bool:
        now = time.monotonic()
        if now - self._last_hint.get(pid, 0.0) < HINT_INTERVAL:
            return False
        self._last_hint[pid] = now
        return True


def wait_to_join(cfg) -> ms.Membership:
    """Ask the cluster at ``cfg.join`` for its configuration until one includes this node."""
    from omni.client import Client, OmniError, Unavailable

    announced = False
    while True:
        try:
            with Client(cfg.join, timeout=2.0, retries=1) as client:
                found = ms.Membership.from_json(client.members())
        except (OmniError, Unavailable, ValueError, KeyError, TypeError) as exc:
            log.info("node %d: cannot learn the configuration from %s yet (%s)", cfg.pid, cfg.join, exc)
            found = None
        if found is not None and cfg.pid in found.members:
            mine = found.members[cfg.pid]
            if ms.public_endpoint(mine.peer) != ms.public_endpoint(cfg.listen):
                raise ValueError(f"configuration {found.config_id} has node {cfg.pid} at {mine.peer}, "
                                 f"but this node listens on {cfg.listen}")
            log.info("node %d joins configuration %d (members %s)", cfg.pid, found.config_id, list(found.pids))
            return found
        if not announced and found is not None:
            log.warning("node %d waits to be added: run `omni cluster reconfigure --add %d=%s,%s` against the "
                        "cluster", cfg.pid, cfg.pid, cfg.listen, cfg.client)
            announced = True
        time.sleep(1.0)
