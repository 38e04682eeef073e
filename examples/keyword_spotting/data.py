"""The data set: training windows and a held-out test stream with the keywords' true times.

Training and test use different voices, speeds and pitches, and the test stream adds
distractor words that training never heard, so the reported precision and recall are on
speech the model has not seen.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from speech import (
    NOISE_KINDS,
    SAMPLE_RATE,
    Audio,
    Voice,
    noise_at_snr,
    speak,
)

KEYWORDS = ("yes", "stop")
UNKNOWN = "unknown"
BACKGROUND = "background"
CLASSES = (*KEYWORDS, UNKNOWN, BACKGROUND)

# Words that are not keywords: some sound alike on purpose (yet/yell, top/step/spot).
TRAIN_WORDS = (
    "no", "go", "up", "down", "left", "right", "on", "off", "cat", "dog", "bird", "house",
    "tree", "zero", "one", "two", "three", "four", "five", "eight", "nine", "bed", "wow",
    "marvin", "sheila", "learn", "follow", "forward", "yet", "yell", "top", "step", "spot",
    "shop", "less", "visual",
)  # fmt: skip
TEST_ONLY_WORDS = ("river", "seven", "table", "window", "happy", "music", "guess", "stuck")

TRAIN_VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029")
TEST_VOICES = ("en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
TRAIN_VARIANTS = ("", "+m3", "+f2", "+f4", "+m7", "+klatt")
TEST_VARIANTS = ("", "+f3", "+m2")
TRAIN_SPEEDS = (130, 160, 190)
TEST_SPEEDS = (145, 175)
TRAIN_PITCHES = (30, 50, 70)
TEST_PITCHES = (40, 60)
TRAIN_SNRS_DB = (30, 20, 10, 5)
TEST_SNRS_DB = (30, 20, 10)


@dataclass
class Size:
    """How much data to make: ``full`` for the README's figures, ``small`` and ``tiny`` for tests."""

    keyword_voices: int  # voices per keyword (of the train combinations)
    unknown_per_word: int
    copies: int  # placements of each utterance in a window
    background: int
    stream_words: int

    @classmethod
    def named(cls, name: str) -> Size:
        return {
            "full": cls(keyword_voices=270, unknown_per_word=16, copies=3, background=900,
                        stream_words=120),
            "small": cls(keyword_voices=150, unknown_per_word=8, copies=2, background=400,
                         stream_words=50),
            "tiny": cls(keyword_voices=60, unknown_per_word=3, copies=3, background=150,
                        stream_words=40),
        }[name]  # fmt: skip


def voices(names: tuple[str, ...], variants: tuple[str, ...], speeds: tuple[int, ...],
           pitches: tuple[int, ...]) -> list[Voice]:  # fmt: skip
    """Every combination of voice, variant, speed and pitch."""
    return [
        Voice(n + v, s, p) for n, v, s, p in itertools.product(names, variants, speeds, pitches)
    ]


def _place(
    word: Audio | None, window: int, rng: np.random.Generator, snrs: tuple[int, ...]
) -> Audio:
    """One window as the pipeline sees it: noise, maybe a word, maybe a zero-padded tail.

    After a VAD, windows start where kept audio starts and the last window of a stretch is
    zero-padded past its end, so training windows look the same.
    """
    kind = NOISE_KINDS[rng.integers(len(NOISE_KINDS))]
    out = noise_at_snr(kind, window, float(rng.choice(snrs)) + rng.uniform(-3, 3), rng)
    end = window
    if word is not None:
        word = word[:window] * 10 ** (rng.uniform(-6, 6) / 20)
        offset = int(rng.integers(0, window - word.shape[0] + 1))
        out[offset : offset + word.shape[0]] += word
        end = offset + word.shape[0]
    if rng.random() < 0.5:  # the end of a stretch of speech: padded with zeros
        cut = min(window, end + int(rng.uniform(0.15, 0.45) * SAMPLE_RATE))
        out[cut:] = 0.0
    return out.astype(np.float32)


