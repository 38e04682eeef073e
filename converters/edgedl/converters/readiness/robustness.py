"""The robustness suite: corrupted and broken inputs through the artifact and its reference.

For every corruption at every severity: accuracy of the artifact and of the float
reference, their top-1 agreement, and how often the artifact is confidently wrong (top-1
probability ≥ 0.9 and wrong). For every garbage tensor (:data:`~.corruptions.GARBAGE`):
what the artifact does locally, and, when an agent URL is given, what a running
``edgedl agent serve`` answers to it over HTTP (status, error, and the warnings it counted).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .corruptions import GARBAGE, SEVERITIES, InputKind, corruptions_for
from .metrics import CONFIDENT, agreement, as_probabilities, predictions

Scorer = Callable[[NDArray[np.float32]], NDArray[Any]]
"""A model as the suite sees it: a float batch in, class scores (batch, classes) out."""

NONFINITE_METRIC = "edgedl_input_nonfinite_values_total"


def _summary(
    scores: NDArray[Any], y: NDArray[np.int64] | None, reference: NDArray[Any] | None
) -> dict[str, Any]:
    top, conf = predictions(as_probabilities(scores))
    row: dict[str, Any] = {"confident_rate": float(np.mean(conf >= CONFIDENT))}
    if y is not None:
        wrong = top != y
        row["accuracy"] = float(np.mean(~wrong))
        row["confidently_wrong_rate"] = float(np.mean(wrong & (conf >= CONFIDENT)))
    if reference is not None:
        row["agreement"] = agreement(reference, scores)
        if y is not None:
            ref_top, _ = predictions(as_probabilities(reference))
            row["reference_accuracy"] = float(np.mean(ref_top == y))
    return row


def corruption_suite(
    x: NDArray[np.float32],
    y: NDArray[np.int64] | None,
    kind: InputKind,
    artifact: Scorer,
    reference: Scorer | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (corruption, severity), after a ``clean`` row at severity 0."""
    value_range = (float(x.min()), float(x.max()))
    rows = [
        {"corruption": "clean", "severity": 0, "level": None, "unit": "",
         **_summary(artifact(x), y, reference(x) if reference else None)}
    ]  # fmt: skip
    for corruption in corruptions_for(kind):
        for severity in SEVERITIES:
            rng = np.random.default_rng([seed, severity])
            bad = corruption(x, severity, rng, value_range)
            rows.append(
                {"corruption": corruption.name, "severity": severity,
                 "level": corruption.levels[severity - 1], "unit": corruption.unit,
                 **_summary(artifact(bad), y, reference(bad) if reference else None)}
            )  # fmt: skip
    return rows


def garbage_suite(
    x: NDArray[np.float32], artifact: Scorer, samples: int = 16, seed: int = 0
) -> list[dict[str, Any]]:
    """What the artifact does, on this machine, with each garbage tensor."""
    clean = x[:samples]
    value_range = (float(x.min()), float(x.max()))
    rows = []
    for g in GARBAGE.values():
        tensor = g.batch(clean, value_range, np.random.default_rng(seed))
        row: dict[str, Any] = {"input": g.name, "description": g.description}
        try:
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf cast to int8 on purpose
                scores = np.asarray(artifact(tensor), dtype=np.float64)
        except Exception as exc:  # the runtime's own refusal is the finding
            row["local"] = f"refused: {_one_line(exc)}"
        else:
            nonfinite = int(np.sum(~np.isfinite(scores)))
            top, conf = predictions(as_probabilities(scores))
            row["local"] = f"{len(scores)} predictions" + (
                f", {nonfinite} NaN/Inf scores" if nonfinite else ""
            )
            row["confident_rate"] = float(np.mean(conf >= CONFIDENT)) if len(conf) else 0.0
            row["predicted_classes"] = np.bincount(top[top >= 0]).tolist() if top.size else []
        rows.append(row)
    return rows


def probe_agent(
    url: str,
    model: str,
    input_name: str,
    x: NDArray[np.float32],
    samples: int = 4,
    seed: int = 0,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Send each garbage tensor to a running agent (binary tensors); record what it answers.

    Each row: HTTP ``status``, the agent's ``error`` message or the number of predictions,
    and ``warnings``: how much the agent's NaN/Inf counter rose (``nonfinite = "count"``).
    """
    import httpx

    clean = x[:samples]
    value_range = (float(x.min()), float(x.max()))
    base = url.rstrip("/")
    rows = []
    with httpx.Client(timeout=timeout) as client:
        for g in GARBAGE.values():
            tensor = np.asarray(g.batch(clean, value_range, np.random.default_rng(seed)))
            body, headers = _binary_request(input_name, tensor)
            before = _counter(client, base, NONFINITE_METRIC)
            row: dict[str, Any] = {"input": g.name}
            try:
                response = client.post(
                    f"{base}/v2/models/{model}/infer", content=body, headers=headers
                )
            except httpx.HTTPError as exc:
                row.update(status=0, answer=f"no answer: {_one_line(exc)}")
                rows.append(row)
                continue
            row["status"] = response.status_code
            if response.status_code == 200:
                outputs = _json_head(response).get("outputs", [])
                shape = outputs[0]["shape"] if outputs else []
                row["answer"] = f"{shape[0] if shape else 0} predictions"
            else:
                row["answer"] = str(_json_head(response).get("error", response.text[:200]))
            row["warnings"] = _counter(client, base, NONFINITE_METRIC) - before
            rows.append(row)
        row = {"input": "agent alive afterwards"}
        try:
            row["status"] = client.get(f"{base}/v2/health/ready").status_code
        except httpx.HTTPError as exc:
            row["status"] = 0
            row["answer"] = f"no answer: {_one_line(exc)}"
        rows.append(row)
    return rows


def _binary_request(name: str, x: NDArray[Any]) -> tuple[bytes, dict[str, str]]:
    blob = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": name, "shape": list(x.shape), "datatype": "FP32",
                 "parameters": {"binary_data_size": len(blob)}}
            ]
        }
    ).encode()  # fmt: skip
    return header + blob, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def _json_head(response: Any) -> dict[str, Any]:
    length = response.headers.get("Inference-Header-Content-Length")
    body = response.content[: int(length)] if length else response.content
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _counter(client: Any, base: str, name: str) -> float:
    """The sum of a counter's samples on the agent's /metrics (0 when absent)."""
    try:
        text = client.get(f"{base}/metrics").text
    except Exception:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
