"""Bundles for the rollout tests: real digits versions, and candidates that are bad for real.

Import the fixtures into a test module::

    from tests.agent.rollout_fixtures import failing_digits, slow_digits  # noqa: F401

* ``failing_digits``: the real digits ONNX model whose manifest claims an int8 input, so the
  runtime feeds int8 to a float model and ONNX Runtime raises on every request (a valid
  bundle whose sha256 matches: only inference fails).
* ``slow_digits``: an ONNX model with the digits inputs and outputs that runs a dozen
  1024x1024 matrix products per sample: far slower than the digits CNN.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgedl.bundle import MANIFEST_FILE, Bundle, Manifest, sha256_file, write_bundle


def as_version(bundle: Path, out: Path, version: str) -> Path:
    """A copy of ``bundle`` under another version (the model file is unchanged)."""
    dest = out / f"{Bundle.open(bundle).manifest.name}-v{version}"
    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    manifest["version"] = version
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dest


def tamper(model_file: Path) -> None:
    """Flip one byte in the middle of a model file."""
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))


def digits_samples(n: int = 40) -> np.ndarray:
    """Real held-out digits images, shaped (n, 8, 8, 1), in [0, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images[-n:] / 16.0
    return images.astype(np.float32)[..., None]


@pytest.fixture(scope="session")
def failing_digits(digits_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("failing")
    dest = as_version(Path(digits_bundle("onnx-fp32", version="2")), out, "failing")
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    manifest["inputs"][0]["dtype"] = "int8"
    manifest["inputs"][0]["quantization"] = {"scale": 1 / 255, "zero_point": -128}
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    Bundle.open(dest)  # a valid, verified bundle
    return dest


@pytest.fixture(scope="session")
def slow_digits(digits_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    from onnx import TensorProto, helper, numpy_helper

    out = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(0)

    def const(name: str, value: np.ndarray) -> object:
        return numpy_helper.from_array(value, name)

    layers = 12
    inits = [
        const("w_in", (rng.standard_normal((1, 1024)) * 0.1).astype(np.float32)),
        const("w", (rng.standard_normal((1024, 1024)) / 32).astype(np.float32)),
        const("w_out", (rng.standard_normal((1024, 10)) / 32).astype(np.float32)),
        const("column", np.array([-1, 1], dtype=np.int64)),
        const("per_sample", np.array([-1, 64, 10], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Reshape", ["pixels", "column"], ["h"]),
        helper.make_node("MatMul", ["h", "w_in"], ["a0"]),
        *[helper.make_node("MatMul", [f"a{i}", "w"], [f"a{i + 1}"]) for i in range(layers)],
        helper.make_node("MatMul", [f"a{layers}", "w_out"], ["o"]),
        helper.make_node("Reshape", ["o", "per_sample"], ["o3"]),
        helper.make_node("ReduceMean", ["o3"], ["output_0"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_digits",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 8, 8, 1])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["n", 10])],
        inits,  # type: ignore[arg-type]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model_file = out / "slow.onnx"
    model_file.write_bytes(model.SerializeToString())
    like = Bundle.open(digits_bundle("onnx-fp32", version="2")).manifest
    manifest = Manifest.model_validate(
        {
            **like.model_dump(),
            "version": "slow",
            "model_file": "model.onnx",
            "sha256": sha256_file(model_file),
            "size_bytes": model_file.stat().st_size,
        }
    )
    return write_bundle(out / "slow-digits", model_file, manifest, {}).path
