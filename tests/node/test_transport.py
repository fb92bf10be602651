"""The transport thread: peers exchange core messages, and a peer's restart is reported as Reconnected."""
import queue
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq

from omni.actors.messages import ClientFrame, ClientFrames, Inbound, Reconnected
from omni.actors.transport import KIND_CORE, Outbox, Transport
from omni.jepsen.netfilter import Firewall
from omni.paxos import Ballot, Envelope, PrepareReq
from omni.transport import codec

from ..integration.cluster import free_ports, wait_for
from . import zmtp_raw


def start_transport(ctx, pid, ports, events, deadline=20.0, peers=None):
    """Start a transport (its peer: the other of nodes 1 and 2, unless ``peers`` lists others); retry the
    bind while the previous owner of the port is still letting go."""
    peers = [2 if pid == 1 else 1] if peers is None else peers
    end = time.monotonic() + deadline
    while True:
        outbox = Outbox(ctx, pid)
        t = Transport(ctx, outbox, pid, f"tcp://127.0.0.1:{ports[pid]}",
                      {p: f"tcp://127.0.0.1:{ports[p]}" for p in peers},
                      f"tcp://127.0.0.1:{ports[pid + 10]}", on_core=events.put, on_client=events.put,
                      on_node=events.put, on_reconnect=events.put, on_fatal=events.put)
        t.start()
        t.bound.wait()
        if t.bind_error is None:
            return t, outbox
        assert time.monotonic() < end, f"cannot bind: {t.bind_error}"
        time.sleep(0.2)


