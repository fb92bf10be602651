import pytest

from .cluster import LocalCluster


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path).start()
    try:
        c.leader()
        yield c
    finally:
        c.stop()
