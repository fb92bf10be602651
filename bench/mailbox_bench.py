"""Cost of an actor mailbox: pykka's default `queue.Queue` against the C `queue.SimpleQueue` Omni uses.

    python bench/mailbox_bench.py

Prints the wall time of a round trip between two threads through two queues, and the CPU time of one put
plus one get with no waiter.
"""
from __future__ import annotations

import queue
import threading
import time


def round_trip_us(make, n: int = 20000) -> float:
    there, back = make(), make()

    def echo() -> None:
        for _ in range(n):
            back.put(there.get())

    thread = threading.Thread(target=echo)
    thread.start()
    start = time.perf_counter()
    for i in range(n):
        there.put(i)
        back.get()
    thread.join()
    return (time.perf_counter() - start) / n * 1e6


def put_get_cpu_us(make, n: int = 200000) -> float:
    q = make()
    start = time.process_time()
    for i in range(n):
        q.put(i)
    for _ in range(n):
        q.get()
    return (time.process_time() - start) / n * 1e6


if __name__ == "__main__":
    for make in (queue.Queue, queue.SimpleQueue):
        print(f"{make.__name__:12s} round trip {round_trip_us(make):6.1f} us   put+get CPU {put_get_cpu_us(make):5.2f} us")
