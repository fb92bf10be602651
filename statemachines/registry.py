"""Finding a state machine class by name: the ``omni.statemachines`` entry-point group.

`omni node start --state-machine NAME` calls `load_state_machine(NAME)`. Built-in machines and
third-party ones register the same way, in the entry-point group ``omni.statemachines`` of their
package metadata (``name = module:Class``); see examples/omni-counter for a plug-in. The built-ins are
also known without metadata, so a source checkout whose metadata is stale still finds ``kv`` and ``sql``.
Entry points are read with importlib.metadata on every call; a process caches imported modules, so a
plug-in installed while a node runs is seen by the next process, not necessarily by this one.
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

from .base import StateMachine

GROUP = "omni.statemachines"
_BUILTINS = {"kv": "omni.statemachines.kv:KVStateMachine", "sql": "omni.statemachines.sql:SQLStateMachine"}


class UnknownStateMachine(ValueError):
    """No state machine is registered under the requested name."""


def _registered() -> dict[str, list[str]]:
    """name -> the distinct ``module:attr`` targets registered under it."""
    found: dict[str, list[str]] = {name: [target] for name, target in _BUILTINS.items()}
    for ep in entry_points(group=GROUP):
        targets = found.setdefault(ep.name, [])
        if ep.value not in targets:
            targets.append(ep.value)
    return found


def available_state_machines() -> list[str]:
    """The names that `load_state_machine` accepts, sorted."""
    return sorted(_registered())


def load_state_machine(name: str) -> type[StateMachine]:
    """The `StateMachine` subclass registered as ``name``."""
    registered = _registered()
    if name not in registered:
        raise UnknownStateMachine(
            f"unknown state machine {name!r}; available: {', '.join(sorted(registered))} "
            f"(plug-ins register in the entry-point group {GROUP!r})")
    targets = registered[name]
    if len(targets) > 1:
        raise ValueError(f"state machine {name!r} is registered more than once: {', '.join(targets)}")
    module_name, _, attr = targets[0].partition(":")
    obj = import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, StateMachine)):
        raise TypeError(f"{targets[0]} (registered as {name!r}) is not a StateMachine subclass")
    return obj
