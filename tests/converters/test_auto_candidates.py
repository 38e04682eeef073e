"""Which targets ``--target auto`` tries, on CPUs with and without VNNI."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgedl.converters import auto
from edgedl.converters.auto import candidates_for


@pytest.mark.parametrize("no_vnni", [True, False])
def test_onnx_candidates_add_u8u8_only_where_s8s8_kernels_saturate(
    no_vnni: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an x86-64 CPU without VNNI (the CPU probe says so) onnx-int8's S8S8 kernels saturate,
    so U8U8 joins the ONNX candidates right after it; TFLite candidates never change."""
    monkeypatch.setattr(auto, "x86_without_vnni", lambda: no_vnni)
    onnx_model = tmp_path / "model.onnx"
    onnx_model.write_bytes(b"")
    names = candidates_for(onnx_model, None)
    plain = ["onnx-int8", "onnx-fp16", "onnx-dynamic", "onnx-fp32"]
    assert names == (["onnx-int8", "onnx-int8-u8u8", *plain[1:]] if no_vnni else plain)
    keras_model = tmp_path / "model.keras"
    keras_model.write_bytes(b"")
    assert "onnx-int8-u8u8" not in candidates_for(keras_model, None)
