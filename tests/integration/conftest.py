import pytest

from .cluster import LocalCluster


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path).start()
    try:
        c.steady_leader()  # past the start-up takeover by a late node with a higher id
        yield c
    finally:
        c.stop()
