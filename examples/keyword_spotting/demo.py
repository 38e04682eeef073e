"""Keyword spotting end to end: synthesize, train, convert to tflite-int8, stream, score.

Usage: python examples/keyword_spotting/demo.py --out build/kws [--size small|full]

1. espeak-ng speaks the keywords ("yes", "stop") and distractor words in many voices,
   speeds and pitches; they are mixed into 1-second windows with white/pink/brown noise.
2. A small CNN learns yes / stop / unknown / background from the pipeline's log-mel features.
3. edgedl.converters turns it into a tflite-int8 bundle.
4. The pipeline in agent.toml (vad -> window -> features -> model -> postprocess) runs over
   a stream it has never heard (other voices, speeds, pitches, unseen distractor words,
   noise and silence between words), fed 100 ms at a time; detections are matched against
   the true keyword times. The VAD stage can be swapped with --vad to compare engines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from data import Size, held_out_stream, training_windows
from evaluate import TOLERANCE_S, match
from speech import SAMPLE_RATE, espeak_available
from train import convert_int8, features_of, train

from edgedl.agent.config import load_config
from edgedl.agent.pipeline.pipeline import build_pipeline

HERE = Path(__file__).resolve().parent
VAD_ENGINES: dict[str, dict[str, Any]] = {
    "webrtc": {"engine": "webrtc", "aggressiveness": 3},
    "energy": {"engine": "energy"},
    "onnx": {"engine": "onnx"},
}


def evaluate(
    config_path: Path, wav: Path, truth: dict[str, Any], vad: str | None
) -> dict[str, Any]:
    """Run the pipeline over the stream in 100 ms chunks; score it; return the figures."""
    from edgedl.agent.pipeline.audio import read_wav

    config = load_config(config_path).pipelines[0]
    if vad is not None:
        stage = config.stages[0]
        keep = {"type": "vad", "pad_ms": stage.pad_ms, "hangover_ms": stage.hangover_ms}  # type: ignore[union-attr]
        config = type(config).model_validate(
            {**config.model_dump(), "stages": [{**keep, **VAD_ENGINES[vad]},
             *[s.model_dump() for s in config.stages[1:]]]}
        )  # fmt: skip
    pipeline = build_pipeline(config)
    audio, _ = read_wav(wav)
    events = []
    step = SAMPLE_RATE // 10
    for i in range(0, len(audio), step):
        events += pipeline.feed(audio[i : i + step])
    events += pipeline.flush()
    found = [e.to_dict() for e in events]
    score = match(found, truth["keywords"])
    stats = pipeline.stats()
    vad_stats = stats[config.stage_name(0)]
    return {
        "vad": vad or config.stages[0].engine,  # type: ignore[union-attr]
        "precision": round(score.precision, 3),
        "recall": round(score.recall, 3),
        "detections": score.detections,
        "keywords": score.keywords,
        "false_alarms": score.false_alarms,
        "missed": score.missed,
        "vad_kept_share": vad_stats["kept_share"],
        "silence_dropped_share": silence_dropped(config, audio, truth),
        "events": found,
        "stats": stats,
    }


def silence_dropped(config: Any, audio: Any, truth: dict[str, Any], margin_s: float = 1.0) -> float:
    """The share of the audio more than ``margin_s`` from any word that the VAD dropped."""
    from edgedl.agent.pipeline.stream import Audio
    from edgedl.agent.pipeline.vad import build_vad

    vad = build_vad("vad", config.stages[0], config.sample_rate)
    kept = np.zeros(len(audio), dtype=bool)
    for piece in vad.process([Audio(0, audio)]) + vad.flush():
        kept[piece.start : piece.end] = True
    far = np.ones(len(audio), dtype=bool)
    for word in truth["keywords"] + truth["distractors"]:
        a = max(0, int((word["start"] - margin_s) * SAMPLE_RATE))
        far[a : int((word["end"] + margin_s) * SAMPLE_RATE)] = False
    return round(1.0 - float(kept[far].mean()), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/kws"))
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--vad", choices=(*VAD_ENGINES, "all"), default=None,
                        help="evaluate with this VAD engine instead of agent.toml's (all: each)")  # fmt: skip
    args = parser.parse_args()
    if not espeak_available():
        sys.exit("error: espeak-ng is not installed (Debian: apt install espeak-ng)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "agent.toml"
    # The bundle path in the config is taken from the working directory, as the agent does.
    template = (HERE / "agent.toml").read_text()
    config_path.write_text(
        template.replace('"kws-int8"', json.dumps(str((out / "kws-int8").resolve())))
    )
    pipeline_config = load_config(config_path).pipelines[0]
    size = Size.named(args.size)
    t0 = time.perf_counter()

    print(f"1/4 synthesizing speech with espeak-ng ({args.size}) -> {out}", flush=True)
    windows, labels = training_windows(size)
    stream = held_out_stream(size)
    stream.save(out / "test_stream.wav", out / "test_stream.json")
    print(f"    {len(windows)} training windows {np.bincount(labels).tolist()}; "
          f"test stream {len(stream.audio) / SAMPLE_RATE:.0f} s, "
          f"{len(stream.keywords)} keywords, {len(stream.distractors)} distractors")  # fmt: skip

    print(f"2/4 training the CNN on log-mel features ({args.epochs} epochs)", flush=True)
    t_train = time.perf_counter()
    trained = train(features_of(pipeline_config, windows), labels, out, args.epochs)
    train_s = time.perf_counter() - t_train
    print(f"    held-out window accuracy {trained.val_accuracy:.1%} ({train_s:.0f} s)")

    print("3/4 converting to tflite-int8", flush=True)
    report = convert_int8(trained, out / "kws-int8")
    print(f"    bundle {out / 'kws-int8'}: window accuracy {report.get('artifact_accuracy')}% "
          f"(Keras {report.get('reference_accuracy')}%)")  # fmt: skip

    print("4/4 running the pipeline over the held-out stream", flush=True)
    truth = json.loads((out / "test_stream.json").read_text())
    engines = list(VAD_ENGINES) if args.vad == "all" else [args.vad]
    results = [evaluate(config_path, out / "test_stream.wav", truth, vad) for vad in engines]
    print(
        "\n| VAD | precision | recall | detections | keywords | audio kept | far from words dropped |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['vad']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['detections']} "
              f"| {r['keywords']} | {r['vad_kept_share']:.0%} | {r['silence_dropped_share']:.0%} |")  # fmt: skip
    print(f"\n(a detection matches a keyword of the same label it overlaps within {TOLERANCE_S} s)")
    summary = {
        "size": args.size,
        "epochs": args.epochs,
        "training_windows": len(windows),
        "val_accuracy": trained.val_accuracy,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "int8_accuracy": report.get("artifact_accuracy"),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
