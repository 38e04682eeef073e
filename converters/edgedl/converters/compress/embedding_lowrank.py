"""Low rank for a PyTorch embedding model (any ``nn.Module``, e.g. all-MiniLM-L6-v2).

The data are an ``.npz`` with one array per argument of the module's ``forward`` (token ids
and an attention mask, say) and no labels. Every ``nn.Linear`` inside the module, however
deep, is split by truncated SVD into two thinner ones (the rank by ``--energy`` or
``--rank``, as :mod:`.lowrank` chooses it; a layer stays whole when the split would not
save weights). The short fine-tune is distillation of the original model's embeddings on
the training text: the loss is 1 - cosine similarity of each row to the original's. The
result is judged by the cosine of its embeddings to the original's on the held-out data
(mean and worst) and written as ONNX (integer inputs kept), which ``edgedl convert`` takes
to the ``onnx-*`` targets, and next to it as a ``torch.export`` program (``.pt2``, the
same inputs by name, a dynamic batch axis), which ``edgedl convert`` takes to the
``tflite-*`` targets through litert-torch.
"""

from __future__ import annotations

import copy
import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console

from edgedl.errors import DataError, ModelError, UsageError

from .. import torch_source
from .lowrank import Factorization, choose_rank
from .outcome import CompressResult, check_output

Feeds = dict[str, NDArray[Any]]


def holds_named_inputs(path: Path) -> bool:
    """Whether ``path`` is an ``.npz`` of named input arrays (no ``x``): an embedding model's."""
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "x" not in npz.files
    except (OSError, ValueError):
        return False


def _forward_names(module: Any) -> list[str]:
    params = inspect.signature(module.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _load_feeds(path: Path, names: list[str], role: str) -> Feeds:
    if not path.is_file():
        raise DataError(f"{role} data not found: {path}")
    with np.load(path, allow_pickle=False) as npz:
        missing = [n for n in names if n not in npz.files]
        if missing:
            raise DataError(
                f"{role} data {path}: no array for input {missing[0]!r} (the model takes "
                f"{', '.join(names)}; the file holds {', '.join(sorted(npz.files))})"
            )
        feeds = {n: np.asarray(npz[n]) for n in names}
    if len({len(v) for v in feeds.values()}) != 1 or not len(feeds[names[0]]):
        raise DataError(f"{role} data {path}: the inputs hold different or no samples")
    return feeds


def embed(module: Any, feeds: Feeds, batch: int = 64) -> Any:
    """The module's outputs on ``feeds`` (a torch tensor, gradients off)."""
    import torch

    n = len(next(iter(feeds.values())))
    with torch.no_grad():
        return torch.cat(
            [
                module(*[torch.from_numpy(v[i : i + batch]) for v in feeds.values()])
                for i in range(0, n, batch)
            ]
        )


def cosine(a: Any, b: Any) -> dict[str, float]:
    """Mean and worst cosine similarity of the rows of ``a`` to those of ``b``."""
    import torch

    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6)}


def factorize_linears(
    model: Any, energy: float | None, rank: int | None
) -> tuple[Any, list[Factorization]]:
    """A copy of ``model`` with every ``nn.Linear`` split in two where that saves weights."""
    import torch
    from torch import nn

    if rank is None and (energy is None or not 0.0 < energy <= 1.0):
        raise UsageError(f"--energy must be in (0, 1], not {energy}")
    if rank is not None and rank < 1:
        raise UsageError(f"--rank must be at least 1, not {rank}")
    student = copy.deepcopy(model)
    report: list[Factorization] = []
    linears = [(n, m) for n, m in student.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError("the model has no Linear layer to factorize")
    for name, m in linears:
        w = m.weight.detach().numpy().T.astype(np.float64)  # in x out
        n_in, n_out = w.shape
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        r = choose_rank(s, energy, rank)
        kept = float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-30))
        worth_it = r * (n_in + n_out) < n_in * n_out
        report.append(Factorization(name, n_in, n_out, r, kept, worth_it))
        if not worth_it:
            continue
        root = np.sqrt(s[:r])
        first = nn.Linear(n_in, r, bias=False)
        second = nn.Linear(r, n_out, bias=m.bias is not None)
        with torch.no_grad():
            first.weight.copy_(torch.from_numpy((u[:, :r] * root).T.astype(np.float32)))
            second.weight.copy_(torch.from_numpy((root[:, None] * vt[:r]).T.astype(np.float32)))
            if m.bias is not None:
                second.bias.copy_(m.bias)
        parent_name, _, attr = name.rpartition(".")
        parent = student.get_submodule(parent_name) if parent_name else student
        setattr(parent, attr, nn.Sequential(first, second))
    return student.eval(), report


