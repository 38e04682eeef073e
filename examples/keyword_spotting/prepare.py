"""Train the keyword CNN and write its data as files, for ``edgedl compress`` and its bench.

Usage: python examples/keyword_spotting/prepare.py --out DIR [--size tiny|small|full]
                                                   [--epochs 15] [--stream-words N]

Writes ``keywords.keras`` (trained as ``train.py`` trains it), ``train.npz`` (the 85% it was
trained on, log-mel features with labels), ``val.npz`` (the held-out 15%) and
``stream.npz``: windows cut from the held-out stream (voices, speeds and pitches training
never used, and words it never heard): one 1 s window around each word (``yes``, ``stop``,
or ``unknown``) and one of background before it, labelled from the stream's true times. ``--stream-words`` makes the held-out stream longer
than the size's own (its first words stay the same), for a finer accuracy measure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from data import BACKGROUND, CLASSES, KEYWORDS, UNKNOWN, Size, held_out_stream, training_windows
from numpy.typing import NDArray
from speech import SAMPLE_RATE, espeak_available
from train import features_of, train

from edgedl.agent.config import load_config

HERE = Path(__file__).resolve().parent
LEAD_S = 0.15  # a word window starts this long before the word, as the VAD's padding does


def stream_windows(size: Size) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Raw 1 s windows of the held-out stream and their classes, from its true word times."""
    stream = held_out_stream(size)
    audio = stream.audio
    words = sorted(stream.keywords + stream.distractors, key=lambda w: float(w["start"]))  # type: ignore[arg-type]
    x, y = [], []
    previous_end = 0.0
    for word in words:
        start, end = float(word["start"]), float(word["end"])  # type: ignore[arg-type]
        a = max(0, int((start - LEAD_S) * SAMPLE_RATE))
        x.append(np.pad(audio[a : a + SAMPLE_RATE], (0, max(0, a + SAMPLE_RATE - len(audio)))))
        label = str(word["label"])
        y.append(CLASSES.index(label if label in KEYWORDS else UNKNOWN))
        if start - previous_end >= 1.2:  # a whole second of background before the word
            b = int((start - 1.1) * SAMPLE_RATE)
            x.append(audio[b : b + SAMPLE_RATE])
            y.append(CLASSES.index(BACKGROUND))
        previous_end = end
    return np.stack(x).astype(np.float32), np.array(y, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=("tiny", "small", "full"), default="small")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--stream-words", type=int, default=None)
    args = parser.parse_args()
    if not espeak_available():
        sys.exit("error: espeak-ng is not installed (Debian: apt install espeak-ng)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pipeline = load_config(HERE / "agent.toml").pipelines[0]
    size = Size.named(args.size)
    t0 = time.perf_counter()
    windows, labels = training_windows(size)
    x = features_of(pipeline, windows)
    trained = train(x, labels, out, args.epochs)
    train_s = time.perf_counter() - t0
    # train() shuffles with its seed and holds out the first 15%: the same split, in full.
    order = np.random.default_rng(0).permutation(len(x))
    n_val = len(x) * 15 // 100
    np.savez(out / "train.npz", x=x[order][n_val:], y=labels[order][n_val:])
    np.savez(out / "val.npz", x=x[order][:n_val], y=labels[order][:n_val])
    stream_size = replace(size, stream_words=args.stream_words or size.stream_words)
    sx, sy = stream_windows(stream_size)
    np.savez(out / "stream.npz", x=features_of(pipeline, sx), y=sy)
    summary = {"size": args.size, "epochs": args.epochs, "training_windows": len(x),
               "stream_windows": len(sy), "val_accuracy": trained.val_accuracy,
               "seconds": round(train_s, 1)}  # fmt: skip
    (out / "prepare.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
