"""Import TensorFlow without its start-up chatter on the user's terminal."""

from __future__ import annotations

import os
import sys
from typing import Any

from edgedl.runtime import quiet_tensorflow


def import_tensorflow() -> Any:
    """``import tensorflow`` with stderr silenced while it loads (absl and CUDA-probe lines).

    Only the import itself is silenced: errors raised by it still propagate as exceptions.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet_tensorflow()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def seed_training(seed: int) -> None:
    """Make Keras training repeatable: seed Python, NumPy and TensorFlow, deterministic ops.

    ``keras.utils.set_random_seed`` alone leaves TensorFlow free to pick kernels whose
    floating-point reduction order depends on thread scheduling, so two runs with the same
    seed can train different weights. Op determinism removes that (at a small cost in speed),
    so a model trained by an example or a test is the same model on every run of one machine.
    """
    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
