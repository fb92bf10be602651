#!/usr/bin/env python3
"""Micro-benchmark (not a test): what a busy Python thread does to another thread's ZeroMQ sends.

pyzmq releases the GIL around every send and receive, even a non-blocking one; when another thread of the
same process is running Python code, the sender must then wait for the GIL to come back after each call.
This sends 20,000 50-byte messages over inproc PUSH/PULL, alone and beside one thread spinning in Python,
through pyzmq and through libzmq's C API called with ctypes.PyDLL (which keeps the GIL during the call).

    python bench/gil_convoy.py
"""
from __future__ import annotations

import ctypes
import threading
import time

import zmq

N = 20_000


def libzmq():
    paths = {line.split()[-1] for line in open("/proc/self/maps") if "/libzmq" in line and ".so" in line}
    lib = ctypes.PyDLL(paths.pop())
    lib.zmq_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    lib.zmq_send.restype = ctypes.c_int
    return lib


def main() -> None:
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for sock in (pull, push):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    pull.bind("inproc://convoy")
    push.connect("inproc://convoy")
    lib, handle, body = libzmq(), push.underlying, b"x" * 50
    senders = {"pyzmq": lambda: push.send(body, 0), "ctypes": lambda: lib.zmq_send(handle, body, len(body), 0)}
    for name, send in senders.items():
        for busy in (0, 1):
            stop = threading.Event()
            spinners = [threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)]) for _ in range(busy)]
            for t in spinners:
                t.start()
            start = time.perf_counter()
            for _ in range(N):
                send()
            elapsed = time.perf_counter() - start
            stop.set()
            for t in spinners:
                t.join()
            while pull.poll(0):
                pull.recv()
            print(f"{name:6}  busy threads {busy}: {elapsed / N * 1e6:7.2f} us per send")
    ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
