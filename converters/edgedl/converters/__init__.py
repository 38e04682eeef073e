"""The edgedl converters: a trained model becomes a quantized, validated bundle.

Public API::

    from edgedl.converters import convert, ConvertOptions, TARGETS
    result = convert("digits.keras", ConvertOptions(target="tflite-int8", calibration=...))
"""

from . import to_onnx, to_tflite  # noqa: F401  (each registers its targets)
from .convert import ConvertOptions, ConvertResult, convert
from .data import Dataset, load_dataset
from .targets import TARGETS, Target, get_target

__all__ = [
    "TARGETS",
    "ConvertOptions",
    "ConvertResult",
    "Dataset",
    "Target",
    "convert",
    "get_target",
    "load_dataset",
]
