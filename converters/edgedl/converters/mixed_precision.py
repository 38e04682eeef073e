"""Mixed precision for ``onnx-int8``: the fewest of its most sensitive layers to keep in float.

The layers are taken as a prefix of their sensitivity order (:mod:`.sensitivity`, the worst
first), and the search looks for the shortest prefix whose int8 model is within the drop
bound. ``bisect`` doubles the prefix (1, 2, 4, …) until a probe is within the bound, then
bisects between the longest prefix over it and the shortest within it: about 2·log2(k)
probes for a prefix of k layers, where ``linear`` (one more layer per probe) takes k.

A probe is one quantization and one validation run, nothing more: the source is exported
and calibrated once (ONNX Runtime's calibration cache keeps the activation ranges between
probes), and the source's outputs on the validation data are computed once. Bisection
assumes the drop does not grow as more layers return to float; a top-1 measure on a small
validation set can break that by a sample or two, so the prefix ``bisect`` finds may then
be longer than the shortest one, never over the bound. The drop is the one ``auto`` ranks
by (:func:`.validate.drop_pts`): accuracy, top-1 disagreement, or for an embedding model
100 x (1 - mean cosine to the source's embeddings).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgedl.errors import ConversionError

from .convert import ConvertOptions, load_inputs
from .sensitivity import run_onnx
from .targets import BuildContext, get_target
from .validate import drop_pts, judge

Strategy = Literal["bisect", "linear"]


@dataclass(frozen=True)
class Probe:
    """One try: how many of the most sensitive layers were float, and the drop it gave."""

    float_layers: int
    drop_pts: float
    within_bound: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict for the report, ``seconds`` rounded to 2 places."""
        return {
            "float_layers": self.float_layers,
            "drop_pts": self.drop_pts,
            "within_bound": self.within_bound,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class MixedSearch:
    """The outcome: the float layers found (None when even all of them stay over the bound)."""

    strategy: Strategy
    order: list[str]
    float_layers: list[str] | None
    probes: list[Probe] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``mixed_search`` entry: the number of layers ranked rather than their
        order, the float layers found and every probe."""
        return {
            "strategy": self.strategy,
            "layers": len(self.order),
            "float_layers": self.float_layers,
            "probes": [p.to_dict() for p in self.probes],
        }


def shortest_prefix(n: int, within: Callable[[int], bool], strategy: Strategy) -> int | None:
    """The smallest k in 1..n for which ``within(k)`` holds, as ``strategy`` searches; None
    when ``within(n)`` does not hold. ``within(0)`` (nothing in float) is known to fail."""
    if strategy == "linear":
        return next((k for k in range(1, n + 1) if within(k)), None)
    failed, k = 0, 1
    while True:
        k = min(k, n)
        if within(k):
            break
        if k == n:
            return None
        failed, k = k, k * 2
    passed = k
    while passed - failed > 1:
        mid = (failed + passed) // 2
        if within(mid):
            passed = mid
        else:
            failed = mid
    return passed


class Int8Prober:
    """Quantize one exported model with given layers in float and measure its drop."""

    def __init__(self, model: str | Path, options: ConvertOptions, workdir: Path) -> None:
        target = get_target("onnx-int8")
        source, calibration, validation, _ = load_inputs(Path(model), options, target, workdir)
        if validation is None or calibration is None:
            raise ConversionError("mixed precision needs calibration and validation data")
        self._name = source.inputs[0].name
        self._build = target.build
        self._ctx = BuildContext(
            source=source,
            calibration=calibration,
            workdir=workdir,
            calibration_samples=options.calibration_samples,
            calibration_cache=workdir / "calibration-ranges.json",
            measure_layers=False,
        )
        self._feeds = validation.feeds(self._name)  # every input, in its own dtype
        self._labels = validation.y
        self._reference = source.predict(self._feeds)

    def drop(self, float_nodes: Sequence[str]) -> float:
        """The drop in points of ``onnx-int8`` with ``float_nodes`` kept in float."""
        built = self._build(replace(self._ctx, float_nodes=tuple(float_nodes)))
        names = list(self._reference)
        outputs = run_onnx(built.model_path.read_bytes(), names, self._feeds)
        n = len(outputs[0])  # a fixed-batch model runs whole batches only
        reference = {k: v[:n] for k, v in self._reference.items()}
        labels = self._labels[:n] if self._labels is not None else None
        artifact = dict(zip(names, outputs, strict=True))
        return drop_pts(judge(reference, artifact, labels))


def search_float_layers(
    model: str | Path,
    options: ConvertOptions,
    order: Sequence[str],
    strategy: Strategy = "bisect",
    log: Callable[[str], None] | None = None,
) -> MixedSearch:
    """The shortest prefix of ``order`` to keep in float for ``onnx-int8`` to be within
    ``options.max_accuracy_drop``, each probe logged as it finishes."""
    search = MixedSearch(strategy, list(order), None)
    bound = options.max_accuracy_drop
    with tempfile.TemporaryDirectory(prefix="edgedl-mixed-") as tmp:
        prober = Int8Prober(model, options, Path(tmp))

        def within(k: int) -> bool:
            started = time.perf_counter()
            drop = prober.drop(order[:k])
            probe = Probe(k, drop, drop <= bound, time.perf_counter() - started)
            search.probes.append(probe)
            if log is not None:
                log(
                    f"mixed precision, probe {len(search.probes)}: {k} of {len(order)} layers "
                    f"in float, drop {drop:.2f} pts "
                    f"({'within' if probe.within_bound else 'over'} {bound:g}), "
                    f"{probe.seconds:.1f} s"
                )
            return probe.within_bound

        k = shortest_prefix(len(order), within, strategy)
    search.float_layers = list(order[:k]) if k is not None else None
    return search
