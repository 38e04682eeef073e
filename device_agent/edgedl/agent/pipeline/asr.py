"""The ``asr`` stage: offline speech recognition with PocketSphinx, one call per segment.

PocketSphinx (the ``pocketsphinx`` package on PyPI, CMU Sphinx's decoder) ships a US English
acoustic model, a 3-gram language model and the CMU pronouncing dictionary inside the wheel,
so nothing is downloaded at run time. It runs in real time on a Raspberry Pi class CPU for
short utterances; it is a small, old-school recognizer, far less accurate than a neural one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgedl.errors import ConfigError

from .audio import float_to_pcm16
from .segment_stage import SegmentStage
from .stream import Output, Samples, Transcript

#: PocketSphinx's non-words: sentence marks, silence and noise models.
FILLERS = frozenset({"<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]", "<noise>"})


def word_of(token: str) -> str:
    """``read(2)`` (an alternative pronunciation) is the word ``read``."""
    return token.split("(", 1)[0]


class AsrStage(SegmentStage):
    """Each segment through a PocketSphinx decoder; one :class:`Transcript` per segment.

    A segment in which the decoder hears no word gives a transcript with no text (it still
    counts: a VAD that passes noise makes empty transcripts).
    """

    unit_out = "transcripts"

    def __init__(
        self,
        name: str,
        sample_rate: int,
        max_segment_s: float = 15,
        lm: str | None = None,
        dictionary: str | None = None,
    ) -> None:
        super().__init__(name, sample_rate, max_segment_s)
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise ConfigError(
                "the asr stage needs PocketSphinx: pip install 'edgedl[asr]'"
            ) from exc
        options: dict[str, Any] = {"samprate": sample_rate}
        if lm is not None:
            options["lm"] = lm
        if dictionary is not None:
            options["dict"] = dictionary
        try:
            self.decoder = Decoder(**options)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"PocketSphinx could not start: {exc}") from exc
        self.transcripts = 0
        self.words = 0
        self.confidence_sum = 0.0

    def on_segment(self, start: int, audio: Samples) -> list[Output]:
        """Decode one utterance."""
        d = self.decoder
        d.start_utt()
        d.process_raw(float_to_pcm16(audio), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        scored = [(word_of(s.word), float(s.prob)) for s in d.seg() if s.word not in FILLERS]
        words = tuple(w for w, _ in scored if w not in FILLERS)
        confidence = float(np.mean([p for _, p in scored])) if scored else 0.0
        self.transcripts += 1
        self.words += len(words)
        self.confidence_sum += confidence
        end = start + int(audio.shape[0])
        text = hyp.hypstr if hyp is not None else ""
        return [
            Transcript(
                start / self.sample_rate,
                end / self.sample_rate,
                text,
                words,
                confidence,
                self.name,
            )
        ]

    def extra_stats(self) -> dict[str, Any]:
        """Transcripts, words and the sum of confidences (for means over any span)."""
        return {
            **super().extra_stats(),
            "transcripts": self.transcripts,
            "words": self.words,
            "confidence_sum": round(self.confidence_sum, 4),
        }
