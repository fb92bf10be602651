"""Omni's state machines: the interface, plug-in loading by name, and the built-in ``kv`` and ``sql``.

The node applies the decided log to one `StateMachine`, chosen by name with `load_state_machine`
(entry-point group ``omni.statemachines``). The built-in machines are imported only when loaded.
"""
from .base import StateMachine, StateMachineError
from .registry import UnknownStateMachine, available_state_machines, load_state_machine

__all__ = [
    "StateMachine",
    "StateMachineError",
    "UnknownStateMachine",
    "available_state_machines",
    "load_state_machine",
]
