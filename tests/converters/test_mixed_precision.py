"""The mixed-precision search: the shortest prefix of the sensitivity order that brings
onnx-int8 within the bound, found by doubling and bisection in fewer probes than one layer
at a time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgedl.converters import ConvertOptions, convert
from edgedl.converters.mixed_precision import search_float_layers, shortest_prefix


@pytest.mark.parametrize("n", [1, 2, 5, 13, 64])
def test_bisection_finds_the_first_passing_prefix_of_a_monotone_measure(n: int) -> None:
    for first in [*range(1, n + 1), None]:
        probes: dict[str, list[int]] = {"bisect": [], "linear": []}
        for strategy, seen in probes.items():

            def within(k: int, seen: list[int] = seen, first: int | None = first) -> bool:
                seen.append(k)
                return first is not None and k >= first

            assert shortest_prefix(n, within, strategy) == first  # type: ignore[arg-type]
        # Doubling then bisecting: about 2·log2 of the prefix, never more than log2(n) + 1
        # past the doubling.
        k = first or n
        assert len(probes["bisect"]) <= 2 * math.ceil(math.log2(k)) + 2
        assert len(probes["linear"]) == (first or n)
        assert all(1 <= p <= n for p in probes["bisect"])


@pytest.fixture(scope="module")
def deep_outlier_mlp(torch_digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 13-layer MLP trained here on the digits, with eight wide-range hidden tensors.

    In hidden layers 2 to 9 the busiest unit is scaled up 1000x and the next layer's weights
    for it down 1000x: the float function is the same, but int8 loses each of those tensors
    (one scale must span 1000x the range), and plain int8 loses the model. Eight of them
    make the search need a long prefix, where doubling and bisection pay (with one, the
    prefix can be 3 layers, which one layer at a time finds in fewer probes).
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same training on any machine
    width, depth = 48, 12
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    train = np.load(torch_digits.train)
    x, y = torch.from_numpy(train["x"]), torch.from_numpy(train["y"]).long()
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    linear = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        hidden, busiest = x.flatten(1), {}
        for i, layer in enumerate(linear[:10]):
            hidden = torch.relu(layer(hidden))
            busiest[i] = int(hidden.mean(dim=0).argmax())
        for i in range(2, 10):  # each unit's scale undone by the next layer: same function
            c = busiest[i]
            linear[i].weight[c] *= 1000.0
            linear[i].bias[c] *= 1000.0
            linear[i + 1].weight[:, c] /= 1000.0
    path = tmp_path_factory.mktemp("deep-outlier") / "mlp.pt"
    torch.jit.trace(model, (torch.zeros(1, 1, 8, 8),)).save(str(path))
    return path


@pytest.mark.slow
def test_bisection_keeps_the_linear_prefix_in_fewer_probes(
    deep_outlier_mlp: Path, torch_digits: Any, tmp_path: Path
) -> None:
    data = {"calibration": torch_digits.train, "validation": torch_digits.test}
    int8 = convert(
        deep_outlier_mlp,
        ConvertOptions(target="onnx-int8", output=tmp_path / "int8", max_accuracy_drop=math.inf,
                       **data),
    )  # fmt: skip
    assert int8.report["accuracy_drop_pts"] > 5.0  # plain int8 exceeds a 1-point bound
    order = [r["node"] for r in int8.report["calibration"]["layer_errors"]]
    assert len(order) == 13
    options = ConvertOptions(max_accuracy_drop=1.0, **data)
    lines: list[str] = []
    bisect = search_float_layers(deep_outlier_mlp, options, order, "bisect", log=lines.append)
    linear = search_float_layers(deep_outlier_mlp, options, order, "linear")
    assert linear.float_layers is not None and bisect.float_layers is not None
    assert len(bisect.float_layers) <= len(linear.float_layers)
    assert bisect.float_layers == order[: len(bisect.float_layers)]
    assert len(bisect.float_layers) >= 8  # every wide-range tensor's layer
    assert len(bisect.probes) < len(linear.probes)
    # The prefix found is within the bound; the one a layer shorter was tried and is not.
    probed = {p.float_layers: p for p in bisect.probes}
    assert probed[len(bisect.float_layers)].within_bound
    assert not probed[len(bisect.float_layers) - 1].within_bound
    assert len(lines) == len(bisect.probes)
    assert lines[0].startswith("mixed precision, probe 1: 1 of 13 layers in float, drop ")
    # What the search measured is what the converted candidate does.
    mixed = convert(
        deep_outlier_mlp,
        ConvertOptions(target="onnx-int8", output=tmp_path / "mixed", max_accuracy_drop=1.0,
                       float_nodes=tuple(bisect.float_layers), **data),
    )  # fmt: skip
    assert mixed.report["accuracy_drop_pts"] == probed[len(bisect.float_layers)].drop_pts
