"""Audio and models for the pipeline tests: real espeak-ng speech, noise, a tiny ONNX bundle."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgedl.agent.pipeline.audio import read_wav, write_wav

RATE = 16000
Samples = NDArray[np.float32]


def speak(text: str, tmp: Path, voice: str = "en-us", speed: int = 150) -> Samples:
    """``text`` spoken by espeak-ng, resampled to 16 kHz, trimmed, at RMS 0.1 (-20 dBFS)."""
    from scipy.signal import resample_poly

    out = tmp / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True)
    samples, rate = read_wav(out)
    audio = resample_poly(samples, RATE, rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    audio = audio[loud[0] : loud[-1] + 1]
    return (audio * 0.1 / np.sqrt(np.mean(audio**2))).astype(np.float32)


@dataclass
class Recording:
    """Audio and where its speech is (sample indices)."""

    audio: Samples
    speech: list[tuple[int, int]]

    def speech_mask(self) -> NDArray[np.bool_]:
        mask = np.zeros(self.audio.shape[0], dtype=bool)
        for a, b in self.speech:
            mask[a:b] = True
        return mask

    def save(self, path: Path) -> Path:
        write_wav(path, self.audio, RATE)
        return path


def padded_utterance(utterance: Samples, snr_db: float = 20, seed: int = 0) -> Recording:
    """Silence, then noise, then the utterance in that noise, then noise, then silence.

    "Silence" is a quiet room (white noise at -80 dBFS), not digital zeros.
    """
    rng = np.random.default_rng(seed)
    noise_rms = 0.1 / 10 ** (snr_db / 20)
    silence = (rng.standard_normal(RATE * 3 // 2) * 1e-4).astype(np.float32)
    noisy = lambda n: (rng.standard_normal(n) * noise_rms).astype(np.float32)  # noqa: E731
    before = np.concatenate([silence, noisy(RATE * 3 // 2)])
    speech = utterance + noisy(utterance.shape[0])
    audio = np.concatenate([before, speech, noisy(RATE * 3 // 2), silence[::-1]])
    start = before.shape[0]
    return Recording(audio.astype(np.float32), [(start, start + utterance.shape[0])])


def words_with_gaps(words: list[Samples], gap_s: float = 1.5, seed: int = 0) -> Recording:
    """The words one after another with quiet noise (-50 dBFS) between them."""
    rng = np.random.default_rng(seed)
    pieces: list[Samples] = []
    speech = []
    t = 0
    for word in words:
        gap = (rng.standard_normal(int(gap_s * RATE)) * 0.003).astype(np.float32)
        pieces += [gap, word + (rng.standard_normal(word.shape[0]) * 0.003).astype(np.float32)]
        speech.append((t + gap.shape[0], t + gap.shape[0] + word.shape[0]))
        t += gap.shape[0] + word.shape[0]
    pieces.append((rng.standard_normal(int(gap_s * RATE)) * 0.003).astype(np.float32))
    return Recording(np.concatenate(pieces).astype(np.float32), speech)


def loudness_bundle(out: Path, frames: int = 49, mels: int = 40, level: float = -5.5) -> Path:
    """A real ONNX bundle that scores a log-mel window "speech" when its mean is above ``level``.

    Not a trained model, but a real one: ONNX Runtime runs it through the model stage like
    any bundle, and it makes the pipeline's behaviour easy to predict.
    """
    import onnx
    from onnx import TensorProto, helper

    from edgedl.bundle import Manifest, TensorSpec, sha256_file, write_bundle

    nodes = [
        helper.make_node("ReduceMean", ["log_mel"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["mean", "level"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["speech"]),
        helper.make_node("Sub", ["one", "speech"], ["quiet"]),
        helper.make_node("Reshape", ["speech", "shape"], ["speech2"]),
        helper.make_node("Reshape", ["quiet", "shape"], ["quiet2"]),
        helper.make_node("Concat", ["speech2", "quiet2"], ["scores"], axis=1),
    ]
    init = [
        helper.make_tensor("level", TensorProto.FLOAT, [], [level]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "loudness",
        [helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, ["n", frames, mels, 1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 2])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_file = out.parent / "loudness.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_file)
    manifest = Manifest(
        name="loudness",
        version="1",
        target="onnx-fp32",
        runtime="onnxruntime",
        model_file="model.onnx",
        sha256=sha256_file(model_file),
        size_bytes=model_file.stat().st_size,
        inputs=[TensorSpec(name="log_mel", shape=[-1, frames, mels, 1], dtype="float32")],
        outputs=[TensorSpec(name="scores", shape=[-1, 2], dtype="float32")],
        labels=["speech", "quiet"],
    )
    return write_bundle(out, model_file, manifest, {}, overwrite=True).path


PIPELINE_TOML = """
[[pipelines]]
name = "{name}"
sample_rate = 16000

[[pipelines.stages]]
type = "vad"
engine = "{engine}"

[[pipelines.stages]]
type = "window"
length_ms = 1000
hop_ms = 100

[[pipelines.stages]]
type = "features"
n_mels = 40
n_fft = 512
hop = 320

[[pipelines.stages]]
type = "model"
bundle = "{bundle}"

[[pipelines.stages]]
type = "postprocess"
smooth_windows = 3
thresholds = {{ speech = 0.5 }}
refractory_ms = 1000
"""


def pipeline_toml(bundle: Path, engine: str = "energy", name: str = "loud") -> str:
    """A vad -> window -> features -> model -> postprocess pipeline on ``bundle``."""
    return PIPELINE_TOML.format(name=name, engine=engine, bundle=bundle)
