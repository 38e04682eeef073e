"""The ``model`` stage: each window (samples or features) through a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedl import runtime
from edgedl.errors import ConfigError

from .stream import Stage, Window


class ModelStage(Stage):
    """Run a batch of windows through a bundle; each window's data becomes its float scores.

    The runtime quantizes the inputs and dequantizes the outputs with the manifest's
    parameters, so an int8 bundle takes the same features as its float original.
    """

    unit_in = "windows"
    unit_out = "windows"

    def __init__(
        self, name: str, bundle: str | Path, threads: int = 1, backend: str | None = None
    ) -> None:
        super().__init__(name)
        self.runner = runtime.load(bundle, threads=threads, backend=backend)
        if len(self.runner.inputs) != 1 or len(self.runner.outputs) != 1:
            raise ConfigError(
                f"{bundle}: a pipeline model needs one input and one output "
                f"(this one has {len(self.runner.inputs)} and {len(self.runner.outputs)})"
            )
        self.input_shape = tuple(self.runner.inputs[0].sample_shape)
        self.labels: list[str] | None = self.runner.manifest.labels

    def check_window_shape(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`ConfigError` unless windows of ``shape`` fit the model's input."""
        known = [d for d in self.input_shape if d != -1]
        size = int(np.prod(shape))
        fits = (
            size % int(np.prod(known)) == 0
            if -1 in self.input_shape
            else size == int(np.prod(known))
        )
        if not fits or list(self.input_shape).count(-1) > 1:
            raise ConfigError(
                f"the model takes {list(self.input_shape)} per sample but the stage before "
                f"gives {list(shape)}: check the window length and the features' options"
            )

    def _process(self, items: list[Any]) -> list[Any]:
        windows: list[Window] = items
        x = np.stack([w.data for w in windows]).reshape((len(windows), *self.input_shape))
        scores = self.runner.predict(x).reshape(len(windows), -1)
        return [Window(w.start, w.end, w.segment, s) for w, s in zip(windows, scores, strict=True)]
