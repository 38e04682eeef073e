"""Train the digits CNN and convert it to every edgedl target; print the comparison table.

Usage: python examples/digits/demo.py [--out DIR] [--epochs N]

The data is scikit-learn's bundled copy of the UCI handwritten digits (1,797 real 8x8
images); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console

from edgedl.converters import TARGETS, ConvertOptions, convert
from edgedl.converters.report import render_comparison
from edgedl.converters.samples import train_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where to write the model and bundles")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="edgedl-digits-"))
    console = Console() if Console().is_terminal else Console(width=130)
    console.print(f"[bold]1/2[/] training the digits CNN on scikit-learn's digits → {out}")
    sample = train_digits(out, epochs=args.epochs)
    console.print(f"    Keras test accuracy: {sample.test_accuracy:.2%}")
    console.print(f"[bold]2/2[/] converting to {len(TARGETS)} targets")
    reports = []
    for name in TARGETS:
        result = convert(
            sample.model,
            ConvertOptions(
                target=name,
                calibration=sample.train,
                validation=sample.test,
                labels=sample.labels,
                output=out / "bundles" / name,
                force=True,
            ),
        )
        reports.append(result.report)
        console.print(f"    {name:<22} → {result.bundle.path if result.bundle else '-'}")
    render_comparison(reports, console)


if __name__ == "__main__":
    main()
