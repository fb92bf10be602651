"""The ceiling: a bare pyzmq + msgpack echo server, one thread: receive, decode, encode, reply.

It speaks just enough of the client protocol (PROTOCOL.md) for `omni bench` to drive it with the same load
generator and the same frames as Omni: a ROUTER socket (so REQ and pipelining DEALER clients both work),
each request decoded with msgpack and answered with a put-shaped reply that echoes its id:
``{"ok": true, "result": {"revision": 0}, "id": <id>}``. Nothing else happens, so whatever rate it reaches
is what this machine allows one Python thread to serve through ZeroMQ + msgpack: the ceiling the Omni
figures are divided by. `omni bench --ceiling` runs the same loop (omni.cli.bench.echo_serve) itself.

    python bench/echo_server.py --endpoint tcp://127.0.0.1:7999 &
    omni bench --endpoints tcp://127.0.0.1:7999 --workload echo --processes 2 --concurrency 200
"""
from __future__ import annotations

import argparse

from omni.cli.bench import echo_serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:7999")
    try:
        echo_serve(parser.parse_args().endpoint)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
