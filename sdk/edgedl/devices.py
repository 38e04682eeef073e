"""Named device profiles: the defaults a target device implies.

A profile picks the conversion target, the runtime, the thread count and (for ONNX Runtime)
the execution providers, so ``edgedl convert model.keras --device rpi4`` does the right thing
without the user knowing each board's quirks. ``edgedl devices`` lists this registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class DeviceProfile:
    """What edgedl assumes about one kind of device."""

    name: str
    description: str
    default_target: str
    runtime: str
    threads: int
    execution_providers: tuple[str, ...] = field(default_factory=tuple)
    io_dtype: str | None = None  # "uint8" for Edge TPU style integer I/O
    # The device's CPU as platform.machine() names it; None where an accelerator runs the
    # whole model (the Edge TPU), so no CPU's timing stands for it.
    machine: str | None = "aarch64"
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the profile."""
        d = asdict(self)
        d["execution_providers"] = list(self.execution_providers)
        return d


_CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
_TRT = ("TensorrtExecutionProvider", *_CUDA)

DEVICES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            "rpi4",
            "Raspberry Pi 4 (Cortex-A72, 4 cores, aarch64)",
            "tflite-int8",
            "litert",
            threads=4,
            notes="LiteRT with XNNPACK; int8 is the fastest path on the A72.",
        ),
        DeviceProfile(
            "rpi5",
            "Raspberry Pi 5 (Cortex-A76, 4 cores, aarch64)",
            "tflite-int8",
            "litert",
            threads=4,
            notes="LiteRT with XNNPACK.",
        ),
        DeviceProfile(
            "jetson-orin",
            "NVIDIA Jetson Orin (Ampere GPU, JetPack 6)",
            "onnx-fp16",
            "onnxruntime",
            threads=6,
            execution_providers=_TRT,
            notes="ONNX Runtime GPU build from NVIDIA's Jetson wheels; TensorRT EP with fp16.",
        ),
        DeviceProfile(
            "jetson-nano",
            "NVIDIA Jetson Nano (Maxwell GPU, JetPack 4)",
            "onnx-fp16",
            "onnxruntime",
            threads=4,
            execution_providers=_CUDA,
            notes="CUDA EP; TensorRT 8.2 on JetPack 4 is too old for many opsets.",
        ),
        DeviceProfile(
            "coral",
            "Google Coral Edge TPU (Dev Board / USB accelerator)",
            "tflite-int8",
            "litert",
            threads=4,
            io_dtype="uint8",
            machine=None,
            notes="Full-integer uint8 I/O; run edgetpu_compiler on the model file afterwards.",
        ),
        DeviceProfile(
            "x86",
            "x86-64 server or gateway (AVX2/AVX-512 VNNI)",
            "onnx-int8",
            "onnxruntime",
            threads=0,
            execution_providers=("CPUExecutionProvider",),
            machine="x86_64",
            notes="threads=0 lets ONNX Runtime use every core.",
        ),
    )
}


def get_device(name: str) -> DeviceProfile:
    """The profile called ``name``; :class:`UsageError` naming the known ones otherwise."""
    try:
        return DEVICES[name]
    except KeyError:
        raise UsageError(f"unknown device {name!r} (known: {', '.join(sorted(DEVICES))})") from None
