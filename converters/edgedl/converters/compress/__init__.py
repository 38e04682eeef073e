"""Make a Keras model smaller before quantization: pruning, distillation, low rank, clustering.

Public API::

    from edgedl.converters.compress import compress, CompressOptions
    result = compress("kws.keras", CompressOptions(method="prune", data=..., validation=...,
                                                  output=Path("kws-pruned.keras"), ratio=0.5))
"""

from .measure import artifact_parameters, keras_macs, keras_parameters
from .options import METHODS, CompressOptions
from .outcome import CompressResult
from .run import compress

__all__ = [
    "METHODS",
    "CompressOptions",
    "CompressResult",
    "artifact_parameters",
    "compress",
    "keras_macs",
    "keras_parameters",
]
