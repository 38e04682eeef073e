"""Benchmark samples for retraining: what leaves the device with ``[sampling]`` off and on.

* **Window size**: one telemetry window of ``--window`` inferences (zstd), cut with sampling
  off and with a :class:`Sampler` keeping every inference: samples travel on their own topic,
  so the window must not change.
* **Sample message size**: the mean bytes of one ``/samples`` message (a digits input, 8x8x1
  float32, as JSON with the tensor in base64) and of one late-label message.
* **Serving-thread time**: what :meth:`Sampler.offer` costs the request that is sampled (the
  copy into the queue) and the one that is not, per batch-1 request (best of 3).

Data: scikit-learn's digits; a logistic regression's 10-class probabilities stand in for the
model's output. Writes bench/results/sampling.json.

Usage: python bench/sampling.py [--window 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from edgedl.agent.telemetry.accumulators import ModelInfo
from edgedl.agent.telemetry.sampling import Sampler, SamplingConfig
from edgedl.agent.telemetry.spool import Spool
from edgedl.agent.telemetry.window import WindowBuilder
from edgedl.profile import Profile
from edgedl.telemetry import encode_window

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sampling.json"


def run(
    folder: Path, reference: Profile, x: np.ndarray[Any, Any], probs: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any], sampling: bool,
) -> tuple[int, list[int], list[int]]:  # fmt: skip
    """Window bytes, sample message sizes and label message sizes of one window's traffic."""
    builder = WindowBuilder("bench", "pi-1")
    builder.register(ModelInfo("digits", "1", "a" * 64, reference=reference))
    sampler = None
    if sampling:
        config = SamplingConfig(rate=1.0, max_per_hour=len(x), max_disk_bytes=10**9,
                                queue_size=len(x) * 2)  # fmt: skip
        sampler = Sampler(config, Spool(folder / "s.db", 10**9), "bench", "pi-1")
    for i in range(len(x)):
        inputs, outputs = {"image": x[i : i + 1]}, {"probs": probs[i : i + 1]}
        builder.on_batch("digits", "1", 1, 0.001, inputs, outputs)
        builder.on_request("digits", "1", 0.001, True)
        if sampler is not None:
            sampler.offer("digits", "1", f"r{i}", inputs, outputs)
            sampler.on_label(f"r{i}", [int(y[i])])
    payload, _ = encode_window(builder.cut(seq=0))
    if sampler is None:
        return len(payload), [], []
    sampler.start()
    sampler.stop()
    messages = [w.payload for w in sampler.spool.pending(10 * len(x))]
    samples = [len(m) for m in messages if b'"kind":"sample"' in m]
    labels = [len(m) for m in messages if b'"kind":"label"' in m]
    return len(payload), samples, labels


def offer_time(x: np.ndarray[Any, Any], probs: np.ndarray[Any, Any], rate: float) -> float:
    """Serving-thread seconds per batch-1 request offered (the writer thread not started)."""
    config = SamplingConfig(rate=rate, max_per_hour=10**9, queue_size=100_000)
    with tempfile.TemporaryDirectory() as tmp:
        sampler = Sampler(config, Spool(Path(tmp) / "s.db", 10**9), "b", "d",
                          rng=random.Random(1))  # fmt: skip
        start = time.perf_counter()
        for i in range(len(x)):
            sampler.offer("digits", "1", None, {"image": x[i : i + 1]}, {"probs": probs[i : i + 1]})
        return (time.perf_counter() - start) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=1000)
    args = parser.parse_args()
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target
    model = LogisticRegression(max_iter=2000).fit(x[:1000].reshape(1000, -1), y[:1000])
    probs = model.predict_proba(x.reshape(len(x), -1)).astype(np.float32)
    reference = Profile.from_reference({"image": x[1000:1400]}, {"probs": probs[1000:1400]})
    n = args.window
    with tempfile.TemporaryDirectory() as tmp:
        off, _, _ = run(Path(tmp), reference, x[:n], probs[:n], y[:n], False)
        on, samples, labels = run(Path(tmp), reference, x[:n], probs[:n], y[:n], True)
    chosen = min(offer_time(x[:n], probs[:n], 1.0) for _ in range(3))
    passed = min(offer_time(x[:n], probs[:n], 0.0) for _ in range(3))
    sample_bytes = float(np.mean(samples))
    label_bytes = float(np.mean(labels))
    print(f"window of {n} inferences, zstd: sampling off {off} bytes, sampling on {on} bytes")
    print(f"one sample message (8x8x1 float32 input): {sample_bytes:.0f} bytes")
    print(f"one late-label message: {label_bytes:.0f} bytes")
    print(f"at max_per_hour = 100 (the default): {100 * sample_bytes / 1000:.1f} kB an hour")
    print(f"serving thread per request: sampled {chosen * 1e6:.1f} us, not sampled "
          f"{passed * 1e6:.1f} us")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()} {platform.processor()} ({platform.system()})",
                "python": platform.python_version(),
                "window_inferences": n,
                "window_bytes_sampling_off": off,
                "window_bytes_sampling_on": on,
                "sample_message_bytes": sample_bytes,
                "label_message_bytes": label_bytes,
                "offer_us_sampled": chosen * 1e6,
                "offer_us_not_sampled": passed * 1e6,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
