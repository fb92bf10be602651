"""A real Transport in its own process, for tests whose failure mode is libzmq aborting the process.

Usage: transport_victim.py PEER_PORT CLIENT_PORT PEER2_PORT STALL. Node 1 listens on the first two ports and
connects its DEALER to node 2 at the third. The first core frame and the first client frame each stall the
transport thread for STALL seconds (a node that falls behind its sockets, as after a SIGSTOP). Prints
"ready" once bound and "core N" / "client N" as frames are handed over; answers each "stats" line on stdin
with one JSON line (callback counts and the transport's stats); at end of stdin prints that line once more
and exits 0. An abort inside libzmq shows as a negative exit code instead.
"""
import json
import os
import sys
import threading
import time

import zmq

from omni.actors.messages import ClientFrames
from omni.actors.transport import Outbox, Transport


def main() -> None:
    peer_port, client_port, peer2_port, stall = (*map(int, sys.argv[1:4]), float(sys.argv[4]))
    counts = {"core": 0, "client": 0, "other": 0}
    lock = threading.Lock()

    def on_core(_):
        with lock:
            counts["core"] += 1
            first = counts["core"] == 1
            print(f"core {counts['core']}", flush=True)
        if first:
            time.sleep(stall)

    def on_client(item):
        n = len(item.frames) if isinstance(item, ClientFrames) else 1
        with lock:
            first = counts["client"] == 0
            counts["client"] += n
            print(f"client {counts['client']}", flush=True)
        if first:
            time.sleep(stall)

    def on_other(_):
        with lock:
            counts["other"] += 1

    def on_fatal(reason):  # the transport thread died: exit, so the test sees it instead of waiting
        print(f"fatal: {reason}", file=sys.stderr, flush=True)
        os._exit(3)

    ctx = zmq.Context()
    outbox = Outbox(ctx, 1)
    transport = Transport(ctx, outbox, 1, f"tcp://127.0.0.1:{peer_port}", {2: f"tcp://127.0.0.1:{peer2_port}"},
                          f"tcp://127.0.0.1:{client_port}", on_core=on_core, on_client=on_client,
                          on_node=on_other, on_reconnect=on_other, on_fatal=on_fatal)
    transport.start()
    transport.bound.wait()
    if transport.bind_error is not None:
        print(json.dumps({"bind_error": str(transport.bind_error)}), flush=True)
        return
    print("ready", flush=True)

    def report():
        with lock:
            print(json.dumps({**counts, "stats": dict(transport.stats)}), flush=True)

    for _ in sys.stdin:
        report()
    transport.stop()
    transport.join(timeout=5)
    report()


if __name__ == "__main__":
    main()
