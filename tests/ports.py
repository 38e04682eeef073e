"""Ports for the servers the tests start (brokers, agents, collectors).

``bind(port 0)`` hands out a port from the kernel's ephemeral range, the same range the
kernel takes the local port of every outgoing connection from. Between the check and the
moment a server subprocess binds the port (seconds, while it imports), any of the suite's
client connections may take it, and the server dies with "address already in use". Ports
chosen below the ephemeral range are never given to a client connection, so that race is
gone; ports already handed out in this process are not handed out again.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000
_given: set[int] = set()
_pick = random.Random()  # seeded by the OS: separate test processes pick different ports


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _LOWEST + 1000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on and no client connection will take."""
    high = _ephemeral_low()
    for _ in range(1000):
        port = _pick.randrange(_LOWEST, high)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port found between {_LOWEST} and {high}")
