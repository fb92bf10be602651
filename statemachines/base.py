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
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


class StateMachineError(Exception):
    """A deterministic failure of one command or query; ``code`` is a client-protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class StateMachine(ABC):
    """A replicated state machine: commands come from the decided log, queries are read-only."""

    #: the name it is registered under in the ``omni.statemachines`` entry-point group
    name: str = ""

    def __init__(self, data_dir: Path | None = None):
        self.data_dir = data_dir

    @abstractmethod
    def apply(self, index: int, command: dict) -> Any:
        """Apply the decided command at log position ``index`` (0-based, strictly increasing)."""

    @abstractmethod
    def query(self, request: dict) -> Any:
        """Answer a read-only request from the current state."""

    @abstractmethod
    def is_write(self, request: dict) -> bool:
        """True if the request must go through the log; raises StateMachineError for an unknown op."""

    @abstractmethod
    def snapshot(self) -> bytes:
        """The whole state (including ``applied_index``) as bytes."""

    @abstractmethod
    def restore(self, data: bytes) -> None:
        """Replace the whole state with one produced by ``snapshot`` (on this or another node)."""

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

    def close(self) -> None:
        """Release files and connections."""
