"""Segmentation networks: DRN-D-22 (the paper's model) and a small encoder-decoder for CPU runs.

Both return logits `[N, C, H, W]` at the input size, and, like the classifiers, expose `embed(x)`
(globally pooled encoder features `[N, D]`), `head`, `feature_layers` and the options
`second_head` and `dropout`. The classifier is a per-pixel `nn.Linear` (the same map as a 1x1
convolution), so `todal.models.head_of` and `with_dropout` work on these models unchanged.
"""

from __future__ import annotations

import abc
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TodalError, check_number
from . import register
from .resnet import BasicBlock


class Segmenter(nn.Module, abc.ABC):
    """Trunk -> per-pixel features -> (dropout) -> per-pixel linear head(s) -> bilinear upsampling."""

    feature_layers: list[str] = []

    def __init__(self, feature_dim: int, num_classes: int, *, second_head: bool = False, dropout: float = 0.0):
        super().__init__()
        dropout = check_number("dropout", type(self).__name__, dropout, lo=0, hi=1, hi_open=True)
        self.feature_dim = feature_dim
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(feature_dim, num_classes)
        self.head2 = nn.Linear(feature_dim, num_classes) if second_head else None

    @abc.abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, feature_dim, h, w): what the classifier sees at each position."""

    @abc.abstractmethod
    def embed(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, D): globally pooled encoder features."""

    def _classify(self, head: nn.Module, feats: Tensor, size: tuple[int, int]) -> Tensor:
        logits = head(self.drop(feats.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # (B, C, h, w)
        if logits.shape[-2:] == size:
            return logits.contiguous()
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        return self._classify(self.head, self.features(x), tuple(x.shape[-2:]))

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Main and second head on one trunk pass (the official TOD consistency loss)."""
        if self.head2 is None:
            raise TodalError(f"{type(self).__name__} has no second head; build it with second_head=True.")
        feats, size = self.features(x), tuple(x.shape[-2:])
        return self._classify(self.head, feats, size), self._classify(self.head2, feats, size)


# --- DRN-D-22 ---------------------------------------------------------------------------------
def _conv_level(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """One 3x3 conv-BN-ReLU: DRN-D's stem levels and its degridding levels (no residual)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _block_level(cin: int, cout: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """`blocks` BasicBlocks; a dilated level keeps the resolution (the authors' new_level=False)."""
    layers = [BasicBlock(cin, cout, stride, (dilation, dilation))]
    layers += [BasicBlock(cout, cout, 1, (dilation, dilation)) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class DRND22(Segmenter):
    """DRN-D-22 (Yu, Koltun, Funkhouser, "Dilated Residual Networks", CVPR 2017), as in fyu/drn's
    `drn.py` (`DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], arch='D')`) and `segment.py` (`DRNSeg`).

    Levels (channels 16, 32, 64, 128, 256, 512, 512, 512): a 7x7 conv stem, two 3x3 conv levels (the
    second with stride 2), BasicBlock levels at strides 2 and 2, then at dilation 2 and 4 with no
    further striding, then two degridding 3x3 conv levels (dilation 2, then 1) without residuals.
    Output stride 8; a 1x1 classifier (here the per-pixel linear head) and bilinear upsampling to
    the input size. Module names match the authors' `drn_d_22`, so `weights=` loads their ImageNet
    checkpoint (`drn_d_22-4bd2f8ea.pth`; the classifier `fc` is skipped).

    Departures: upsampling is `F.interpolate(..., "bilinear")` to the exact input size (their fixed
    bilinear ConvTranspose2d, or `use_torch_up`, only gives 8x the feature size); trained from
    scratch unless `weights=` is given (their DRNSeg starts from ImageNet weights).
    Paper setting (TOD appendix B): 688x688 random crops + flips, Adam lr 5e-4, batch 4, 40 epochs.
    """

    feature_layers = ["layer3", "layer4", "layer6", "layer8"]
    channels = (16, 32, 64, 128, 256, 512, 512, 512)

    def __init__(self, in_channels: int = 3, num_classes: int = 19, *, weights: str | os.PathLike | None = None,
                 **kw):
        c = self.channels
        super().__init__(c[7], num_classes, **kw)
        self.layer0 = nn.Sequential(nn.Conv2d(in_channels, c[0], 7, 1, padding=3, bias=False),
                                    nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True))
        self.layer1 = _conv_level(c[0], c[0])
        self.layer2 = _conv_level(c[0], c[1], stride=2)  # 1/2
        self.layer3 = _block_level(c[1], c[2], 2, stride=2)  # 1/4
        self.layer4 = _block_level(c[2], c[3], 2, stride=2)  # 1/8
        self.layer5 = _block_level(c[3], c[4], 2, dilation=2)
        self.layer6 = _block_level(c[4], c[5], 2, dilation=4)
        self.layer7 = _conv_level(c[5], c[6], dilation=2)  # degridding: no residual
        self.layer8 = _conv_level(c[6], c[7], dilation=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # the authors' init: N(0, 2 / (k·k·out))
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
        for head in (self.head, self.head2):
            if head is not None:  # DRNSeg's seg layer: N(0, 2 / classes), zero bias
                head.weight.data.normal_(0, math.sqrt(2.0 / num_classes))
                head.bias.data.zero_()
        if weights is not None:
            self._load_trunk(weights)

    def _load_trunk(self, path: str | os.PathLike) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise TodalError(f"The DRN-D-22 weights {str(path)!r} cannot be read ({type(e).__name__}); pass the "
                             "authors' drn_d_22 ImageNet checkpoint (a state dict).") from None
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if k.startswith("layer")}  # not the ImageNet classifier
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.startswith("layer")]
        if missing or unexpected:
            raise TodalError(f"The DRN-D-22 weights {str(path)!r} do not match the network "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}); pass the authors' drn_d_22 "
                             "checkpoint, and in_channels=3.")

    def features(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.layer0(x)))  # (B, 32, H/2, W/2)
        x = self.layer4(self.layer3(x))  # (B, 128, H/8, W/8)
        x = self.layer6(self.layer5(x))  # (B, 512, H/8, W/8)
        return self.layer8(self.layer7(x))  # (B, 512, H/8, W/8)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))  # (B, 512)


# --- small encoder-decoder ----------------------------------------------------------------------
def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegCNN(Segmenter):
    """A small U-Net-like encoder-decoder sized for CPU (64x64 scenes on 2 cores).

    Encoder: three conv stages (16, 32, 64 channels x width) with 2x2 max-pools between them
    (output stride 4); decoder: upsample, concatenate the skip of the same resolution, one conv
    stage, twice, back to full resolution; per-pixel linear head. `embed` pools the bottleneck.
    """

    feature_layers = ["enc2", "enc3", "dec2", "dec1"]

    def __init__(self, in_channels: int = 1, num_classes: int = 11, *, width: float = 1.0, **kw):
        c1, c2, c3 = (max(4, int(round(c * width))) for c in (16, 32, 64))
        super().__init__(c1, num_classes, **kw)
        self.enc1, self.enc2, self.enc3 = _stage(in_channels, c1), _stage(c1, c2), _stage(c2, c3)
        self.dec2, self.dec1 = _stage(c3 + c2, c2), _stage(c2 + c1, c1)
        self.pool = nn.MaxPool2d(2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e1 = self.enc1(x)  # (B, c1, H, W)
        e2 = self.enc2(self.pool(e1))  # (B, c2, H/2, W/2)
        e3 = self.enc3(self.pool(e2))  # (B, c3, H/4, W/4)
        return e1, e2, e3

    @staticmethod
    def _up(x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def features(self, x: Tensor) -> Tensor:
        e1, e2, e3 = self._encode(x)
        d2 = self.dec2(torch.cat([self._up(e3, e2), e2], 1))  # (B, c2, H/2, W/2)
        return self.dec1(torch.cat([self._up(d2, e1), e1], 1))  # (B, c1, H, W)

    def embed(self, x: Tensor) -> Tensor:
        return self._encode(x)[2].mean(dim=(2, 3))  # (B, c3)


@register("drn_d_22")
def drn_d_22(*, in_channels: int, num_classes: int, **kw) -> DRND22:
    """DRN-D-22, the paper's segmentation net (output stride 8)."""
    return DRND22(in_channels, num_classes, **kw)


@register("seg_cnn")
def seg_cnn(*, in_channels: int, num_classes: int, **kw) -> SegCNN:
    """A small encoder-decoder for segmentation on a CPU (options: width)."""
    return SegCNN(in_channels, num_classes, **kw)