def send_until_received(outbox, env, events, deadline=20.0):
    """Links drop messages until the handshake is done (ZMQ_IMMEDIATE), so keep sending until one lands."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        outbox.send_core(env)
        try:
            item = events.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(item, Inbound):
            return item
    raise AssertionError("the message never arrived")


def expect(events, kind, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            item = events.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(item, kind):
            return item
    raise AssertionError(f"no {kind} within {deadline}s")


def test_peer_restart_is_reported_as_reconnected_and_messages_flow_again():
    ctx = zmq.Context()
    p = free_ports(4)
    ports = {1: p[0], 2: p[1], 11: p[2], 12: p[3]}
    events1, events2 = queue.Queue(), queue.Queue()
    t1, out1 = start_transport(ctx, 1, ports, events1)
    t2, out2 = start_transport(ctx, 2, ports, events2)
    env = Envelope(1, 2, 1, PrepareReq(Ballot(1, 0, 1)))
    try:
        assert send_until_received(out1, env, events2).env == env
        t2.stop()
        t2.join(timeout=5)
        t2, out2 = start_transport(ctx, 2, ports, events2)  # the peer comes back on the same address
        assert expect(events1, Reconnected) == Reconnected(2)
        assert send_until_received(out1, env, events2).env == env
        assert t1.stats["reconnects"] >= 1
    finally:
        for t in (t1, t2):
            t.stop()
            t.join(timeout=5)
        out1.close_thread_socket()
        ctx.destroy(linger=0)


def test_peer_that_reconnects_while_its_old_connection_is_half_open_is_heard():
    """A partition that drops packets leaves the receiver holding the sender's old TCP connection (the
    FIN was dropped too), so the sender's new connection arrives under a routing id that is still in use.
    Without ROUTER_HANDOVER libzmq parks the new connection's messages for good: the one-way link stayed
    dead after every partition healed (the torture-test wedge of issue 7). The newest connection wins."""
    ctx = zmq.Context()
    p = free_ports(3)
    events = queue.Queue()
    t, _ = start_transport(ctx, 2, {2: p[0], 1: p[1], 12: p[2]}, events)

    def dealer():
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.ROUTING_ID, b"1")  # what node 1's DEALER calls itself on every connection
        d.connect(f"tcp://127.0.0.1:{p[0]}")
        return d

    frame = KIND_CORE + codec.encode(Envelope(1, 2, 1, PrepareReq(Ballot(1, 0, 1))))
    old = new = None
    try:
        old = dealer()
        old.send(frame)
        assert isinstance(expect(events, Inbound), Inbound)
        new = dealer()  # `old` stays connected and silent: the half-open connection a partition leaves
        end = time.monotonic() + 20
        while time.monotonic() < end:
            new.send(frame)
            try:
                if isinstance(events.get(timeout=0.1), Inbound):
                    break
            except queue.Empty:
                continue
        else:
            raise AssertionError("messages on the reconnected link were never delivered")
    finally:
        for d in (old, new):
            if d is not None:
                d.close(linger=0)
        t.stop()
        t.join(timeout=5)
        ctx.destroy(linger=0)


def test_set_peers_connects_a_new_member_and_forgets_a_removed_one():
    """A reconfiguration changes the member list at run time: node 1 starts knowing nobody, learns node 2,
    talks to it, then forgets it (messages to a former member are dropped and counted, never queued)."""
    ctx = zmq.Context()
    p = free_ports(4)
    events1, events2 = queue.Queue(), queue.Queue()
    ports = {1: p[0], 2: p[2], 11: p[1], 12: p[3]}
    t1, out1 = start_transport(ctx, 1, ports, events1, peers=[])
    t2, out2 = start_transport(ctx, 2, ports, events2)
    env = Envelope(1, 2, 1, PrepareReq(Ballot(1, 0, 1)))
    try:
        out1.set_peers({2: f"tcp://127.0.0.1:{p[2]}"})
        assert send_until_received(out1, env, events2).env == env
        out1.set_peers({})
        end = time.monotonic() + 20
        while t1.stats["dropped_unknown_peer"] == 0 and time.monotonic() < end:
            out1.send_core(env)
            time.sleep(0.05)
        assert t1.stats["dropped_unknown_peer"] >= 1
    finally:
        for t in (t1, t2):
            t.stop()
            t.join(timeout=5)
        out1.close_thread_socket()
        ctx.destroy(linger=0)


def test_replies_handed_over_together_reach_each_client_even_when_one_client_is_gone():
    """send_clients carries many replies in one inproc message; a reply to a vanished client (ROUTER_MANDATORY
    says EHOSTUNREACH) is counted and the rest of the batch still goes out, in order."""
    ctx = zmq.Context()
    p = free_ports(4)
    ports = {1: p[0], 2: p[1], 11: p[2], 12: p[3]}
    events = queue.Queue()
    t, outbox = start_transport(ctx, 1, ports, events)
    clients = []
    try:
        for name in (b"alice", b"bob"):
            c = ctx.socket(zmq.DEALER)
            c.setsockopt(zmq.LINGER, 0)
            c.setsockopt(zmq.ROUTING_ID, name)
            c.connect(f"tcp://127.0.0.1:{ports[11]}")
            c.send_multipart([b"", b"hello"])
            clients.append(c)
        routes = []
        while len(routes) < len(clients):  # one poll may hand both over together (ClientFrames)
            got = expect(events, (ClientFrame, ClientFrames))
            routes += [f.route for f in (got.frames if isinstance(got, ClientFrames) else (got,))]
        assert sorted(routes) == [(b"alice",), (b"bob",)]
        outbox.send_clients([((b"alice",), b"a1"), ((b"nobody",), b"lost"), ((b"bob",), b"b1"),
                             ((b"alice",), b"a2")])
        for c, wanted in zip(clients, ([b"a1", b"a2"], [b"b1"])):
            c.setsockopt(zmq.RCVTIMEO, 10_000)
            assert [c.recv_multipart()[1] for _ in wanted] == wanted
        assert t.stats[f"dropped_send_{zmq.EHOSTUNREACH}"] == 1
    finally:
        t.stop()
        t.join(timeout=5)
        outbox.close_thread_socket()
        for c in clients:
            c.close(linger=0)


@pytest.mark.timeout(120)
def test_a_peer_removed_while_its_link_is_readable_is_skipped_not_read():
    """A reconfiguration closes the link to a removed peer while the same poll found that link readable
    (here: what listens at the peer's address keeps sending on it). The loop must skip the closed socket;
    reading it raised ENOTSOCK, which stopped the transport and with it the node."""
    ctx = zmq.Context()
    p = free_ports(3)
    ports = {1: p[0], 2: p[1], 11: p[2]}
    address = f"tcp://127.0.0.1:{ports[2]}"
    events = queue.Queue()
    server = socket.create_server(("127.0.0.1", ports[2]))
    stop = threading.Event()

    def stranger():  # every connection node 1 makes here gets a handshake, then frames until it breaks
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                try:
                    zmtp_raw.handshake(conn, b"ROUTER")
                    while not stop.is_set():
                        conn.sendall(zmtp_raw.frame(zmtp_raw.GARBAGE) * 100)
                        time.sleep(0.001)
                except OSError:
                    continue

    flooder = threading.Thread(target=stranger, daemon=True)
    flooder.start()
    t, outbox = start_transport(ctx, 1, ports, events)
    try:
        for _ in range(5):
            seen = t.stats["dropped_messages_on_link_to_2"]
            wait_for(lambda: t.stats["dropped_messages_on_link_to_2"] > seen, 20, "the stranger's frames")
            outbox.set_peers({})
            wait_for(lambda: 2 not in t.peers, 20, "the link closed")
            time.sleep(0.2)  # the rest of that poll's batch: where the closed socket used to be read
            # Checked before the next send: with the transport gone, an outbox send would block for ever.
            assert t.is_alive(), [e for e in list(events.queue) if isinstance(e, str)]
            outbox.set_peers({2: address})
        assert [e for e in list(events.queue) if isinstance(e, str)] == []  # nothing reported fatal
    finally:
        stop.set()
        shut_down(t, outbox, ctx)
        flooder.join(timeout=5)
        server.close()


def shut_down(t, outbox, ctx) -> None:
    t.stop()
    t.join(timeout=5)
    outbox.close_thread_socket()
    ctx.destroy(linger=0)


def test_inbound_connection_left_dead_by_a_partition_is_closed_even_with_a_reply_unacknowledged():
    """The inbound ROUTER runs no heartbeats of its own (see test_transport_resets.py), so TCP must notice a
    dead inbound connection. Keepalive alone does not while something we sent is unacknowledged (here: the
    PONG to the peer's last PING, its reply cut first); the kernel would retransmit for about 15 minutes.
    The user timeout closes it, and libzmq then closes the socket."""
    ctx = zmq.Context()
    p = free_ports(3)
    ports = {1: p[0], 2: p[1], 11: p[2]}
    events = queue.Queue()
    t, outbox = start_transport(ctx, 1, ports, events)
    peer = socket.socket()
    try:
        peer.bind(("127.0.0.22", 0))
        peer.settimeout(20)
        peer.connect(("127.0.0.1", ports[1]))
        zmtp_raw.handshake(peer, b"DEALER", identity=b"2")
        peer.sendall(zmtp_raw.frame(KIND_CORE + codec.encode(Envelope(2, 1, 1, PrepareReq(Ballot(1, 0, 2))))))
        assert isinstance(expect(events, Inbound), Inbound)
        link = (("127.0.0.1", ports[1]), peer.getsockname())
        assert established(*link)
        with Firewall() as fw:
            fw.drop_replies("127.0.0.22", "127.0.0.1", ports[1])
            peer.sendall(zmtp_raw.PING)  # answered with a PONG that never arrives
            time.sleep(0.3)
            fw.block("127.0.0.22", "127.0.0.1", ports[1])  # now the whole connection is dead
            wait_for(lambda: not established(*link), 60, "close of the dead inbound connection")
    finally:
        peer.close()
        shut_down(t, outbox, ctx)


def established(local: tuple, remote: tuple) -> bool:
    """Whether the kernel lists an established TCP connection from ``local`` to ``remote`` (IPv4)."""
    def hex_address(address):
        return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"

    wanted = (hex_address(local), hex_address(remote), "01")  # 01: ESTABLISHED
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(tuple(line.split()[1:4]) == wanted for line in lines)
