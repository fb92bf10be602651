"""omni.client: talk to an Omni cluster from Python (the protocol itself is in PROTOCOL.md).

    from omni.client import Client
    with Client(["tcp://127.0.0.1:7201", "tcp://127.0.0.1:7202"]) as c:
        c.put("greeting", "hello")
        c.get("greeting")["value"]

Errors are `OmniError` with a protocol ``code``; `Unavailable` (code UNAVAILABLE) means no node answered.
"""
from .client import CONSISTENCY, DEFAULT_ENDPOINTS, MAX_FRAME, Client, OmniError, Unavailable, parse_endpoints

__all__ = [
           "CONSISTENCY",
           "DEFAULT_ENDPOINTS",
           "MAX_FRAME",
           "Client",
           "OmniError",
           "Unavailable",
           "parse_endpoints",
]
