"""Benchmark late labels on the agent: CPU per inference, memory per prediction, window size.

Data: scikit-learn's 8x8 digits; a scikit-learn logistic regression stands in for the model
(its 10-class probabilities are the output tensor), so the figures are the agent's own code
paths, without a runtime's time in them:

* **CPU per inference** with label tracking on: what ``edgedl.agent.app`` adds to a batch-1
  request (``predicted_classes`` on the outputs, a new id, ``PredictionLog.record``), in
  process CPU time per request, over ``--requests`` requests, against the same loop without it;
  and the CPU of one label matched and counted into the window (its confusion cell and the
  digest of its id), without HTTP.
* **Memory per remembered prediction**: ``tracemalloc`` over a full log of
  ``--max-predictions`` predictions, and the forgotten-id list at its bound.
* **Window size**: one telemetry window of ``--window`` inferences (reference profile of the
  digits, as an agent with a bundle sends it), zstd-encoded as published, with no labels, with
  labels for 10% and for all of the inferences (the confusion cells and one 16-hex-digit id
  digest per labelled prediction).

Usage: python bench/labels.py [--requests 20000] [--max-predictions 10000] [--window 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from edgedl.agent.labels import PredictionLog
from edgedl.agent.telemetry.accumulators import ModelInfo
from edgedl.agent.telemetry.window import WindowBuilder
from edgedl.profile import Profile, predicted_classes
from edgedl.telemetry import encode_window

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "labels.json"


def cpu_per_request(outputs: list[dict[str, Any]], track: bool) -> float:
    log = PredictionLog(max_predictions=10_000)
    start = time.process_time()
    for out in outputs:
        if track:
            request_id = log.new_id()
            found = predicted_classes(out)
            assert found is not None
            classes, width = found
            log.record(request_id, "digits", "1", classes.tolist(), width)
    return (time.process_time() - start) / len(outputs)


def cpu_per_label(outputs: list[dict[str, Any]], reference: Profile) -> float:
    """Process CPU time of one accepted ``POST /v2/labels`` match: the log's lookup and the
    window's count (the confusion cell and the id's digest), without HTTP."""
    log = PredictionLog(max_predictions=len(outputs))
    builder = WindowBuilder("bench", "pi-1")
    builder.register(ModelInfo("digits", "1", "a" * 64, reference=reference))
    log.add_listener(builder)
    for i, out in enumerate(outputs):
        log.record(f"r{i}", "digits", "1", [int(np.argmax(out["probs"][0]))], 10)
    start = time.process_time()
    for i in range(len(outputs)):
        log.label(f"r{i}", i % 10)
        if i % 4000 == 3999:
            builder.cut(seq=i)  # as the window timer would: the ids stay within their cap
    return (time.process_time() - start) / len(outputs)


def memory_per_prediction(n: int) -> tuple[float, float]:
    log = PredictionLog(max_predictions=n)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        log.record(log.new_id(), "digits", "1", [i % 10], 10)
    full = tracemalloc.get_traced_memory()[0]
    for i in range(n):  # push them all out: the forgotten-id list fills to its bound
        log.record(log.new_id(), "digits", "1", [i % 10], 10)
    both = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (full - before) / n, (both - full) / n


def window_bytes(
    reference: Profile, x: np.ndarray[Any, Any], probs: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any], share: float,
) -> int:  # fmt: skip
    builder = WindowBuilder("bench", "pi-1")
    builder.register(ModelInfo("digits", "1", "a" * 64, reference=reference))
    log = PredictionLog(max_predictions=len(x))
    log.add_listener(builder)
    for i in range(len(x)):
        builder.on_batch(
            "digits", "1", 1, 0.001, {"image": x[i : i + 1]}, {"probs": probs[i : i + 1]}
        )
        builder.on_request("digits", "1", 0.001, True)
        log.record(f"r{i}", "digits", "1", [int(np.argmax(probs[i]))], probs.shape[1])
    for i in range(int(len(x) * share)):
        log.label(f"r{i}", int(y[i]))
    payload, _ = encode_window(builder.cut(seq=0))
    return len(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--max-predictions", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=1000)
    args = parser.parse_args()
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target
    model = LogisticRegression(max_iter=2000).fit(x[:1000].reshape(1000, -1), y[:1000])
    probs = model.predict_proba(x.reshape(len(x), -1)).astype(np.float32)
    reference = Profile.from_reference({"image": x[1000:1400]}, {"probs": probs[1000:1400]})
    outputs = [{"probs": probs[i % len(probs) : i % len(probs) + 1]} for i in range(args.requests)]

    cpu_on = min(cpu_per_request(outputs, True) for _ in range(3))
    cpu_off = min(cpu_per_request(outputs, False) for _ in range(3))
    per_prediction, per_forgotten = memory_per_prediction(args.max_predictions)
    sizes = {
        f"labels {int(share * 100)}%": window_bytes(
            reference, x[: args.window], probs[: args.window], y[: args.window], share
        )
        for share in (0.0, 0.1, 1.0)
    }
    label_us = min(cpu_per_label(outputs, reference) for _ in range(3)) * 1e6
    added_us = (cpu_on - cpu_off) * 1e6
    print(
        f"label tracking: {added_us:.1f} us of CPU per batch-1 request ({args.requests} requests)"
    )
    print(f"a label matched and counted in the window (digest included): {label_us:.1f} us")
    print(
        f"memory: {per_prediction:.0f} bytes per remembered prediction, "
        f"{per_forgotten:.0f} per forgotten id ({args.max_predictions} of each)"
    )
    print(f"window of {args.window} inferences, zstd:")
    for name, size in sizes.items():
        print(f"  {name:<12}{size:>8} bytes")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()} {platform.processor()} ({platform.system()})",
                "python": platform.python_version(),
                "requests": args.requests,
                "cpu_us_per_request_added": added_us,
                "cpu_us_per_label": label_us,
                "bytes_per_prediction": per_prediction,
                "bytes_per_forgotten_id": per_forgotten,
                "max_predictions": args.max_predictions,
                "window_inferences": args.window,
                "window_bytes": sizes,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
