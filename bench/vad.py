"""Benchmark the VAD engines' frame decisions: precision, recall and F1 against known speech.

Speech is synthetic: sentences with known text spoken by espeak-ng (several voices), at RMS
0.1 (-20 dBFS), one after another with ``--gap-s`` seconds between them, all of it in a noise
floor: a quiet room (white noise at -80 dBFS) or white noise at a given SNR. A frame is
labelled speech when most of its samples lie within an utterance (from its first to its last
loud sample: the short pauses between words inside a sentence count as speech).

Each engine decides frame by frame exactly as the vad stage asks it (``is_speech`` on the
stage's fixed frames, a fresh engine per stream) — the raw decisions, before padding and
hangover. Silero (``onnx``) is run with its hysteresis (on at 0.5, off below 0.35) and,
for comparison, with a plain threshold of 0.5.

Usage: python bench/vad.py [--voices en-us,en-us+f2,en-gb+m3] [--snr quiet,20,10]
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
from asr import RATE, SENTENCES, speak  # bench/asr.py: the same espeak-ng sentences

from edgedl.agent.pipeline.config import PipelineConfig
from edgedl.agent.pipeline.vad import build_vad

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "vad.json"
ENGINES: dict[str, dict[str, Any]] = {
    "energy": {"engine": "energy"},
    "webrtc mode 0": {"engine": "webrtc", "aggressiveness": 0},
    "webrtc mode 2": {"engine": "webrtc", "aggressiveness": 2},
    "webrtc mode 3": {"engine": "webrtc", "aggressiveness": 3},
    "silero, hysteresis 0.5/0.35": {"engine": "onnx"},
    "silero, threshold 0.5": {"engine": "onnx", "neg_threshold": 0.5},
}


def recording(utterances: list[np.ndarray], snr: str, gap_s: float, seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The audio and its per-sample speech mask."""
    rng = np.random.default_rng(seed)
    gap = np.zeros(int(gap_s * RATE), dtype=np.float32)
    pieces, mask = [gap], [np.zeros(gap.shape[0], bool)]
    for u in utterances:
        pieces += [u, gap]
        mask += [np.ones(u.shape[0], bool), np.zeros(gap.shape[0], bool)]
    audio = np.concatenate(pieces)
    noise_rms = 1e-4 if snr == "quiet" else 0.1 / 10 ** (float(snr) / 20)
    audio = (audio + rng.standard_normal(audio.shape[0]) * noise_rms).astype(np.float32)
    return audio, np.concatenate(mask)


def frame_scores(options: dict[str, Any], audio: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:  # fmt: skip
    """True positives, false positives, false negatives of one engine over one stream."""
    config = PipelineConfig.model_validate({"name": "b", "stages": [{"type": "vad", **options}]})
    engine = build_vad("vad", config.stages[0], RATE).engine  # type: ignore[arg-type]
    n = engine.frame_size
    tp = fp = fn = 0
    for k in range(audio.shape[0] // n):
        said = bool(mask[k * n : (k + 1) * n].mean() > 0.5)
        heard = engine.is_speech(audio[k * n : (k + 1) * n])
        tp += said and heard
        fp += heard and not said
        fn += said and not heard
    return tp, fp, fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", default="en-us,en-us+f2,en-gb+m3")
    parser.add_argument("--speeds", default="130,170")
    parser.add_argument("--snr", default="quiet,20,10", help="quiet, or white-noise SNRs in dB")
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--gap-s", type=float, default=1.5)
    args = parser.parse_args()
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp())
    totals: dict[tuple[str, str], list[int]] = {}
    audio_s = 0.0
    for vi, voice in enumerate(args.voices.split(",")):
        for si, speed in enumerate(int(s) for s in args.speeds.split(",")):
            utterances = [speak(t, voice, speed, tmp) for t in SENTENCES[: args.sentences]]
            for ni, snr in enumerate(args.snr.split(",")):
                audio, mask = recording(utterances, snr, args.gap_s, 100 * vi + 10 * si + ni)
                audio_s += audio.shape[0] / RATE
                for name, options in ENGINES.items():
                    t = totals.setdefault((snr, name), [0, 0, 0])
                    for i, v in enumerate(frame_scores(options, audio, mask)):
                        t[i] += v
    rows = []
    for (snr, name), (tp, fp, fn) in totals.items():
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        noise = snr if snr == "quiet" else f"white {snr} dB SNR"
        rows.append({"noise": noise, "engine": name, "precision": round(precision, 3),
                     "recall": round(recall, 3), "f1": round(f1, 3)})  # fmt: skip
    result = {
        "rows": rows,
        "args": vars(args),
        "audio_s": round(audio_s, 1),
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "wall_s": round(time.time() - t0, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print("| noise | engine | precision | recall | frame F1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['noise']} | {r['engine']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")  # fmt: skip
    print(f"{result['audio_s']} s of audio per engine; wrote {RESULTS.relative_to(ROOT)} ({result['wall_s']} s)")  # fmt: skip


if __name__ == "__main__":
    main()
