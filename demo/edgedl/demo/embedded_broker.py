"""An MQTT broker in Python for the demo, where ``mosquitto`` is not installed.

``python -m edgedl.demo.embedded_broker --port N`` runs amqtt (https://pypi.org/project/amqtt/,
a maintained asyncio broker) for anonymous clients on 127.0.0.1:N until SIGTERM or SIGINT.
It is a demo broker: one process, everything in memory.

amqtt 0.12 speaks MQTT 3.1.1 only (MQTT 5 is amqtt issue #329), and it does not refuse an
MQTT 5 CONNECT that carries properties: it reads them as a 3.1.1 payload and waits, silent,
for bytes that never come. So this module accepts the connections itself, answers an MQTT 5
CONNECT with the 3.1.1 refusal "unacceptable protocol version" (CONNACK return code 1), and
hands every other connection, first packet included, to amqtt as an external listener. The
agent and the collector then fall back to MQTT 3.1.1 at once (persistent sessions, QoS 1,
retained messages and last wills all work there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

#: Sessions of clients gone for longer than this are dropped (the demo's are short anyway).
SESSION_EXPIRY_S = 600
#: Seconds amqtt gets to shut down after SIGTERM.
SHUTDOWN_TIMEOUT_S = 5.0


#: The 3.1.1 CONNACK "unacceptable protocol version": what an MQTT 5 CONNECT gets.
REFUSE_MQTT5 = b"\x20\x02\x00\x01"
_LISTENER = "default"


def broker_config(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """amqtt's configuration: one external listener (fed by :func:`serve`), anonymous clients."""
    return {
        "listeners": {_LISTENER: {"type": "external", "bind": f"{host}:{port}"}},
        "session_expiry_interval": SESSION_EXPIRY_S,
        # Only the anonymous-auth plugin: amqtt's default set also logs every packet and
        # publishes $SYS topics, neither of which the demo wants.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def read_first_packet(reader: asyncio.StreamReader) -> bytes:
    """The client's first MQTT packet, whole (fixed header, remaining length, body)."""
    packet = await reader.readexactly(1)
    length, multiplier = 0, 1
    for _ in range(4):
        byte = await reader.readexactly(1)
        packet += byte
        length += (byte[0] & 0x7F) * multiplier
        multiplier *= 128
        if not byte[0] & 0x80:
            break
    return packet + await reader.readexactly(length)


def is_mqtt5_connect(packet: bytes) -> bool:
    """Whether ``packet`` is a CONNECT asking for protocol level 5."""
    if not packet or packet[0] != 0x10:
        return False
    start = 2
    while start < len(packet) and packet[start - 1] & 0x80:
        start += 1
    name_length = int.from_bytes(packet[start : start + 2], "big")
    level_at = start + 2 + name_length
    return level_at < len(packet) and packet[level_at] == 5


async def serve(port: int, host: str = "127.0.0.1") -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down cleanly."""
    from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
    from amqtt.broker import Broker

    class Replay(StreamReaderAdapter):  # type: ignore[misc]
        """amqtt's stream reader, giving back the packet already read first."""

        def __init__(self, reader: asyncio.StreamReader, first: bytes) -> None:
            super().__init__(reader)
            self._first = first

        async def read(self, n: int = -1) -> bytes:
            if not self._first:
                return bytes(await super().read(n))
            if n == -1:
                data, self._first = self._first, b""
                return data
            data, self._first = self._first[:n], self._first[n:]
            if len(data) < n:
                data += await super().read(n - len(data))
            return data

    broker = Broker(broker_config(port, host))

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await read_first_packet(reader)
        except (asyncio.IncompleteReadError, OSError):
            writer.close()
            return
        if is_mqtt5_connect(first):
            writer.write(REFUSE_MQTT5)
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        await broker.external_connected(
            Replay(reader, first), StreamWriterAdapter(writer), _LISTENER
        )

    # Bind first (a port in use fails before amqtt starts), serve once amqtt has started.
    server = await asyncio.start_server(connected, host, port, start_serving=False)
    await broker.start()
    await server.start_serving()
    print(f"amqtt broker listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    # Everything is in memory: a shutdown that hangs or fails loses nothing; say so and go.
    log = logging.getLogger("edgedl.demo.broker")
    try:
        await asyncio.wait_for(broker.shutdown(), SHUTDOWN_TIMEOUT_S)
    except asyncio.TimeoutError:
        log.warning("amqtt did not shut down in %.0f s; leaving anyway", SHUTDOWN_TIMEOUT_S)
    except Exception:
        log.exception("amqtt failed to shut down cleanly; leaving anyway")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--port N [--host H]``; exit code 0 after a clean stop."""
    parser = argparse.ArgumentParser(prog="python -m edgedl.demo.embedded_broker")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.port, args.host))
    except ImportError:
        print("amqtt is not installed: pip install 'edgedl[demo]'", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
