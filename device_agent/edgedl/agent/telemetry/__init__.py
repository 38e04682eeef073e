"""Telemetry windows over MQTT with a durable spool.

:class:`~.service.TelemetryService` is the one class the agent starts; its parts are
:class:`~.window.WindowBuilder` (an inference observer that aggregates a window),
:class:`~.spool.Spool` (SQLite; windows wait there until the broker's PUBACK) and
:class:`~.publisher.Publisher` (paho-mqtt, QoS 1, persistent session, TLS, last will).
Import them from their modules: loading the agent's configuration (``.config``) must not pull
in paho or NumPy. See docs/agent-telemetry.md.
"""
