"""The edgedl device agent: local inference, telemetry, model versions and pipelines.

Where each part's public API lives (docs/architecture.md has the picture):

- :mod:`edgedl.agent.config`: ``agent.toml`` (:class:`~edgedl.agent.config.AgentConfig`,
  :func:`~edgedl.agent.config.load_config`).
- :mod:`edgedl.agent.service`: :class:`~edgedl.agent.service.AgentRuntime`, the running agent
  that the HTTP app, gRPC, telemetry and rollout share.
- :mod:`edgedl.agent.serve`: ``edgedl agent serve`` (uvicorn, sd_notify, draining on SIGTERM).
- :mod:`edgedl.agent.app`: the HTTP API (Open Inference Protocol v2, metrics, admin routes).
- :mod:`edgedl.agent.telemetry`, :mod:`edgedl.agent.rollout`, :mod:`edgedl.agent.pipeline`:
  telemetry windows over MQTT, model versions on the device, streaming pipelines.

Neither the agent's install nor its imports pull TensorFlow, Keras or torch
(tests/test_packaging.py checks both).
"""
