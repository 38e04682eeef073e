"""``edgedl loadtest``: load any Open Inference Protocol server and measure it.

Pure asyncio and NumPy: no TensorFlow, no edgedl component (an import-linter contract
keeps it so), so it runs wherever the SDK core is installed.
"""

from .http import Connection, Endpoint
from .requests import infer_requests, load_inputs
from .run import closed_loop, knee, model_metadata, open_loop, run_load

__all__ = [
    "Connection",
    "Endpoint",
    "closed_loop",
    "infer_requests",
    "knee",
    "load_inputs",
    "model_metadata",
    "open_loop",
    "run_load",
]
