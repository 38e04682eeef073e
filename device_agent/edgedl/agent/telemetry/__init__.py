"""Telemetry windows over MQTT with a durable spool (issue #4)."""
