"""Fixtures for the client tests: fake nodes that are stopped when the test ends."""
import pytest

from .fakenode import FakeNode


@pytest.fixture
def node():
    """Start a FakeNode: node(node_id, mode="ok", slow_first=0, delay=0.0)."""
    started = []

    def start(node_id: int, mode: str = "ok", **kwargs) -> FakeNode:
        fake = FakeNode(node_id, mode, **kwargs)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()
