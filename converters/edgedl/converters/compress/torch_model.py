"""The four methods on a PyTorch ``nn.Sequential`` (given as ``package.module:factory``).

The same algorithms as for Keras (:mod:`.prune`, :mod:`.lowrank`, :mod:`.cluster`,
:mod:`.distill`), on PyTorch's layouts: Conv2d weights are (out, in, kh, kw), Linear
(out, in), and Flatten orders NCHW values channel first. The compressed module is traced
to TorchScript (a ``.pt`` file ``edgedl convert`` takes, for the onnx-* targets).
Training is seeded, single-threaded and uses deterministic algorithms, as
:mod:`edgedl.converters.torch_digits` trains, so a run repeats exactly.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console

from edgedl.errors import ModelError

from .cluster import Clustering, cluster_values
from .lowrank import Factorization, choose_rank
from .prune import l1_keep
from .training import History, TrainingSpec

_CHANNELWISE = {
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardswish",
    "Dropout", "Dropout2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "Identity", "Softmax",
}  # fmt: skip


def _layers(model: Any) -> list[Any]:
    import torch

    if not isinstance(model, torch.nn.Sequential):
        raise ModelError(
            f"edgedl compress rebuilds PyTorch models given as an nn.Sequential; the factory "
            f"returned {type(model).__name__}"
        )
    return list(model)


def _input_shapes(layers: list[Any], sample: Any) -> list[tuple[int, ...]]:
    import torch

    shapes = []
    x = sample[:1]
    with torch.no_grad():
        for layer in layers:
            shapes.append(tuple(x.shape[1:]))
            x = layer(x)
    return shapes


def prune(model: Any, ratio: float, sample: Any) -> tuple[Any, dict[str, tuple[int, int]]]:
    """``ratio`` of each hidden Conv2d/Linear's outputs removed by L1 norm (weights copied)."""
    import torch
    from torch import nn

    layers = _layers(model)
    shapes = _input_shapes(layers, sample)
    weighted = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d | nn.Linear)]
    if not weighted:
        raise ModelError("the model has no Conv2d or Linear layer to prune")
    keep: NDArray[np.int64] | None = None
    out: list[Any] = []
    changes: dict[str, tuple[int, int]] = {}
    for i, m in enumerate(layers):
        kind = type(m).__name__
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = m.weight.detach().numpy()
            if keep is not None:
                w = np.take(w, keep, axis=1)
            b = None if m.bias is None else m.bias.detach().numpy()
            # l1_keep reads output channels on the last axis.
            out_keep = None if i == weighted[-1] else l1_keep(np.moveaxis(w, 0, -1), ratio)
            if out_keep is not None:
                w = np.take(w, out_keep, axis=0)
                b = None if b is None else np.take(b, out_keep)
                changes[str(i)] = (int(m.weight.shape[0]), len(out_keep))
            if isinstance(m, nn.Conv2d):
                new: Any = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding,
                                     m.dilation, bias=b is not None)  # fmt: skip
                if m.groups != 1:
                    raise ModelError(f"layer {i}: grouped convolutions cannot be pruned")
            else:
                new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            with torch.no_grad():
                new.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                if b is not None:
                    new.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
            out.append(new)
            keep = out_keep
        elif keep is None or kind in _CHANNELWISE:
            out.append(m)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            new = type(m)(len(keep), eps=m.eps, momentum=m.momentum)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new, name).copy_(getattr(m, name)[torch.from_numpy(keep)])
            out.append(new)
        elif isinstance(m, nn.Flatten):
            spatial = int(np.prod(shapes[i][1:])) if len(shapes[i]) > 1 else 1
            keep = (keep[:, None] * spatial + np.arange(spatial)[None, :]).reshape(-1)
            out.append(m)
        else:
            raise ModelError(f"cannot prune through layer {i} ({kind})")
    return nn.Sequential(*out).eval(), changes


