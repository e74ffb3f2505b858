"""ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), as in the TOD and LL4AL code."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from . import Classifier, register


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity or 1x1 shortcut (`downsample`): ResNet-18's
    block, and DRN-D-22's with `dilation` (module names as in torchvision and fyu/drn, so their
    checkpoints load)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: tuple[int, int] = (1, 1)):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation[0], dilation=dilation[0], bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation[1], dilation=dilation[1], bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(Classifier):
    feature_layers = ["layer1", "layer2", "layer3", "layer4"]

    def __init__(self, in_channels: int = 3, num_classes: int = 10, **kw):
        super().__init__(512, num_classes, **kw)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def trunk(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 64, H, W)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, H/8, W/8)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 512)


@register("resnet18")
def resnet18(*, in_channels: int, num_classes: int, **kw) -> ResNet18:
    """ResNet-18 with the CIFAR stem (the paper's classifier, appendix B)."""
    return ResNet18(in_channels, num_classes, **kw)
