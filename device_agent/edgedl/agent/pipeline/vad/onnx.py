"""The ``onnx`` VAD engine: Silero VAD (or a model with its interface) in ONNX Runtime.

Silero VAD v5/v6 takes 512 samples at 16 kHz (256 at 8 kHz) preceded by the last 64 (32)
samples of the previous chunk, a recurrent ``state`` tensor of shape (2, batch, 128) and the
sample rate; it returns a speech probability and the next state. The state is carried from
chunk to chunk, which is what makes it a streaming model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edgedl.errors import ConfigError

from ..stream import Samples

SILERO_INPUTS = {"input", "state", "sr"}


def silero_model_path() -> Path:
    """Where the silero-vad package keeps ``silero_vad.onnx`` (without importing it: torch)."""
    spec = importlib.util.find_spec("silero_vad")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    raise ConfigError(
        "the onnx VAD needs silero_vad.onnx: pip install --no-deps silero-vad, "
        "or set model_path to an ONNX VAD file"
    )


def resolve_model_path(model_path: str | None, base_dir: str) -> Path:
    """``model_path`` relative to the config file, or Silero's bundled model."""
    if model_path is None:
        return silero_model_path()
    path = Path(base_dir) / Path(model_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"onnx VAD model not found: {path}")
    return path


class OnnxEngine:
    """Speech probability per chunk, with hysteresis: on above ``threshold``, off below
    ``neg_threshold`` (Silero's own default: ``threshold - 0.15``)."""

    def __init__(
        self,
        model_path: Path,
        sample_rate: int,
        threshold: float = 0.5,
        neg_threshold: float | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise ConfigError(
                f"cannot load ONNX VAD {model_path}: {str(exc).splitlines()[0]}"
            ) from exc
        names = {i.name for i in self._session.get_inputs()}
        if not names >= SILERO_INPUTS:
            raise ConfigError(
                f"{model_path} is not an ONNX VAD with Silero's interface "
                f"(inputs {sorted(names)}, expected {sorted(SILERO_INPUTS)})"
            )
        self.frame_size = 512 if sample_rate == 16000 else 256
        self._context_size = 64 if sample_rate == 16000 else 32
        self._sr = np.array(sample_rate, dtype=np.int64)
        self.threshold = threshold
        self.neg_threshold = (
            neg_threshold if neg_threshold is not None else max(threshold - 0.15, 0.01)
        )
        self.last_probability = 0.0
        self.reset()

    def reset(self) -> None:
        """Zero the recurrent state and the context (a new stream)."""
        self._state: Any = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(self._context_size, dtype=np.float32)
        self._speaking = False

    def is_speech(self, frame: Samples) -> bool:
        """Run one chunk, carry the state on, apply the hysteresis."""
        x = np.concatenate([self._context, frame.astype(np.float32, copy=False)])[None, :]
        prob, self._state = self._session.run(
            None, {"input": x, "state": self._state, "sr": self._sr}
        )[:2]
        self._context = x[0, -self._context_size :]
        p = float(np.asarray(prob).reshape(-1)[0])
        self.last_probability = p
        if p >= self.threshold:
            self._speaking = True
        elif p < self.neg_threshold:
            self._speaking = False
        return self._speaking