def factorize(
    model: Any, energy: float | None, rank: int | None
) -> tuple[Any, list[Factorization]]:
    """Every Linear and 1x1 Conv2d split in two by truncated SVD where that saves weights."""
    import torch
    from torch import nn

    out: list[Any] = []
    report: list[Factorization] = []
    for i, m in enumerate(_layers(model)):
        pointwise = (
            isinstance(m, nn.Conv2d)
            and m.kernel_size == (1, 1)
            and m.stride == (1, 1)
            and m.groups == 1
        )
        if not (isinstance(m, nn.Linear) or pointwise):
            out.append(m)
            continue
        w = m.weight.detach().numpy().reshape(m.weight.shape[0], m.weight.shape[1]).T  # in x out
        n_in, n_out = w.shape
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        r = choose_rank(s, energy, rank)
        kept = float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-30))
        worth_it = r * (n_in + n_out) < n_in * n_out
        report.append(Factorization(str(i), n_in, n_out, r, kept, worth_it))
        if not worth_it:
            out.append(m)
            continue
        root = np.sqrt(s[:r])
        a = (u[:, :r] * root).T.astype(np.float32)  # r x in (PyTorch: out x in)
        b = (root[:, None] * vt[:r]).T.astype(np.float32)  # out x r
        if pointwise:
            first: Any = nn.Conv2d(n_in, r, 1, bias=False)
            second: Any = nn.Conv2d(r, n_out, 1, bias=m.bias is not None)
            a, b = a[:, :, None, None], b[:, :, None, None]
        else:
            first, second = (
                nn.Linear(n_in, r, bias=False),
                nn.Linear(r, n_out, bias=m.bias is not None),
            )
        with torch.no_grad():
            first.weight.copy_(torch.from_numpy(np.ascontiguousarray(a)))
            second.weight.copy_(torch.from_numpy(np.ascontiguousarray(b)))
            if m.bias is not None:
                second.bias.copy_(m.bias)
        out += [first, second]
    return nn.Sequential(*out).eval(), report


def cluster(model: Any, clusters: int, seed: int) -> tuple[Any, list[Clustering]]:
    """Every Conv2d/Linear weight clustered to ``clusters`` values (in place on a copy)."""
    import copy

    import torch
    from torch import nn

    model = copy.deepcopy(model)
    report = []
    for i, m in enumerate(_layers(model)):
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = m.weight.detach().numpy()
            c = cluster_values(w, clusters, seed)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(c))
            report.append(Clustering(str(i), int(w.size), len(np.unique(c))))
    return model, report


def narrower(model: Any, width: float, sample: Any) -> Any:
    """The same architecture with ``width`` times the hidden channels, freshly initialised."""
    import copy

    from torch import nn

    layers = _layers(model)
    shapes = _input_shapes(layers, sample)
    weighted = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d | nn.Linear)]
    out: list[Any] = []
    n_in: int | None = None  # inputs of the next weighted layer, in the student
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d | nn.Linear):
            teacher_out = int(m.weight.shape[0])
            n_out = teacher_out if i == weighted[-1] else max(1, math.ceil(teacher_out * width))
            given = int(m.weight.shape[1]) if n_in is None else n_in
            if isinstance(m, nn.Conv2d):
                if m.groups != 1:
                    raise ModelError(f"layer {i}: grouped convolutions cannot be narrowed")
                out.append(nn.Conv2d(given, n_out, m.kernel_size, m.stride, m.padding,
                                     m.dilation, bias=m.bias is not None))  # fmt: skip
            else:
                out.append(nn.Linear(given, n_out, bias=m.bias is not None))
            n_in = n_out
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and n_in is not None:
            out.append(type(m)(n_in, eps=m.eps, momentum=m.momentum))
        elif isinstance(m, nn.Flatten) and n_in is not None:
            n_in *= int(np.prod(shapes[i][1:])) if len(shapes[i]) > 1 else 1
            out.append(nn.Flatten())
        elif n_in is None or type(m).__name__ in _CHANNELWISE:
            out.append(copy.deepcopy(m))
        else:
            raise ModelError(f"cannot narrow through layer {i} ({type(m).__name__})")
    return nn.Sequential(*out)


