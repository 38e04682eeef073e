"""The Open Inference Protocol's gRPC API (KServe v2 ``inference.GRPCInferenceService``).

``messages`` (the protobuf messages), ``tensors`` (messages <-> arrays), ``service`` (the
RPCs over the served models) and ``server`` (the listener beside the HTTP API).
"""
