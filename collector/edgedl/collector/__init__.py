"""The edgedl collector: stores telemetry windows, computes drift, raises alerts, rolls out versions.

Where each part's public API lives (docs/collector.md has the picture):

- :mod:`edgedl.collector.config`: ``collector.toml``
  (:class:`~edgedl.collector.config.CollectorConfig`).
- :mod:`edgedl.collector.service`: :class:`~edgedl.collector.service.Collector`, the whole
  collector as one object (``Collector(config).start()`` / ``stop()``).
- :mod:`edgedl.collector.store`: :class:`~edgedl.collector.store.Store` (SQLite or
  PostgreSQL) and :mod:`edgedl.collector.ingest`: windows in, dead letters out.
- :mod:`edgedl.collector.api`: the HTTP API under ``/api/v1`` and the dashboard.
- :mod:`edgedl.collector.fleet`: desired versions and rollout waves.
"""