def train(
    model: Any,
    x: NDArray[np.float32],
    labels: NDArray[np.int64] | None,
    teacher_logits: NDArray[np.float32],
    val: tuple[NDArray[np.float32], NDArray[np.int64]],
    spec: TrainingSpec,
    seed: int,
    console: Console | None,
    title: str,
) -> History:
    """Adam on the labels' and the teacher's (temperature-softened) cross-entropy, seeded;
    the rate constant or decaying along a cosine (``spec.schedule``)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    history = History()
    start = time.perf_counter()
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
        steps = max(1, spec.epochs * -(-len(x) // spec.batch_size))
        decay = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _rate_factor(spec.schedule, step, steps)
        )
        xt = torch.from_numpy(np.ascontiguousarray(x))
        yt = None if labels is None else torch.from_numpy(labels)
        soft = F.softmax(torch.from_numpy(teacher_logits) / spec.temperature, dim=1)
        order = torch.Generator().manual_seed(seed)
        t = spec.temperature
        for epoch in range(spec.epochs):
            model.train()
            total, batches = 0.0, 0
            for idx in torch.randperm(len(xt), generator=order).split(spec.batch_size):
                optimizer.zero_grad()
                z = model(xt[idx])
                loss = torch.zeros(())
                if spec.alpha > 0 and yt is not None:
                    loss = loss + spec.alpha * F.cross_entropy(z, yt[idx])
                if spec.alpha < 1:
                    kd = -(soft[idx] * F.log_softmax(z / t, dim=1)).sum(dim=1).mean()
                    loss = loss + (1 - spec.alpha) * t * t * kd
                loss.backward()
                optimizer.step()
                decay.step()
                total, batches = total + float(loss), batches + 1
            model.eval()
            acc = accuracy(model, *val)
            history.loss.append(total / max(batches, 1))
            history.accuracy.append(acc)
            if console is not None:
                console.print(
                    f"  {title} epoch {epoch + 1}/{spec.epochs}  loss {history.loss[-1]:.4f}  "
                    f"held-out accuracy {acc:.2f}%  ({time.perf_counter() - start:.0f} s)",
                    highlight=False,
                )
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    history.seconds = time.perf_counter() - start
    return history


def _rate_factor(schedule: str, step: int, steps: int) -> float:
    """The share of the learning rate at ``step`` of ``steps``: 1, or a half cosine to 0."""
    if schedule != "cosine":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def logits(model: Any, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """The module's outputs for ``x`` (in chunks), as a float32 array."""
    import torch

    with torch.no_grad():
        parts = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + 256]))).numpy()
                 for i in range(0, len(x), 256)]  # fmt: skip
    out: NDArray[np.float32] = np.concatenate(parts).astype(np.float32)
    return out


def accuracy(model: Any, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    """Top-1 accuracy in percent."""
    return float(np.mean(logits(model, x).argmax(axis=1) == y) * 100.0)


def parameters(model: Any) -> int:
    """The number of values in the module's parameters (trainable or not, buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def macs(model: Any, sample: Any) -> int:
    """Multiply-adds of one sample through the Conv2d and Linear layers (forward hooks)."""
    import torch
    from torch import nn

    counts: list[int] = []

    def hook(module: Any, _inputs: Any, output: Any) -> None:
        positions = int(np.prod(output.shape[2:])) if isinstance(module, nn.Conv2d) else 1
        counts.append(positions * module.weight.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]  # fmt: skip
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in handles:
            h.remove()
    return sum(counts)


def save(model: Any, sample: Any, path: Any) -> None:
    """Trace ``model`` on one sample and save it as TorchScript."""
    import torch

    torch.jit.trace(model.eval(), (sample[:1],)).save(str(path))
