"""Claims of the node process's garbage-collector setting (actors/node.py, `tune_gc`): young collections come
only after GC_YOUNG_THRESHOLD tracked allocations instead of CPython's 700, the older generations keep their
settings, and garbage cycles are still collected without anyone calling gc.collect(). Each check runs in a
child interpreter so that this test process keeps its own setting."""
from __future__ import annotations

import json
import subprocess
import sys

from omni.actors.node import GC_YOUNG_THRESHOLD

PROBE = """
import gc, json, weakref
from omni.actors.node import tune_gc
before = gc.get_threshold()
tune_gc()
after = gc.get_threshold()

class Cycle:
    pass

freed = []
for _ in range({cycles}):
    a, b = Cycle(), Cycle()
    a.other, b.other = b, a  # garbage only a cycle collection can free
    weakref.finalize(a, freed.append, 1)
    del a, b
print(json.dumps({{"before": before, "after": after, "freed": len(freed)}}))
"""


def probe(cycles: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(cycles=cycles)], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


def test_a_node_collects_young_objects_less_often_and_keeps_the_older_generations_settings():
    result = probe(cycles=0)
    assert result["after"][0] == GC_YOUNG_THRESHOLD > result["before"][0]
    assert result["after"][1:] == result["before"][1:]


def test_garbage_cycles_are_still_collected_without_an_explicit_collect():
    cycles = 4 * GC_YOUNG_THRESHOLD  # each leaves three tracked objects behind (two instances, a finalizer)
    result = probe(cycles)
    assert result["freed"] > cycles // 2, "cycles piled up: the collector never ran on its own"
