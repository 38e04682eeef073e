"""The ranges of docs/telemetry.md: at each limit a window is accepted, past it refused by name."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from edgedl.errors import TelemetryError
from edgedl.telemetry import (
    MAX_COUNT,
    MAX_TIMESTAMP,
    MAX_VALUE,
    MAX_WINDOW_S,
    TelemetryWindow,
    decode_status,
    decode_window,
    latency_histogram,
)

NOW = time.time()


def _window(**changes: Any) -> dict[str, Any]:
    lat = latency_histogram()
    lat.add([1.0, 2.0, 40.0])
    body: dict[str, Any] = {
        "fleet": "f",
        "device": "d",
        "seq": 0,
        "window_start": NOW - 60,
        "window_end": NOW,
        "models": [
            {
                "name": "m",
                "version": "1",
                "sha256": "ab" * 32,
                "counts": {"requests": 3, "inferences": 3},
                "latency_ms": lat.to_dict(),
                "batch_size": {
                    "edges": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    "counts": [0, 3, 0, 0, 0, 0, 0, 0, 0, 0],
                    "count": 3,
                    "sum": 3.0,
                    "sum_sq": 3.0,
                },
            }
        ],
    }
    for path, value in changes.items():
        node = body
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return body


def _decode(body: dict[str, Any]) -> TelemetryWindow:
    return decode_window(json.dumps(body).encode())


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({"window_start": 0.0, "window_end": 0.0}, None),
        ({"window_start": -1.0}, "window_start: Input should be greater than or equal to 0"),
        ({"window_end": MAX_TIMESTAMP + 1}, "window_end: Input should be less than or equal"),
        ({"window_start": NOW - MAX_WINDOW_S}, None),
        ({"window_start": NOW - MAX_WINDOW_S - 1}, "the window is longer than 2.6784e+06 s"),
        ({"models.0.counts.errors": MAX_COUNT}, None),
        ({"models.0.counts.errors": MAX_COUNT + 1}, "models.0.counts.errors: Input should be"),
        ({"models.0.latency_ms.count": 4}, "count 4 is not the sum of the bin counts (3)"),
        ({"models.0.batch_size.sum": 3 * 256.0}, None),  # inner values may all be 256
        ({"models.0.batch_size.sum": 3 * 256.0 + 1}, "sum 769 cannot come from these bins"),
        ({"models.0.batch_size.sum": 1.0}, "sum 1 cannot come from these bins"),
        ({"models.0.batch_size.sum_sq": -1e-300}, "sum_sq -1e-300 cannot come from these bins"),
        ({"models.0.batch_size.sum_sq": 4 * 3 + 1}, None),  # within the looser square bound
        ({"models.0.batch_size.sum_sq": 3 * 256.0**2 + 1}, "sum_sq 196609 cannot come"),
        ({"system": {"memory_rss_bytes": 2**49}}, "system.memory_rss_bytes: Input should be"),
        ({"pipelines": {"p": {"s": {"n": MAX_VALUE * 10}}}}, "pipeline figure 'n' must be"),
        ({"samples": [{"x": 1e300}]}, "samples: numbers must be finite, within +-1e+100"),
        ({"samples": [{"x": "y" * 1025}]}, "samples: strings must be at most 1024 characters"),
        ({"samples": [{f"input/x/f{i}": 0.5 for i in range(80)}] * 64}, None),
    ],
)
def test_each_range_at_and_past_its_limit(changes: dict[str, Any], refused: str | None) -> None:
    body = _window(**changes)
    if refused is None:
        _decode(body)
        return
    with pytest.raises(TelemetryError) as err:
        _decode(body)
    assert refused in str(err.value)


def test_values_in_the_open_bins_may_reach_max_value() -> None:
    """A value of 1e100 above the last edge is in range; the sum says so exactly."""
    body = _window()
    hist = body["models"][0]["batch_size"]
    hist.update(counts=[0, 3, 0, 0, 0, 0, 0, 0, 0, 1], count=4)
    hist.update(sum=3.0 + MAX_VALUE, sum_sq=3.0 + MAX_VALUE**2)
    assert _decode(body).models[0].batch_size.sum == 3.0 + MAX_VALUE
    hist.update(sum=3.0 + 2 * MAX_VALUE)
    with pytest.raises(TelemetryError, match="sum 2e\\+100 cannot come from these bins"):
        _decode(body)


def test_a_status_holds_only_bounded_numbers() -> None:
    base = {"fleet": "f", "device": "d", "online": True, "since": NOW}
    assert decode_status(json.dumps({**base, "rollout": {"a": {"b": {"c": 1}}}}).encode())
    for rollout, refused in [
        ({"x": float("nan")}, "rollout: numbers must be finite"),
        ({"x": 10**400}, "rollout: numbers must be finite"),
        ({"a": {"b": {"c": {"d": [1]}}}}, "rollout: nests too deep"),
    ]:
        with pytest.raises(TelemetryError, match=refused):
            decode_status(json.dumps({**base, "rollout": rollout}).encode())
    with pytest.raises(TelemetryError, match="since: Input should be less than or equal"):
        decode_status(json.dumps({**base, "since": MAX_TIMESTAMP * 2}).encode())
