"""Benchmark the asr stage: word error rate with and without a VAD in front, and its CPU cost.

Speech is synthetic: sentences with known text spoken by espeak-ng (several voices and
speeds), resampled to 16 kHz at RMS 0.1 (-20 dBFS). Each condition (voice, speed, noise) is
one stream: the sentences one after another with ``--gap-s`` seconds between them, all of it
in a noise floor: a quiet room (white noise at -80 dBFS) or white noise at a given SNR
(relative to the speech's RMS).

Each stream runs through two pipelines, the product's own code (``build_pipeline``):

* ``asr``            the whole stream decoded as one utterance (no VAD);
* ``vad -> asr``     a VAD (Silero, ``onnx``; or ``--vad webrtc``) keeps speech, and the
                     asr stage decodes each segment (one call per utterance).

Word error rate is computed with jiwer over the whole corpus (reference: the sentences of a
stream joined; hypothesis: its transcripts joined, lower-case, no punctuation). CPU is the
process CPU time of the pipeline's run (``time.process_time``) over the seconds of audio: the
real-time factor of the whole pipeline on one core (below 1 keeps up with live audio).

Usage: python bench/asr.py [--voices en-us,en-us+f2] [--speeds 130,170] [--snr quiet,10]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
from scipy.signal import resample_poly

from edgedl.agent.pipeline.config import PipelineConfig
from edgedl.agent.pipeline.pipeline import build_pipeline
from edgedl.agent.pipeline.stream import Transcript

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "asr.json"
RATE = 16000
SENTENCES = [
    "what time is it",
    "turn the kitchen lights on please",
    "open the door",
    "play some music in the living room",
    "set an alarm for seven",
    "how is the weather today",
]


def speak(text: str, voice: str, speed: int, tmp: Path) -> np.ndarray:
    """``text`` by espeak-ng at 16 kHz, trimmed, at RMS 0.1."""
    out = tmp / "s.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True)
    with wave.open(str(out)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    y = resample_poly(x, RATE, rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(y) > 0.02 * np.abs(y).max())
    y = y[loud[0] : loud[-1] + 1]
    return (y * 0.1 / np.sqrt(np.mean(y**2))).astype(np.float32)


def stream(utterances: list[np.ndarray], snr: str, gap_s: float, seed: int) -> np.ndarray:
    """The utterances with ``gap_s`` between them (and before/after), all in the noise."""
    rng = np.random.default_rng(seed)
    gap = np.zeros(int(gap_s * RATE), dtype=np.float32)
    pieces = [gap]
    for u in utterances:
        pieces += [u, gap]
    audio = np.concatenate(pieces)
    noise_rms = 1e-4 if snr == "quiet" else 0.1 / 10 ** (float(snr) / 20)
    return (audio + rng.standard_normal(audio.shape[0]) * noise_rms).astype(np.float32)


def pipeline_config(vad: str | None) -> PipelineConfig:
    stages: list[dict[str, Any]] = [{"type": "asr", "max_segment_s": 300}]
    if vad is not None:
        extra = {"aggressiveness": 3, "warmup_ms": 120} if vad == "webrtc" else {}
        stages = [{"type": "vad", "engine": vad, **extra}, {"type": "asr", "max_segment_s": 20}]
    return PipelineConfig.model_validate({"name": "bench", "stages": stages})


def normalise(text: str) -> str:
    return re.sub(r"[^a-z' ]", " ", text.lower()).strip()


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    sentences = SENTENCES[: args.sentences]
    setups = {"asr (no VAD)": None, f"vad ({args.vad}) -> asr": args.vad}
    pipelines = {name: build_pipeline(pipeline_config(vad)) for name, vad in setups.items()}
    rows: list[dict[str, Any]] = []
    corpus: dict[tuple[str, str], dict[str, list[str]]] = {}
    for vi, voice in enumerate(args.voices.split(",")):
        for si, speed in enumerate(int(s) for s in args.speeds.split(",")):
            utterances = [speak(t, voice, speed, tmp) for t in sentences]
            for ni, snr in enumerate(args.snr.split(",")):
                audio = stream(utterances, snr, args.gap_s, seed=100 * vi + 10 * si + ni)
                audio_s = audio.shape[0] / RATE
                reference = " ".join(sentences)
                for name, pipeline in pipelines.items():
                    t0 = time.process_time()
                    outputs = pipeline.run(audio)
                    cpu = time.process_time() - t0
                    texts = [o.text for o in outputs if isinstance(o, Transcript) and o.text]
                    hypothesis = normalise(" ".join(texts))
                    wer = jiwer.wer(reference, hypothesis or "<empty>")
                    rows.append(
                        {
                            "voice": voice,
                            "speed": speed,
                            "noise": snr if snr == "quiet" else f"white {snr} dB SNR",
                            "pipeline": name,
                            "audio_s": round(audio_s, 2),
                            "cpu_s": round(cpu, 2),
                            "rtf": round(cpu / audio_s, 3),
                            "wer": round(wer, 3),
                            "hypothesis": hypothesis,
                        }
                    )
                    key = (name, rows[-1]["noise"])
                    entry = corpus.setdefault(key, {"ref": [], "hyp": [], "cpu": [], "audio": []})
                    entry["ref"].append(reference)
                    entry["hyp"].append(hypothesis or "<empty>")
                    entry["cpu"].append(cpu)
                    entry["audio"].append(audio_s)
                    print(f"{voice:<10} {speed:>4} {rows[-1]['noise']:<20} {name:<22} "
                          f"WER {wer:.2f}  RTF {cpu / audio_s:.2f}  {hypothesis!r}", flush=True)  # fmt: skip
    summary = []
    for (name, noise), e in corpus.items():
        summary.append(
            {
                "pipeline": name,
                "noise": noise,
                "streams": len(e["ref"]),
                "audio_s": round(sum(e["audio"]), 1),
                "wer": round(jiwer.wer(e["ref"], e["hyp"]), 3),
                "rtf": round(sum(e["cpu"]) / sum(e["audio"]), 3),
            }
        )
    return {"rows": rows, "summary": summary}


def table(result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "| noise | pipeline | streams | audio s | WER | real-time factor (CPU s / audio s) |",
        "|---|---|---|---|---|---|",
    ]
    for s in sorted(result["summary"], key=lambda s: (s["noise"], s["pipeline"])):
        lines.append(
            f"| {s['noise']} | {s['pipeline']} | {s['streams']} | {s['audio_s']} | "
            f"{s['wer']:.1%} | {s['rtf']:.2f} |"
        )
    by_noise: dict[str, dict[str, float]] = {}
    for s in result["summary"]:
        by_noise.setdefault(s["noise"], {})[s["pipeline"]] = s["rtf"]
    lines.append("")
    for noise, rtfs in sorted(by_noise.items()):
        plain = rtfs["asr (no VAD)"]
        with_vad = rtfs[f"vad ({args.vad}) -> asr"]
        lines.append(f"- {noise}: the VAD saves {1 - with_vad / plain:.0%} of the CPU time")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", default="en-us,en-us+f2,en-gb+m3")
    parser.add_argument("--speeds", default="130,170")
    parser.add_argument("--snr", default="quiet,20,10", help="quiet, or white-noise SNRs in dB")
    parser.add_argument("--sentences", type=int, default=4)
    parser.add_argument("--gap-s", type=float, default=2.0)
    parser.add_argument("--vad", default="onnx", choices=["onnx", "webrtc", "energy"])
    args = parser.parse_args()
    t0 = time.time()
    result = run(args)
    result["args"] = vars(args)
    result["machine"] = f"{platform.processor() or platform.machine()}, {platform.python_version()}"
    result["wall_s"] = round(time.time() - t0, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(table(result, args))
    print(f"wrote {RESULTS.relative_to(ROOT)} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
