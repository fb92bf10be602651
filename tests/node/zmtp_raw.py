"""ZMTP 3.1 by hand over a TCP socket (NULL mechanism), for tests that must misbehave as no libzmq socket
would: flood without reading, put PINGs among the frames, reset the connection (SO_LINGER 0)."""
import socket
import struct
import time

GARBAGE = b"\x00not a core message"
PING = b"\x04\x07\x04PING\x00\x00"  # a PING command: TTL 0, no context


def frame(body: bytes, more: bool = False) -> bytes:
    if len(body) < 256:
        return bytes([1 if more else 0, len(body)]) + body
    return bytes([3 if more else 2]) + struct.pack(">Q", len(body)) + body


def handshake(sock: socket.socket, socket_type: bytes, identity: bytes = b"") -> None:
    sock.sendall(b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + bytes(32))
    got = b""
    while len(got) < 64:
        chunk = sock.recv(64 - len(got))
        if not chunk:
            raise ConnectionError("the peer closed during the ZMTP greeting")
        got += chunk

    def prop(name: bytes, value: bytes) -> bytes:
        return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value

    ready = b"\x05READY" + prop(b"Socket-Type", socket_type) + (prop(b"Identity", identity) if identity else b"")
    sock.sendall(b"\x04" + bytes([len(ready)]) + ready)


def connect(port: int, socket_type: bytes = b"DEALER", identity: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    handshake(sock, socket_type, identity)
    return sock


def flood_and_reset(sock: socket.socket, frames: int, settle: float = 0.05) -> None:
    """Send ``frames`` garbage frames with a PING after every tenth, let them land for ``settle`` seconds
    (a reset loses what the sender's kernel has not delivered yet), then reset the connection."""
    sock.sendall((frame(GARBAGE) * 10 + PING) * (frames // 10))
    time.sleep(settle)
    reset(sock)


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
