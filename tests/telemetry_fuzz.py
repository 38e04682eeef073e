"""Hypothesis strategies for the telemetry contract: extreme numbers in a window's fields.

A mutation is ``(path, value)``: the path names a number in a window (or status) as
``model_dump`` writes it, the value is an extreme JSON number (the largest and smallest
floats, subnormals, 2**62, 2**64, NaN and infinity as Python's json writes them) or any float
or integer at all. :func:`set_path` applies one to a window's dict.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

EXTREMES: list[Any] = [
    0,
    -0.0,
    -1,
    5e-324,
    2.2250738585072014e-308,
    1e100,
    -1e100,
    1.0000000000000002e100,
    1.7e308,
    -1.7976931348623157e308,
    2**31,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**62,
    2**63 - 1,
    2**64,
    float("nan"),
    float("inf"),
    float("-inf"),
]
# Mostly the extremes (four branches of six), sometimes any float or integer at all.
NUMBERS = st.one_of(
    *[st.sampled_from(EXTREMES)] * 4,
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
)

STAT = "input/image/mean"  # a statistic of the collector tests' reference profile
WINDOW_PATHS: list[tuple[Any, ...]] = [
    ("span",),  # window_start = -value, window_end = value
    ("seq",),
    ("window_start",),
    ("window_end",),
    *[("models", 0, "counts", k) for k in ("requests", "inferences", "errors", "rejected")],
    *[("models", 0, "latency_ms", k) for k in ("sum", "sum_sq", "count", "missing")],
    ("models", 0, "latency_ms", "counts", 3),
    ("models", 0, "batch_size", "sum"),
    ("models", 0, "profile", "samples"),
    *[("models", 0, "profile", "histograms", STAT, k) for k in ("sum", "sum_sq", "count")],
    ("models", 0, "profile", "histograms", STAT, "counts", 0),
    ("models", 0, "profile", "histograms", STAT, "counts", -1),
    ("models", 0, "profile", "histograms", STAT, "edges", 0),
    ("models", 0, "profile", "histograms", STAT, "edges", -1),
    ("models", 0, "profile", "class_counts", "output/probs", 0),
    *[("system", k) for k in ("cpu_percent", "memory_rss_bytes", "memory_percent")],
    ("system", "temperature_c"),
    ("spool", "pending"),
    ("spool", "dropped"),
    ("pipelines", "kws", "vad", "received"),
    ("samples",),
]
STATUS_PATHS: list[tuple[Any, ...]] = [("since",), ("rollout",)]


def set_path(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    if path == ("span",):
        body["window_start"], body["window_end"] = -value, value
        return
    if path in (("samples",), ("rollout",)):
        body[path[0]] = [{"x": value}] if path[0] == "samples" else {"x": value}
        return
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


MUTATIONS = st.lists(st.tuples(st.sampled_from(WINDOW_PATHS), NUMBERS), min_size=1, max_size=4)
STATUS_MUTATIONS = st.tuples(st.sampled_from(STATUS_PATHS), NUMBERS)
