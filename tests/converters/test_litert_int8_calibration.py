"""How edgedl quantizes a PyTorch model's float ``.tflite`` to int8, on EfficientNet-Lite0:
activation ranges that hold every calibration sample, and bias correction of the weights'
rounding onto ai-edge-quantizer's own grid; each takes back error the quantized model shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgedl.converters.bias_correction import correct_biases, int8_weight_grid
from edgedl.converters.litert_ranges import minmax_ranges

pytestmark = pytest.mark.slow  # traces EfficientNet-Lite0 with torch.export, quantizes it 7 times


@pytest.fixture(scope="module")
def effl0_float(photo_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """EfficientNet-Lite0 as litert-torch writes it: a float ``.tflite`` whose signature takes
    ``input`` and gives ``logits``."""
    import litert_torch
    import torch

    from edgedl.converters.efficientnet_lite0 import make_model

    class Named(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.inner = make_model()

        def forward(self, input: Any) -> dict[str, Any]:
            return {"logits": self.inner(input)}

    sample = torch.from_numpy(np.load(photo_sets[0])[:1])
    out = tmp_path_factory.mktemp("effl0-float") / "fp32.tflite"
    litert_torch.convert(Named().eval(), sample_kwargs={"input": sample}).export(str(out))
    return out.read_bytes()


def _quantize(model: bytes, recipe: Any, calibration: list[dict[str, Any]] | None) -> bytes:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(model)
    q.load_quantization_recipe(recipe)
    ranges = q.calibrate({"serving_default": calibration}) if calibration else None
    return bytes(q.quantize(ranges).quantized_model)


def _logits(model: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model).get_signature_runner()
    spec = runner.get_input_details()["input"]
    out = runner.get_output_details()["logits"]
    rows = []
    for sample in x:
        feed = sample[None]
        if spec["dtype"] != np.float32:
            scale, zero = spec["quantization"]
            feed = np.clip(np.round(feed / scale) + zero, -128, 127).astype(spec["dtype"])
        y = runner(input=feed)["logits"].astype(np.float32)
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * np.float32(scale)
        rows.append(y)
    return np.concatenate(rows)


def _sqnr(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - other) ** 2).sum()))


def test_the_weight_grid_is_ai_edge_quantizers(effl0_float: bytes) -> None:
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer import recipe

    quantized = flatbuffer_utils.read_model_from_bytearray(
        bytearray(_quantize(effl0_float, recipe.weight_only_wi8_afp32(), None))
    )
    original = flatbuffer_utils.read_model_from_bytearray(bytearray(effl0_float))
    floats = {
        t.name: np.frombuffer(bytes(original.buffers[t.buffer].data), np.float32).reshape(t.shape)
        for t in original.subgraphs[0].tensors
        if t.buffer and original.buffers[t.buffer].data is not None and t.type == 0
    }
    checked = 0
    for t in quantized.subgraphs[0].tensors:
        if t.type != 9 or t.name not in floats:  # int8 weights of a float tensor
            continue
        q = t.quantization
        ints = np.frombuffer(bytes(quantized.buffers[t.buffer].data), np.int8).reshape(t.shape)
        shape = [1] * ints.ndim
        shape[q.quantizedDimension] = -1
        dequantized = ints * np.asarray(q.scale, np.float32).reshape(shape)
        ours = int8_weight_grid(floats[t.name], axis=q.quantizedDimension)
        np.testing.assert_allclose(ours, dequantized, rtol=1e-5, atol=1e-7, err_msg=str(t.name))
        checked += 1
    assert checked == 50  # 33 convolutions, 16 depthwise, the classifier


def test_bias_correction_takes_back_the_error_of_rounding_weights(effl0_float: bytes) -> None:
    from ai_edge_quantizer import recipe

    from edgedl.converters.efficientnet_lite0 import photo_crops

    cal = [{"input": s[None]} for s in photo_crops(64, seed=0)]
    val = photo_crops(32, seed=1)
    corrected, what = correct_biases(effl0_float, cal)
    assert (what.layers, what.skipped, what.samples) == (50, 0, len(cal))
    assert 0 < what.max_relative_change < 1
    reference = _logits(effl0_float, val)
    # The float model itself is untouched where it matters: corrected biases change its
    # output only by the (small) shifts the rounding will take away again.
    assert _sqnr(reference, _logits(corrected, val)) > 15.0

    weights_only = recipe.weight_only_wi8_afp32()
    plain_w = _sqnr(reference, _logits(_quantize(effl0_float, weights_only, None), val))
    fixed_w = _sqnr(reference, _logits(_quantize(corrected, weights_only, None), val))
    plain_8 = _sqnr(reference, _logits(_quantize(effl0_float, recipe.static_wi8_ai8(), cal), val))
    fixed_8 = _sqnr(reference, _logits(_quantize(corrected, recipe.static_wi8_ai8(), cal), val))
    assert fixed_w > plain_w + 4.0, (plain_w, fixed_w)  # int8 weights, float activations
    assert fixed_8 > plain_8 + 1.5, (plain_8, fixed_8)  # full int8


def test_activation_ranges_hold_every_calibration_sample(effl0_float: bytes) -> None:
    """ai-edge-quantizer's own ``calibrate`` averages per-sample ranges and clips the wider
    samples; edgedl's ranges are the data's extremes, and the quantized model shows it."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from ai_edge_quantizer import quantizer, recipe

    from edgedl.converters.efficientnet_lite0 import photo_crops

    crops = photo_crops(64, seed=0)
    cal = [{"input": s[None]} for s in crops]
    q = quantizer.Quantizer(effl0_float)
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    ours = minmax_ranges(effl0_float, recipe.static_wi8_ai8(), cal)
    averaged = q.calibrate({"serving_default": cal})
    assert ours.keys() == averaged.keys()

    float_run = Interpreter(
        model_content=effl0_float,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    runner = float_run.get_signature_runner()
    index = {d["name"]: d["index"] for d in float_run.get_tensor_details()}
    names = [n for n in ours if n in index]
    low = {n: np.inf for n in names}
    high = {n: -np.inf for n in names}
    for sample in cal:
        runner(**sample)
        for n in names:
            value = float_run.get_tensor(index[n])
            low[n], high[n] = min(low[n], float(value.min())), max(high[n], float(value.max()))
    assert len(names) == len(ours) > 60  # every activation of the network
    clipped_ours = [n for n in names if low[n] < ours[n]["min"].min() - 1e-4
                    or high[n] > ours[n]["max"].max() + 1e-4]  # fmt: skip
    clipped_averaged = [n for n in names if high[n] > averaged[n]["max"].max() + 1e-4]
    assert clipped_ours == []
    assert len(clipped_averaged) > 10  # what the moving average would have clipped

    val = photo_crops(32, seed=1)
    reference = _logits(effl0_float, val)
    corrected, _ = correct_biases(effl0_float, cal)
    with_ours = _logits(bytes(q.quantize(ours).quantized_model), val)
    q_fixed = quantizer.Quantizer(corrected)
    q_fixed.load_quantization_recipe(recipe.static_wi8_ai8())
    both = _logits(
        bytes(q_fixed.quantize(minmax_ranges(corrected, recipe.static_wi8_ai8(), cal))
              .quantized_model), val
    )  # fmt: skip
    with_averaged = _logits(bytes(q.quantize(averaged).quantized_model), val)
    assert _sqnr(reference, with_ours) > _sqnr(reference, with_averaged) + 0.5
    # Both together: what tflite-int8 does.
    assert _sqnr(reference, both) > _sqnr(reference, with_averaged) + 4.0
    assert np.mean(both.argmax(1) == reference.argmax(1)) >= 0.85
