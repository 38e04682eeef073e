"""Benchmark the accuracy estimated without labels against the real accuracy, on shifted digits.

Data: scikit-learn's 8x8 handwritten digits (1,797 images). The digits CNN is trained on the
training split (``edgedl.converters.samples.train_digits``); its held-out test split is cut in
two: the first half is the validation set ``edgedl convert`` fits the calibration on (and the
reference profile), the second half is what the "device" sees, shifted:

  brightness +d     every pixel + d (clipped to [0, 1]), d = 0.1, 0.2, 0.3, 0.4
  noise sd s        Gaussian noise of standard deviation s, s = 0.1, 0.2, 0.3, 0.4
  blur sigma r      Gaussian blur (scipy.ndimage) of sigma r pixels, r = 0.5, 0.8, 1.2, 1.6
  concept k%        covariate unchanged, but k% of the labels mean another class (y + 1 mod
                    10), k = 10, 30, 50: the estimate cannot see this, by construction

Each condition runs the converted bundle (tflite-int8) through the agent's runtime loader,
bins the top-1 confidences on the reference profile's edges as an agent does
(``batch_statistics`` + ``Histogram``), and estimates accuracy with the bundle's calibration
(``edgedl.calibration``). Printed: real accuracy, estimate, its 95% interval, the share of
predictions outside what the validation set covers, and the absolute error; and the mean
absolute error over the covariate shifts and over the concept shifts.

Usage: python bench/estimated_accuracy.py [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedl.bundle import Bundle
from edgedl.calibration import Calibration
from edgedl.profile import Histogram, batch_statistics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "estimated_accuracy.json"


def shifted(x: np.ndarray[Any, Any], kind: str, level: float, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    if kind == "brightness":
        return np.clip(x + level, 0.0, 1.0).astype(np.float32)
    if kind == "noise":
        return np.clip(x + rng.normal(0.0, level, x.shape), 0.0, 1.0).astype(np.float32)
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        return np.stack([gaussian_filter(img, sigma=(level, level, 0)) for img in x]).astype(
            np.float32
        )
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    from edgedl.converters import ConvertOptions, convert
    from edgedl.converters.samples import train_digits
    from edgedl.runtime import load

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgedl-cbpe-"))
    digits = train_digits(work / "digits", epochs=args.epochs)
    test = np.load(digits.test)
    x, y = test["x"], test["y"]
    half = len(x) // 2
    np.savez(work / "validation.npz", x=x[:half], y=y[:half])
    x_dev, y_dev = x[half:], y[half:]
    result = convert(
        digits.model,
        ConvertOptions(
            target="tflite-int8",
            calibration=digits.train,
            validation=work / "validation.npz",
            labels=digits.labels,
            output=work / "bundle",
        ),
    )
    assert result.bundle is not None
    bundle = Bundle.open(result.bundle.path)
    manifest = bundle.manifest
    assert manifest.calibration is not None, "the bundle has no calibration"
    calibration = Calibration.from_dict(manifest.calibration)
    runner = load(result.bundle.path)

    conditions: list[tuple[str, str, float]] = [("unshifted", "none", 0.0)]
    conditions += [(f"brightness +{d}", "brightness", d) for d in (0.1, 0.2, 0.3, 0.4)]
    conditions += [(f"noise sd {s}", "noise", s) for s in (0.1, 0.2, 0.3, 0.4)]
    conditions += [(f"blur sigma {r}", "blur", r) for r in (0.5, 0.8, 1.2, 1.6)]
    conditions += [(f"concept {k}%", "concept", k) for k in (10, 30, 50)]
    rows: list[dict[str, Any]] = []
    header = f"{'condition':<18}{'real':>8}{'estimate':>10}{'95% interval':>18}{'extrap.':>9}{'|error|':>9}"
    print(header)
    for label, kind, level in conditions:
        xs = shifted(x_dev, kind, level, seed=len(rows))
        truth = y_dev.copy()
        if kind == "concept":
            flip = np.random.default_rng(1).random(len(truth)) < level / 100.0
            truth[flip] = (truth[flip] + 1) % 10
        outputs = runner.run({runner.inputs[0].name: xs})
        stats, classes = batch_statistics({}, outputs)
        (key,) = classes
        hist = Histogram.empty(np.asarray(calibration.edges))
        hist.add(stats[calibration.statistic])
        guess = calibration.estimate(hist.counts)
        real = float(np.mean(classes[key] == truth))
        est = guess.to_dict()
        rows.append(
            {
                "condition": label,
                "kind": kind,
                "level": level,
                "samples": len(truth),
                "real": real,
                "estimate": est["accuracy"],
                "low": est["low"],
                "high": est["high"],
                "extrapolated_share": est["extrapolated_share"],
                "abs_error": abs(est["accuracy"] - real),
            }
        )
        r = rows[-1]
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]"
        print(
            f"{label:<18}{real:>8.3f}{r['estimate']:>10.3f}{interval:>18}"
            f"{r['extrapolated_share']:>9.2f}{r['abs_error']:>9.3f}"
        )
    covariate = [r["abs_error"] for r in rows if r["kind"] in ("brightness", "noise", "blur")]
    concept = [r["abs_error"] for r in rows if r["kind"] == "concept"]
    covered = [r["low"] <= r["real"] <= r["high"] for r in rows if r["kind"] != "concept"]
    summary = {
        "mae_covariate": float(np.mean(covariate)),
        "mae_concept": float(np.mean(concept)),
        "interval_covers_real_covariate": f"{sum(covered)}/{len(covered)}",
    }
    print(
        f"\nmean |error|: covariate shifts {summary['mae_covariate']:.3f}, "
        f"concept shifts {summary['mae_concept']:.3f}; the 95% interval holds the real "
        f"accuracy in {summary['interval_covers_real_covariate']} unshifted/covariate conditions"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()} {platform.processor()} ({platform.system()})",
                "python": platform.python_version(),
                "validation_samples": int(half),
                "device_samples": len(x_dev),
                "calibration_bins": len(calibration.edges) + 1,
                "rows": rows,
                **summary,
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
