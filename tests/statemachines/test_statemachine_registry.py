"""Claims of plug-in loading (statemachines/registry.py): machines are found by name in one entry-point group."""
from importlib.metadata import entry_points

import pytest

import omni.statemachines as package
from omni.statemachines import StateMachine, StateMachineError, load_state_machine
from omni.statemachines.kv import KVStateMachine
from omni.statemachines.registry import UnknownStateMachine, available_state_machines
from omni.statemachines.sql import SQLStateMachine


def test_builtins_are_registered_in_the_entry_point_group():
    registered = {ep.name: ep.value for ep in entry_points(group="omni.statemachines")}
    assert registered.get("kv") == "omni.statemachines.kv:KVStateMachine"
    assert registered.get("sql") == "omni.statemachines.sql:SQLStateMachine"


def test_load_state_machine_returns_the_registered_class():
    assert load_state_machine("kv") is KVStateMachine
    assert load_state_machine("sql") is SQLStateMachine
    assert issubclass(load_state_machine("kv"), StateMachine)


def test_unknown_state_machine_name_lists_available():
    with pytest.raises(UnknownStateMachine) as err:
        load_state_machine("etcd")
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert "'etcd'" in message and "kv" in message and "sql" in message


def test_available_state_machines_is_sorted_and_includes_builtins():
    names = available_state_machines()
    assert names == sorted(names) and {"kv", "sql"} <= set(names)


def test_public_names_are_exported_from_the_package():
    assert {"StateMachine", "StateMachineError", "load_state_machine", "available_state_machines",
            "UnknownStateMachine"} <= set(package.__all__)
    assert package.StateMachineError is StateMachineError
    error = StateMachineError("SQL_ERROR", "boom")
    assert (error.code, error.message, str(error)) == ("SQL_ERROR", "boom", "boom")


def test_a_registered_name_that_is_not_a_state_machine_is_refused(monkeypatch):
    from omni.statemachines import registry
    monkeypatch.setitem(registry._BUILTINS, "bogus", "omni.statemachines.base:StateMachineError")
    with pytest.raises(TypeError):
        load_state_machine("bogus")