def training_windows(size: Size, seed: int = 0) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Raw 1-second windows and their class indices (see :data:`CLASSES`)."""
    rng = np.random.default_rng(seed)
    combos = voices(TRAIN_VOICES, TRAIN_VARIANTS, TRAIN_SPEEDS, TRAIN_PITCHES)
    x: list[Audio] = []
    y: list[int] = []
    for label, word in enumerate(KEYWORDS):
        for i in rng.choice(len(combos), size.keyword_voices, replace=False):
            utterance = speak(word, combos[i])
            for _ in range(size.copies):
                x.append(_place(utterance, SAMPLE_RATE, rng, TRAIN_SNRS_DB))
                y.append(label)
    for word in TRAIN_WORDS:
        for i in rng.choice(len(combos), size.unknown_per_word, replace=False):
            utterance = speak(word, combos[i])
            for _ in range(max(1, size.copies - 1)):
                x.append(_place(utterance, SAMPLE_RATE, rng, TRAIN_SNRS_DB))
                y.append(CLASSES.index(UNKNOWN))
    for _ in range(size.background):
        x.append(_place(None, SAMPLE_RATE, rng, (*TRAIN_SNRS_DB, 0)))
        y.append(CLASSES.index(BACKGROUND))
    return np.stack(x), np.array(y, dtype=np.int64)


@dataclass
class Stream:
    """A test recording and what is in it (times in seconds from its start)."""

    audio: Audio
    keywords: list[dict[str, object]] = field(default_factory=list)
    distractors: list[dict[str, object]] = field(default_factory=list)
    background: list[dict[str, object]] = field(default_factory=list)

    def save(self, wav: Path, truth: Path) -> None:
        """Write the WAV file and the ground truth as JSON."""
        from edgedl.agent.pipeline.audio import write_wav

        write_wav(wav, self.audio, SAMPLE_RATE)
        data = asdict(self)
        del data["audio"]
        truth.write_text(json.dumps({"sample_rate": SAMPLE_RATE, **data}, indent=1))


def held_out_stream(size: Size, seed: int = 1) -> Stream:
    """Held-out voices saying keywords and distractors, with noise and silence between.

    The background changes every few words: white, pink or brown noise at one of
    :data:`TEST_SNRS_DB`, or near-silence (-80 dBFS), so the VAD has real gaps to drop.
    """
    rng = np.random.default_rng(seed)
    combos = voices(TEST_VOICES, TEST_VARIANTS, TEST_SPEEDS, TEST_PITCHES)
    distractors = TRAIN_WORDS + TEST_ONLY_WORDS + TEST_ONLY_WORDS
    pieces: list[Audio] = []
    stream = Stream(audio=np.zeros(0, np.float32))
    t = 0
    background = ("silence", 0.0)
    for i in range(size.stream_words):
        if i % 4 == 0:
            kind = ["silence", *NOISE_KINDS][rng.integers(1 + len(NOISE_KINDS))]
            background = (kind, float(rng.choice(TEST_SNRS_DB)))
            snr = None if kind == "silence" else background[1]
            stream.background.append({"start": t / SAMPLE_RATE, "kind": kind, "snr_db": snr})
        is_keyword = rng.random() < 0.4
        word = str(rng.choice(KEYWORDS if is_keyword else distractors))
        voice = combos[rng.integers(len(combos))]
        utterance = speak(word, voice) * 10 ** (rng.uniform(-6, 6) / 20)
        gap = int(rng.uniform(1.2, 2.5) * SAMPLE_RATE)
        n = gap + utterance.shape[0]
        if background[0] == "silence":
            bed = noise_at_snr("white", n, 60, rng)  # -80 dBFS: a quiet room, not zeros
        else:
            bed = noise_at_snr(background[0], n, background[1], rng)
        bed[gap:] += utterance
        pieces.append(bed.astype(np.float32))
        entry = {"label": word, "start": (t + gap) / SAMPLE_RATE,
                 "end": (t + n) / SAMPLE_RATE, "voice": str(voice)}  # fmt: skip
        (stream.keywords if is_keyword else stream.distractors).append(entry)
        t += n
    tail = noise_at_snr("white", SAMPLE_RATE * 2, 60, rng)
    stream.audio = np.concatenate([*pieces, tail]).astype(np.float32)
    return stream
