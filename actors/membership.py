"""Which configuration a node runs, kept in one small file beside the log: ``membership.json``.

A configuration is an id, its members with their peer and client addresses, and ``base``: the global
log index at which its own log (which starts at index 0, as in OmniPaxos) begins. Global index = base +
local index; the Applier and the state machine count in global indexes, so a configuration change never
makes an applied index ambiguous.

Rules:
- The file is written only after the StopSign that ends the previous configuration is decided and
  applied (so it is durable in every member's log before anyone moves on), atomically: temp file, fsync,
  rename, fsync of the directory. A crash leaves either the old file or the new one.
- A node whose id is not in the newest configuration it knows is *removed*: it keeps the file (so a
  restart does not resurrect it) and answers clients with a clear error instead of serving.
- The file is absent on a node started from flags for the first time; `initial()` builds configuration 1
  (or the id given) from the command line.
- StopSign metadata is this module's `to_metadata()` form, msgpack-friendly (lists and str/int only).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

FILE_NAME = "membership.json"


@dataclass(frozen=True)
class Member:
    """One node of a configuration: where peers and clients reach it."""

    peer: str
    client: str = ""


@dataclass(frozen=True)
class Membership:
    """One configuration: id, members, and the global index its log starts at."""

    config_id: int
    members: dict = field(default_factory=dict)  # pid -> Member
    base: int = 0
    #: the previous configuration's members: still linked, so a member that missed the change can be told
    #: of it, and new members can fetch the state at the StopSign from nodes that were there
    previous: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config_id <= 0 or self.base < 0:
            raise ValueError("config_id must be positive and base non-negative")
        if not self.members or any(not isinstance(p, int) or p <= 0 for p in self.members):
            raise ValueError(f"members must be positive integer ids, got {sorted(self.members)!r}")

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(sorted(self.members))

    def peers_of(self, pid: int) -> dict[int, str]:
        """The peer addresses ``pid`` connects to in this configuration."""
        return {p: m.peer for p, m in self.members.items() if p != pid}

    def links_of(self, pid: int) -> dict[int, str]:
        """Peers of this configuration and of the previous one (current addresses win)."""
        return {**{p: m.peer for p, m in self.previous.items() if p != pid}, **self.peers_of(pid)}

    def next(self, metadata, stopsign_idx: int, config_id: int, nodes) -> "Membership":
        """The configuration a decided StopSign (at local index ``stopsign_idx``) starts."""
        members = from_metadata(metadata)
        if set(members) != set(nodes):
            raise ValueError(f"StopSign metadata names {sorted(members)} but its nodes are {sorted(nodes)}")
        return Membership(config_id, members, self.base + stopsign_idx + 1, dict(self.members))

    def to_json(self) -> dict:
        out = {"config_id": self.config_id, "base": self.base, "members": to_metadata(self.members)}
        if self.previous:
            out["previous"] = to_metadata(self.previous)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Membership":
        previous = data.get("previous")
        return cls(int(data["config_id"]), from_metadata(data["members"]), int(data.get("base", 0)),
                   from_metadata(previous) if previous else {})


def plan_change(current: Membership, add, remove) -> dict:
    """The member set after adding ``add`` ([id, peer, client] lists) and removing ``remove`` (ids).

    ValueError (the client's mistake) for malformed input, an id both added and removed, an added id that
    is already a member at other addresses, or an empty result. Adding a member again at the same
    addresses and removing a non-member change nothing, so a retried request is harmless.
    """
    if not isinstance(add, (list, tuple)) or not isinstance(remove, (list, tuple)):
        raise ValueError("add must be a list of [id, peer, client] and remove a list of ids")
    adding = from_metadata(add) if add else {}
    if any(not isinstance(p, int) or isinstance(p, bool) or p <= 0 for p in remove):
        raise ValueError(f"remove must list positive integer ids, got {remove!r}")
    both = set(adding) & set(remove)
    if both:
        raise ValueError(f"node(s) {sorted(both)} both added and removed")
    members = dict(current.members)
    for pid, member in adding.items():
        if pid in members and members[pid].peer != member.peer:
            raise ValueError(f"node {pid} is already a member at {members[pid].peer}; remove it first")
        if not member.peer or not member.client:
            raise ValueError(f"node {pid} needs both a peer and a client endpoint")
        members[pid] = member
    for pid in remove:
        members.pop(pid, None)
    if not members:
        raise ValueError("a configuration needs at least one member")
    if not set(members) & set(current.members):
        # New members fetch the state at the StopSign from the members they know, which are the new
        # configuration's only (the transport links no others): with no current member left, none has it
        # and the new configuration would decide entries but never apply one. Replace in two steps.
        raise ValueError("at least one current member must stay (replace the members in two steps)")
    return members


def public_endpoint(address: str) -> str:
    """An endpoint without a ZeroMQ source-address part ("tcp://src:0;host:port" -> "tcp://host:port"):
    what other nodes connect to, whatever address this node binds its own connections from."""
    scheme, sep, rest = address.partition("://")
    return f"{scheme}{sep}{rest.split(';')[-1]}" if sep else address


def to_metadata(members: dict) -> list:
    """Members as StopSign metadata: [[pid, peer, client], ...] sorted by pid."""
    return [[pid, m.peer, m.client] for pid, m in sorted(members.items())]


def from_metadata(data) -> dict:
    """Inverse of `to_metadata`; ValueError on anything else (it may come from a peer)."""
    if not isinstance(data, (list, tuple)) or not data:
        raise ValueError("membership metadata must be a non-empty list")
    members = {}
    for item in data:
        if not (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], int) and item[0] > 0
                and isinstance(item[1], str) and isinstance(item[2], str)):
            raise ValueError(f"bad member entry {item!r}")
        members[item[0]] = Member(item[1], item[2])
    return members


def load(data_dir: Path) -> Optional[Membership]:
    path = Path(data_dir) / FILE_NAME
    if not path.exists():
        return None
    return Membership.from_json(json.loads(path.read_text()))


def save(data_dir: Path, membership: Membership) -> None:
    """Write durably and atomically (see the module rules)."""
    data_dir = Path(data_dir)
    tmp = data_dir / (FILE_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(membership.to_json(), f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, data_dir / FILE_NAME)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def initial(pid: int, listen: str, client: str, peers: dict[int, str], config_id: int = 1) -> Membership:
    """Configuration from the command line (peers' client addresses are not known there)."""
    members = {p: Member(a) for p, a in peers.items()}
    members[pid] = Member(listen, client)
    return Membership(config_id, members, 0)
