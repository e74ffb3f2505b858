"""A small CNN sized for 2 CPU cores: 8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import check_choice
from . import Classifier, register

NORMS = ("batch", "group")


def _norm(kind: str, channels: int) -> nn.Module:
    # group: 4 channels a group, no batch statistics (the same outputs whatever the batch and the number of
    # data-parallel processes; PyTorch's SyncBatchNorm runs on GPUs only)
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(max(1, channels // 4), channels)


def _stage(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


class SmallCNN(Classifier):
    """Three conv stages (32, 64, 128 channels x width), 2x2 max-pool after the first two,
    global average pool -> embedding of 128·width -> linear head. norm: "batch" (BatchNorm) or "group"
    (GroupNorm of 4 channels a group: no batch statistics)."""

    feature_layers = ["stage1", "stage2", "stage3"]

    def __init__(self, in_channels: int, num_classes: int, *, width: float = 1.0, norm: str = "batch", **kw):
        check_choice("norm", "small_cnn", norm, NORMS)
        c1, c2, c3 = (max(4, int(round(c * width))) for c in (32, 64, 128))
        super().__init__(c3, num_classes, **kw)
        self.stage1, self.stage2, self.stage3 = (_stage(in_channels, c1, norm), _stage(c1, c2, norm),
                                                 _stage(c2, c3, norm))
        self.pool = nn.MaxPool2d(2)

    def trunk(self, x: Tensor) -> Tensor:
        x = self.pool(self.stage1(x))  # (B, c1, H/2, W/2)
        x = self.pool(self.stage2(x))  # (B, c2, H/4, W/4)
        x = self.stage3(x)  # (B, c3, H/4, W/4)
        return x.mean(dim=(2, 3))  # (B, c3)


@register("small_cnn")
def small_cnn(*, in_channels: int, num_classes: int, **kw) -> SmallCNN:
    """A small CNN for 8-64 px images on a CPU (options: width, norm="batch"|"group")."""
    return SmallCNN(in_channels, num_classes, **kw)
