"""The sockets the HTTP API listens on when it has more than uvicorn's one: TCP and a Unix socket.

A Unix domain socket (``server.unix_socket``) lets applications on the same device reach the
API without TCP: no port, no loopback network stack, and access decided by the socket file's
permissions. The file is created readable and writable by everyone (``0o666``, what a
localhost TCP port allows too); put it in a directory whose permissions restrict who may
reach it. A socket file left behind by an agent that died is replaced; one that another
process still listens on, or a path that is not a socket, is an error. The agent removes its
socket file when it stops.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from edgedl.errors import EdgeDLError

SOCKET_MODE = 0o666


class ListenError(EdgeDLError):
    """An address or socket path the agent cannot listen on."""


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6, as ``host`` resolves)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"could not listen on {host}:{port} ({exc})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"could not listen on {host}:{port} (is the port in use?)") from exc
    sock.set_inheritable(True)
    return sock


def bind_unix(path: str) -> socket.socket:
    """A Unix stream socket bound at ``path`` (mode :data:`SOCKET_MODE`); see the module doc."""
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, SOCKET_MODE)
    except OSError as exc:
        sock.close()
        raise ListenError(f"could not listen on the Unix socket {path}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def remove_unix(path: str) -> None:
    """Remove the socket file at ``path`` if it is still a socket."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def _clear_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"cannot use {path} as the Unix socket: {exc.strerror}") from exc
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{path} exists and is not a socket: remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:  # nobody listens: a dead agent's file
        os.unlink(path)
    else:
        raise ListenError(f"another process already listens on the Unix socket {path}")
    finally:
        probe.close()