def fine_tune(
    student: Any,
    teacher_out: Any,
    feeds: Feeds,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    console: Console | None,
) -> list[float]:
    """Distil the teacher's embeddings into ``student``: loss 1 - cosine; loss per epoch."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    n = len(teacher_out)
    losses = []
    student.train()
    for epoch in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            args = [torch.from_numpy(v[idx]) for v in feeds.values()]
            out = student(*args)
            loss = 1.0 - torch.nn.functional.cosine_similarity(out, teacher_out[idx], dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(round(total / n, 6))
        if console is not None:
            console.print(
                f"low-rank epoch {epoch + 1}/{epochs}: loss (1 - cosine) {losses[-1]:.5f}"
            )
    student.eval()
    return losses


def export_onnx(module: Any, example: Feeds, out: Path, opset: int = 18) -> str:
    """``module`` as ONNX with its forward's argument names and dynamic axes; the exporter used.

    ``torch.export`` (dynamo) first, the TorchScript exporter when that fails.
    """
    import torch

    names = list(example)
    args = tuple(torch.from_numpy(v[:2]) for v in example.values())
    try:
        dims = [torch.export.Dim(f"d{i}", max=4096) for i in range(args[0].dim())]
        shapes = {n: {i: dims[i] for i in range(a.dim())} for n, a in zip(names, args, strict=True)}
        with torch_source._quiet():
            torch.onnx.export(
                module, args, str(out), dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                external_data=False, input_names=names, output_names=["sentence_embedding"],
            )  # fmt: skip
        return "torch.export (dynamo)"
    except Exception:
        axes = {n: dict(enumerate(f"d{i}" for i in range(a.dim()))) for n, a in zip(names, args, strict=True)}  # fmt: skip
        with torch_source._quiet():
            torch.onnx.export(
                module, args, str(out), dynamo=False, opset_version=opset,
                input_names=names, output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            )  # fmt: skip
        return "torchscript"


def export_program(module: Any, example: Feeds, out: Path) -> None:
    """``module`` saved as a ``torch.export`` program at ``out``, taking the ``example``'s
    inputs by name (their dtypes kept) with a dynamic batch axis."""
    import torch

    args = tuple(torch.from_numpy(np.repeat(v[:1], 2, axis=0)) for v in example.values())
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {n: {0: batch} for n in example}
    try:
        with torch_source._quiet():
            program = torch.export.export(module, args, dynamic_shapes=shapes)
            torch.export.save(program, str(out))
    except Exception as exc:
        raise ModelError(
            f"torch.export could not export the low-rank module: {torch_source._first_line(exc)}"
        ) from exc


def compress_embedder(
    spec: str,
    data: Path,
    validation: Path,
    output: Path,
    *,
    energy: float | None,
    rank: int | None,
    epochs: int,
    batch_size: int,
    learning_rate: float | None,
    seed: int,
    force: bool,
    state_dict: Path | None = None,
    console: Console | None = None,
) -> CompressResult:
    """Low-rank ``spec`` (``package.module:factory``), fine-tune, write ONNX at ``output`` and
    a ``torch.export`` program next to it (``output`` with the suffix ``.pt2``)."""
    import json

    import torch

    check_output(output, ".onnx", force)
    program = output.with_suffix(".pt2")
    check_output(program, ".pt2", force)
    teacher = torch_source.load_module(spec, state_dict).module
    names = _forward_names(teacher)
    train = _load_feeds(data, names, "training")
    val = _load_feeds(validation, names, "validation")
    torch.manual_seed(seed)
    started = time.perf_counter()
    teacher_train, teacher_val = embed(teacher, train), embed(teacher, val)
    student, layers = factorize_linears(teacher, energy, rank)
    before_tuning = cosine(embed(student, val), teacher_val)
    losses = []
    if epochs > 0 and any(f.factorized for f in layers):
        losses = fine_tune(student, teacher_train, train, epochs, batch_size,
                           learning_rate or 1e-4, seed, console)  # fmt: skip
    seconds = time.perf_counter() - started
    after = cosine(embed(student, val), teacher_val)
    output.parent.mkdir(parents=True, exist_ok=True)
    exporter = export_onnx(student, val, output)
    export_program(student, val, program)

    def count(m: Any) -> int:
        return int(sum(p.numel() for p in m.parameters()))

    report = {
        "method": "lowrank",
        "source": spec,
        "output": str(output),
        "torch_export": str(program),
        "seed": seed,
        "epochs": epochs,
        "labels_used": False,
        "judged_by": "no labels: cosine similarity of the embeddings to the original model's",
        "parameters": {"before": count(teacher), "after": count(student)},
        "cosine": {"before_fine_tune": before_tuning, "after": after},
        "training_seconds": round(seconds, 1),
        "history": {"loss": losses},
        "exporter": exporter,
        "energy": energy if rank is None else None,
        "rank": rank,
        "layers": [f.to_dict() for f in layers],
    }
    output.with_suffix(".json").write_text(json.dumps(report, indent=1))
    return CompressResult(output, report)
