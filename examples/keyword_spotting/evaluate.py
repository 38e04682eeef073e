"""Score detections against the test stream's true keyword times."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TOLERANCE_S = 0.5


@dataclass
class Score:
    """Detection precision and recall, and what went wrong."""

    true_positives: int
    detections: int
    keywords: int
    false_alarms: list[dict[str, Any]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.true_positives / self.detections if self.detections else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.keywords if self.keywords else 0.0


def match(
    events: list[dict[str, Any]], truth: list[dict[str, Any]], tolerance_s: float = TOLERANCE_S
) -> Score:
    """Pair each detection with at most one true keyword of the same label that it overlaps
    (the true interval widened by ``tolerance_s`` on each side); the rest are false alarms
    (detections) or misses (keywords)."""
    unmatched = list(truth)
    hits = 0
    false_alarms = []
    for event in sorted(events, key=lambda e: e["start"]):
        found = next(
            (
                t for t in unmatched
                if t["label"] == event["label"]
                and event["start"] < t["end"] + tolerance_s
                and event["end"] > t["start"] - tolerance_s
            ),
            None,
        )  # fmt: skip
        if found is None:
            false_alarms.append(event)
        else:
            unmatched.remove(found)
            hits += 1
    return Score(hits, len(events), len(truth), false_alarms, unmatched)
