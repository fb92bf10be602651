"""The node's ZeroMQ I/O thread: the peer mesh and the client socket, nothing else.

Rules:
- Every socket is created, used and closed in this one thread. Other threads hand it frames through the
  `Outbox`: each thread gets its own inproc PUSH socket (created lazily in that thread), and the transport
  reads them all from one PULL socket.
- Peers: one ROUTER bound on ``listen`` receives from everyone; one DEALER per peer (routing id = our pid)
  sends to that peer's ROUTER. DEALERs use ZMQ_IMMEDIATE and a bounded send high-water mark, so a message
  to a peer that is down or too slow is dropped and counted instead of piling up: the protocol resends
  what matters. The DEALERs' ZMTP heartbeats notice a dead link; every later re-connect is reported as
  `Reconnected(pid)`. The ROUTER hands a routing id over to the newest connection (a peer that reconnects
  after a partition must be heard even while its old, half-open connection still looks alive here). TCP
  keepalive and a TCP user timeout close an inbound connection that went dead (measured with an iptables
  cut: 4-5.5 s, whether or not something we sent was left unacknowledged).
- No receive pipe has a high-water mark, and the inbound ROUTER runs no ZMTP heartbeats of its own. libzmq
  4.3.5 aborts the whole process (``Assertion failed: !_io_error (stream_engine_base.cpp:310)``, see
  zeromq/libzmq#4841) when a connection whose input was stopped, by a full receive pipe or by a handover
  that took its pipe away, then fails (a reset) and later writes: its own heartbeat timer, or the PONG to a
  PING still buffered behind the full pipe. A peer that was killed while this node was stalled, a client
  that flooded and reset, or any stranger on the port could kill the node that way. (Keepalive and the
  user timeout end a connection through libzmq's error path, which does not write.) The price: a sender
  faster than this thread (a flooding client, or peers while this node is overloaded) grows this process's
  memory instead of being slowed by TCP; a client connecting under a routing id already in use is never
  read and its frames stay queued.
- Peer frames are one byte of kind (core protocol or node-level) followed by the body. Anything that does
  not decode, or claims to come from another pid than the link it arrived on, is dropped and counted.
- Clients: a ROUTER on ``client`` with ROUTER_MANDATORY (a reply to a vanished client is counted, not lost
  silently) and a hard size cap; frames go to the ClientGateway unparsed.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Callable

import msgpack
import zmq
import zmq.utils.monitor

from omni.transport import codec

from .messages import ClientFrame, ClientFrames, Inbound, PeerReply, PeerRequest, Reconnected
from .supervision import name_this_thread

log = logging.getLogger("omni.transport")

KIND_CORE = b"\x00"
KIND_NODE = b"\x01"
PEER_HWM = 20_000  # send side only (see the module docstring for the receive side)
CLIENT_HWM = 100_000
# Inbound peer connections: the kernel probes one idle for 2 s and closes it after 3 unanswered probes;
# keepalive does not probe while something we sent (a PONG) is unacknowledged, the user timeout (ms) then
# closes it. (libzmq's heartbeat time-to-live cannot do this: data after the last PING disarms it.)
INBOUND_TCP = ((zmq.TCP_KEEPALIVE, 1), (zmq.TCP_KEEPALIVE_IDLE, 2), (zmq.TCP_KEEPALIVE_INTVL, 1),
               (zmq.TCP_KEEPALIVE_CNT, 3), (zmq.TCP_MAXRT, 4000))
MAX_CLIENT_FRAME = 128 * 1024 * 1024  # larger frames are dropped by ZeroMQ itself (no reply possible)


class Outbox:
    """Thread-safe way for any thread to give frames to the transport thread."""

    def __init__(self, ctx: zmq.Context, pid: int):
        self.ctx = ctx
        self.address = f"inproc://omni-outbox-{pid}-{id(self)}"
        self._local = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.address)
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def send_core(self, env) -> None:
        try:
            frame = codec.encode(env)
        except codec.CodecError as exc:
            # Dropping it would stall replication for good (every resend fails alike): stop loudly instead.
            raise RuntimeError(f"cannot encode {type(env.msg).__name__} for node {env.dst}: {exc}") from exc
        _send_frames(self._socket(), (b"P", b"%d" % env.dst, KIND_CORE + frame))

    def send_node(self, dst: int, message) -> None:
        """A node-level message (PeerRequest / PeerReply) to peer ``dst``."""
        body = _encode_node_message(message)
        _send_frames(self._socket(), (b"P", b"%d" % dst, KIND_NODE + body))

    def send_client(self, route: tuple, body: bytes) -> None:
        _send_frames(self._socket(), (b"C", *route, b"", body))

    def send_clients(self, replies: list) -> None:
        """Many ``(route, body)`` replies in one inproc message: the transport thread then receives one
        message instead of one per reply (under load, a third of its time went to those receives)."""
        if len(replies) == 1:
            return self.send_client(*replies[0])
        body = msgpack.packb([[*route, reply] for route, reply in replies], use_bin_type=True)
        _send_frames(self._socket(), (b"R", body))

    def set_peers(self, peers: dict[int, str]) -> None:
        """Replace the peer links (a new configuration): new peers are connected, dropped ones closed."""
        body = msgpack.packb({int(p): str(a) for p, a in peers.items()}, use_bin_type=True)
        self._socket().send_multipart([b"M", body])

    def close_thread_socket(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close(linger=0)
            self._local.sock = None


# Plain ints: pyzmq's flag enums cost more than the send itself on this path (every request and reply
# crosses it several times); send_multipart spends about twice the time of these sends (measured).
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)


def _send_frames(sock, frames, flags: int = 0) -> None:
    """send_multipart without its per-frame enum arithmetic. With NOBLOCK an EAGAIN can only come on the
    first frame (ZeroMQ queues a multipart message whole once its first part is accepted)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | _SNDMORE if i < last else flags)


