"""The one interface every Omni state machine implements.

The decided log is applied to exactly one `StateMachine` per node, in log order, exactly once. A command
is a msgpack-compatible dict with an ``"op"`` key and the op's arguments (the client request without the
envelope keys ``id``, ``client``, ``seq``, ``consistency``, ``timeout``), plus whatever the proposing node
stamped into it (``"stamp"``: values such as the time or a random seed, so replicas stay deterministic).

Rules:
- ``apply`` is deterministic: the same commands in the same order give the same results and state on every
  node. It must not read clocks, randomness or anything outside the command and the current state.
- A command that fails for a reason every replica sees alike (bad SQL, a constraint) raises
  `StateMachineError`; the node applies nothing for it and answers the client with that error.
- A state machine that keeps its own files stores the index it applied in the same transaction as the
  command (DESIGN.md rule 6), and reports it through ``applied_index`` after a restart.
- Exactly-once retries (PROTOCOL.md section 6) need the client-session table: per client, the outcomes of
  its last `SESSION_SEQS` writes, a floor below which a seq is too old to tell, at most `SESSION_CLIENTS`
  clients (the least recently written-to forgotten first). By default the node's Applier keeps it in
  memory, writes it into its snapshot files next to ``snapshot()`` and restores it with ``restore()``
  (actors/snapshots.py), and rebuilds the rest by replaying the log after the snapshot: right for a
  state machine that lives in memory too. A state machine that persists its state and is not replayed below its ``applied_index``
  after a restart must keep the table itself, in the same transaction as each command, or a retry after
  a restart would be applied twice: it sets ``keeps_sessions = True`` and accepts
  ``apply(index, command, session=(client, seq))`` (sql.py does).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

#: the session window, the same on every node (the table is replicated state): outcomes kept per client
SESSION_SEQS = 64
#: clients remembered at most; the one whose last recorded write is oldest is forgotten first
SESSION_CLIENTS = 100_000


class StateMachineError(Exception):
    """A deterministic failure of one command or query; ``code`` is a client-protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def session_too_old(client: str, seq: int) -> StateMachineError:
    """The answer to a retry whose seq fell out of its client's window: its outcome is unknown."""
    return StateMachineError("BAD_REQUEST", f"sequence number {seq} of client {client} is too old to tell "
                                            f"whether it was applied; use a new sequence number")


class StateMachine(ABC):
    """A replicated state machine: commands come from the decided log, queries are read-only."""

    #: the name it is registered under in the ``omni.statemachines`` entry-point group
    name: str = ""
    #: True: ``apply`` takes ``session=(client, seq)``, deduplicates retries itself and stores the session
    #: record atomically with the command (module docstring); False: the Applier keeps sessions in memory
    keeps_sessions: bool = False

    def __init__(self, data_dir: Path | None = None):
        self.data_dir = data_dir

    @abstractmethod
    def apply(self, index: int, command: dict) -> Any:
        """Apply the decided command at log position ``index`` (0-based, strictly increasing).

        With ``keeps_sessions``, the Applier calls ``apply(index, command, session=(client, seq))`` for a
        write that carries a client and seq: the machine answers a pair it has recorded with the recorded
        outcome (its result, or the same StateMachineError raised again) without applying anything,
        raises `session_too_old` for a seq below the client's floor, and otherwise applies the command
        and records its outcome in the same transaction. Either way the entry counts as applied.
        """

    @abstractmethod
    def query(self, request: dict) -> Any:
        """Answer a read-only request from the current state."""

    @abstractmethod
    def is_write(self, request: dict) -> bool:
        """True if the request must go through the log; raises StateMachineError for an unknown op."""

    @abstractmethod
    def snapshot(self) -> bytes:
        """The whole state (including ``applied_index``) as bytes.

        The node takes one every ``--snapshot-every`` applied entries (more for a large state), writes it to
        a file and compacts the log behind it; a node that falls behind the compaction point receives a
        peer's instead. Taken on the Applier's thread between two entries, so it blocks applying while it
        runs (see `snapshot_later`); at most 4 GiB."""

    def snapshot_later(self) -> Callable[[], bytes]:
        """Capture the state now, on the Applier's thread, and return a function that turns the capture into
        `snapshot`'s bytes later, on the thread that writes the file, while entries go on being applied.

        Override it where capturing is much cheaper than encoding and later applies cannot change what was
        captured (kv: two shallow list copies of immutable values); the default encodes at once."""
        data = self.snapshot()
        return lambda: data

    @abstractmethod
    def restore(self, data: bytes) -> None:
        """Replace the whole state with one produced by ``snapshot`` (on this or another node).

        Called at start when the newest snapshot file is ahead of ``applied_index`` (a machine that
        keeps its own files usually is not, and is then not restored), and after a state transfer."""

    @property
    @abstractmethod
    def applied_index(self) -> int:
        """One past the last applied log index (0 when nothing has been applied)."""

    def prepare(self, request: dict) -> dict:
        """Turn a client write into the command to propose, on the receiving node, before consensus.

        The place to refuse a write early (raise StateMachineError) or to stamp nondeterministic values
        into it. The default proposes the request unchanged.
        """
        return request

    def begin_batch(self) -> None:
        """The Applier is about to apply a run of decided entries and will call `end_batch` after the last.

        A machine that keeps its own files may let each entry's commit skip its fsync until then: one fsync
        per run instead of one per entry (sql.py does). Every entry must still be committed on its own, so
        queries, snapshots and a crash of the process in between see whole entries only. The default does
        nothing."""

    def end_batch(self) -> None:
        """Make everything applied since `begin_batch` durable; the Applier answers clients only after it."""

    def close(self) -> None:
        """Release files and connections."""
