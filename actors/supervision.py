"""Supervision: any actor that fails stops the whole node, loudly.

A node with one dead actor would be half alive: answering heartbeats while never persisting, say. So every
actor derives from `SupervisedActor`, whose `on_failure` logs the failure and tells the node supervisor to
exit with a non-zero code; resources are released in `on_stop` / `on_failure` of each actor.
"""
from __future__ import annotations

import ctypes
import logging
import queue
import traceback

import pykka

log = logging.getLogger("omni.node")

_PR_SET_NAME = 15  # prctl(2)
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: threads keep the process's name
    _prctl = None


def name_this_thread(name: str) -> None:
    """Give the calling thread a kernel name (15 bytes at most), so `top -H`, `ps -L` and
    /proc/PID/task/TID/comm tell the actors apart (bench/cpu_per_op.sh reads it). Best effort."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


class SupervisedActor(pykka.ThreadingActor):
    """A Pykka actor whose crash brings the node down instead of leaving it half alive."""

    use_daemon_thread = True  # a wedged actor (say, on a dead disk) must not keep a stopped node's process alive

    def __init__(self, node):
        super().__init__()
        self.node = node

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue:
        # Pykka's hook for the mailbox. Its default, queue.Queue, is written in Python: a put and a get cost
        # 3.1 us of CPU together, against 0.1-0.2 us for the C SimpleQueue (bench/mailbox_bench.py), and
        # every request crosses four to six mailboxes. In a loaded cluster the gain is within noise.
        return queue.SimpleQueue()

    def on_start(self) -> None:
        name_this_thread(type(self).__name__.removesuffix("Actor"))

    def on_failure(self, exception_type, exception_value, tb) -> None:
        detail = "".join(traceback.format_exception(exception_type, exception_value, tb))
        if self.node.stopping:  # a consequence of the first failure (a dead neighbour): already handled
            log.info("%s stopped after the node began stopping: %s", type(self).__name__, exception_value)
        else:
            log.critical("%s failed: %s", type(self).__name__, exception_value)
            self.node.fatal(f"{type(self).__name__} failed: {exception_value}", detail=detail)
        try:  # after fatal(): a release that fails too (a dead disk) must not keep the node half alive
            self.release()
        except Exception as exc:
            log.warning("%s could not release its resources: %s", type(self).__name__, exc)

    def on_stop(self) -> None:
        self.release()

    def release(self) -> None:
        """Free files and sockets held by this actor's thread (override; must be safe to call twice)."""
        self.node.outbox.close_thread_socket()