def _recv_frames(sock) -> list:
    """recv_multipart(NOBLOCK) at about half its cost: a Frame says whether more parts follow, where asking
    the socket (RCVMORE) builds an option enum per part; raises zmq.Again."""
    frame = sock.recv(_NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def _encode_node_message(message) -> bytes:
    if isinstance(message, PeerRequest):
        return msgpack.packb(["req", message.origin, message.req, message.request], use_bin_type=True)
    if isinstance(message, PeerReply):
        return msgpack.packb(["rep", message.req, message.reply], use_bin_type=True)
    raise TypeError(f"not a node-level message: {message!r}")


def _decode_node_message(body: bytes, src: int):
    msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if isinstance(msg, list) and len(msg) == 4 and msg[0] == "req" and msg[1] == src \
            and isinstance(msg[2], int) and isinstance(msg[3], dict):
        return PeerRequest(msg[1], msg[2], msg[3])
    if isinstance(msg, list) and len(msg) == 3 and msg[0] == "rep" and isinstance(msg[1], int) \
            and isinstance(msg[2], dict):
        return PeerReply(msg[1], msg[2])
    raise ValueError("malformed node-level message")


class Transport(threading.Thread):
    """The I/O thread. Inbound traffic is handed to the callbacks, which only `tell` actors."""

    def __init__(self, ctx: zmq.Context, outbox: Outbox, pid: int, listen: str, peers: dict[int, str],
                 client: str, *, on_core: Callable, on_client: Callable, on_node: Callable,
                 on_reconnect: Callable, on_fatal: Callable):
        super().__init__(name=f"omni-transport-{pid}", daemon=True)
        self.ctx, self.outbox, self.pid = ctx, outbox, pid
        self.listen, self.peers, self.client_endpoint = listen, dict(peers), client
        self.on_core, self.on_client, self.on_node = on_core, on_client, on_node
        self.on_reconnect, self.on_fatal = on_reconnect, on_fatal
        self.stats: Counter = Counter()
        self.bound = threading.Event()
        self.bind_error: Exception | None = None
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        name_this_thread("Transport")
        try:
            sockets = self._open()
        except zmq.ZMQError as exc:
            self.bind_error = exc
            self.bound.set()
            return
        self.bound.set()
        try:
            self._loop(*sockets)
        except Exception as exc:  # the I/O thread dying would leave a half-alive node: stop it all
            log.exception("transport failed")
            self.on_fatal(f"transport failed: {exc}")
        finally:
            for sock in self._all_sockets:
                sock.close(linger=0)

    def _open(self):
        ctx = self.ctx
        self._all_sockets = []

        def sock(kind):
            s = ctx.socket(kind)
            s.setsockopt(zmq.LINGER, 0)
            self._all_sockets.append(s)
            return s

        pull = sock(zmq.PULL)
        pull.bind(self.outbox.address)
        inbox = sock(zmq.ROUTER)
        inbox.setsockopt(zmq.RCVHWM, 0)  # never stops reading: the libzmq abort in the module docstring
        inbox.setsockopt(zmq.MAXMSGSIZE, codec.MAX_FRAME + 16)  # larger: the peer is disconnected unread
        # A partition that drops packets leaves us holding a peer's old connection (its FIN was dropped
        # too) while the peer reconnects under the same routing id. Without handover libzmq parks the new
        # connection's messages for ever; with it the newest connection wins. TCP, not heartbeats of our
        # own (see the module docstring), closes the old one once it is dead.
        inbox.setsockopt(zmq.ROUTER_HANDOVER, 1)
        for option, value in INBOUND_TCP:
            inbox.setsockopt(option, value)
        inbox.bind(self.listen)
        clients = sock(zmq.ROUTER)
        clients.setsockopt(zmq.ROUTER_MANDATORY, 1)
        clients.setsockopt(zmq.MAXMSGSIZE, MAX_CLIENT_FRAME)
        clients.setsockopt(zmq.SNDHWM, CLIENT_HWM)
        clients.setsockopt(zmq.RCVHWM, 0)
        clients.bind(self.client_endpoint)
        self._dealers, self._monitors, self._dealer_pids = {}, {}, {}
        self._poller = zmq.Poller()
        for s in (pull, inbox, clients):
            self._poller.register(s, zmq.POLLIN)
        for pid, address in self.peers.items():
            self._connect_peer(pid, address)
        return pull, inbox, clients

    def _connect_peer(self, pid: int, address: str) -> None:
        d = self.ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.ROUTING_ID, b"%d" % self.pid)
        d.setsockopt(zmq.IMMEDIATE, 1)
        d.setsockopt(zmq.SNDHWM, PEER_HWM)
        # Peers never send on this link, but a stranger listening at a peer's address could: unbounded
        # and drained (frames dropped and counted), so its input never stops under the heartbeats.
        d.setsockopt(zmq.RCVHWM, 0)
        d.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        d.setsockopt(zmq.HEARTBEAT_IVL, 500)
        d.setsockopt(zmq.HEARTBEAT_TIMEOUT, 2000)
        d.setsockopt(zmq.RECONNECT_IVL, 100)
        d.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        # Handshake, not TCP connect: only then can the link carry the PrepareReq a reconnect triggers.
        mon = d.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        d.connect(address)
        self._all_sockets += [d, mon]
        self._dealers[pid], self._monitors[mon], self._dealer_pids[d] = d, pid, pid
        self._poller.register(mon, zmq.POLLIN)
        self._poller.register(d, zmq.POLLIN)
        self.peers[pid] = address

    def _disconnect_peer(self, pid: int) -> None:
        d = self._dealers.pop(pid)
        del self._dealer_pids[d]
        mon = next(m for m, p in self._monitors.items() if p == pid)
        del self._monitors[mon]
        self._poller.unregister(mon)
        self._poller.unregister(d)
        d.disable_monitor()
        for sock in (mon, d):
            self._all_sockets.remove(sock)
            sock.close(linger=0)
        del self.peers[pid]

    def _set_peers(self, body: bytes) -> None:
        """Reconcile the peer links with a new member list (a reconfiguration): {pid: address}."""
        wanted = {int(p): a for p, a in msgpack.unpackb(body, strict_map_key=False).items()}
        for pid in [p for p in self.peers if p not in wanted or wanted[p] != self.peers[p]]:
            self._disconnect_peer(pid)
        for pid, address in wanted.items():
            if pid not in self.peers and pid != self.pid:
                self._connect_peer(pid, address)

    def _loop(self, pull, inbox, clients) -> None:
        connected_once: set[int] = set()
        while not self._stopping.is_set():
            for s, _ in self._poller.poll(100):
                if s is pull:
                    self._drain_outbox(pull, clients)
                elif s is inbox:
                    self._drain(inbox, self._on_peer_frames)
                elif s is clients:
                    self._drain_clients(clients)
                elif s in self._monitors:
                    self._on_monitor(s, self._monitors[s], connected_once)
                elif s in self._dealer_pids:  # not closed by a reconfiguration earlier in this batch
                    self._drain_stray(s, self._dealer_pids[s])

    @staticmethod
    def _drain(sock, handle, budget: int = 1000) -> None:
        for _ in range(budget):
            try:
                frames = _recv_frames(sock)
            except zmq.Again:
                return
            handle(frames)

    def _drain_outbox(self, pull, clients, budget: int = 5000) -> None:
        for _ in range(budget):
            try:
                frames = _recv_frames(pull)
            except zmq.Again:
                return
            try:
                if frames[0] == b"P":
                    dealer = self._dealers.get(int(frames[1]))
                    if dealer is None:
                        self.stats["dropped_unknown_peer"] += 1
                    else:
                        dealer.send(frames[2], _NOBLOCK)
                elif frames[0] == b"R":
                    self._send_replies(clients, frames[1])
                elif frames[0] == b"M":
                    self._set_peers(frames[1])
                else:
                    _send_frames(clients, frames[1:], _NOBLOCK)
            except zmq.Again:
                self.stats["dropped_peer_backpressure" if frames[0] == b"P" else "dropped_client_backpressure"] += 1
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the client went away before its reply
                self.stats[f"dropped_send_{exc.errno}"] += 1

    def _send_replies(self, clients, body: bytes) -> None:
        for *route, reply in msgpack.unpackb(body):
            try:
                _send_frames(clients, (*route, b"", reply), _NOBLOCK)
            except zmq.Again:
                self.stats["dropped_client_backpressure"] += 1
            except zmq.ZMQError as exc:  # EHOSTUNREACH: this client went away; the others still get theirs
                self.stats[f"dropped_send_{exc.errno}"] += 1

    def _on_peer_frames(self, frames) -> None:
        try:
            src = int(frames[0])
            payload = frames[1]
            kind, body = payload[:1], payload[1:]
            if src not in self.peers or len(frames) != 2:
                raise ValueError("unknown sender or framing")
            if kind == KIND_CORE:
                env = codec.decode(body)
                if env.src != src or env.dst != self.pid:
                    raise ValueError("envelope does not match its link")
                self.on_core(Inbound(env))
            elif kind == KIND_NODE:
                self.on_node(_decode_node_message(body, src))
            else:
                raise ValueError("unknown frame kind")
        except (ValueError, IndexError, TypeError, msgpack.UnpackException) as exc:
            self.stats["dropped_malformed_peer_frame"] += 1
            log.debug("dropped peer frame: %s", exc)

    def _drain_stray(self, dealer, pid: int) -> None:
        """Drop and count messages on our outgoing link to ``pid``, where Omni peers never send: whatever
        listens at that address is not a node of this cluster (a misconfiguration worth one warning)."""
        key = f"dropped_messages_on_link_to_{pid}"
        if self.stats[key] == 0:
            log.warning("what listens at peer %d's address (%s) sends to us: not an Omni node of this cluster?",
                        pid, self.peers.get(pid))

        def count(frames) -> None:
            self.stats[key] += 1

        self._drain(dealer, count)

    def _drain_clients(self, clients, budget: int = 1000) -> None:
        """Hand what one poll drained to the gateway in one tell: under load a mailbox message per request
        cost more than the request's own decoding."""
        batch = []
        for _ in range(budget):
            try:
                frames = _recv_frames(clients)
            except zmq.Again:
                break
            frame = self._client_frame(frames)
            if frame is not None:
                batch.append(frame)
        if len(batch) == 1:
            self.on_client(batch[0])
        elif batch:
            self.on_client(ClientFrames(tuple(batch)))

    def _client_frame(self, frames):
        try:
            split = frames.index(b"")
        except ValueError:
            self.stats["dropped_client_frame_without_delimiter"] += 1
            return None
        route, body = tuple(frames[:split]), frames[split + 1:]
        if len(body) != 1:
            self.stats["dropped_client_multipart"] += 1
            body = [b"".join(body)] if body else [b""]
        return ClientFrame(route, body[0])

    def _on_monitor(self, mon, pid: int, connected_once: set) -> None:
        try:
            event = zmq.utils.monitor.recv_monitor_message(mon, zmq.NOBLOCK)
        except zmq.Again:
            return
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if pid in connected_once:
                self.stats["reconnects"] += 1
                self.on_reconnect(Reconnected(pid))
            connected_once.add(pid)
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            self.stats["disconnects"] += 1
