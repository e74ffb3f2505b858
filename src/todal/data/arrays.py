"""In-memory image datasets: tensors held whole, batches gathered by indexing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import TodalError, check_bool, check_int, param_error

_OWNER = "ArrayDataset"


def _as_tensor(a, name: str) -> Tensor:
    if isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    raise param_error(name, _OWNER, "a torch.Tensor or numpy array", type(a).__name__)


def _channels(value, name: str, channels: int, positive: bool) -> tuple[float, ...]:
    """A per-channel tuple from a scalar, a 1-element or a C-element sequence."""
    try:
        vals = [float(v) for v in (value if isinstance(value, (list, tuple, np.ndarray, Tensor)) else [value])]
    except (TypeError, ValueError):
        raise param_error(name, _OWNER, f"a float or {channels} floats (one per channel)", value) from None
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise param_error(name, _OWNER, f"a float or {channels} floats (one per channel)", value,
                          f"x has {channels} channels; give one value per channel.")
    if not all(np.isfinite(vals)) or (positive and min(vals) <= 0):
        raise param_error(name, _OWNER, "finite" + (" and > 0" if positive else ""), value,
                          "Compute it with todal.data.channel_stats(x_train).")
    return tuple(vals)


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of `x` `[N, C, H, W]` on the [0, 1] scale for uint8.

    uint8 uses a 256-bin histogram per channel, so 60,000 images cost no float copy.
    """
    x = _as_tensor(x, "x")
    if x.dim() != 4 or x.numel() == 0:
        raise param_error("x", "channel_stats", "a non-empty 4-D tensor [N, C, H, W]", tuple(x.shape))
    means, stds = [], []
    for c in range(x.shape[1]):
        xc = x[:, c].reshape(-1)
        if x.dtype == torch.uint8:
            counts = torch.bincount(xc, minlength=256).double()
            v = torch.arange(256, dtype=torch.float64) / 255
            m = float((counts * v).sum() / counts.sum())
            var = float((counts * (v - m) ** 2).sum() / counts.sum())
        else:
            xd = xc.double()
            m, var = float(xd.mean()), float(xd.var(unbiased=False))
        means.append(m)
        stds.append(max(var, 0.0) ** 0.5 or 1.0)  # a constant channel: std 1 keeps normalize finite
    return tuple(means), tuple(stds)


class ArrayDataset:
    """Images and labels held in memory.

    Args:
        x: uint8 pixels `[N, C, H, W]` (0..255), or float `[N, C, H, W]` (mean/std then apply as-is).
        y: integer class labels `[N]` in `[0, num_classes)`.
        num_classes: number of classes C.
        mean, std: per-channel normalization on the [0, 1] scale (a float or one per channel).
        classes: class names, `num_classes` of them (default "0", "1", ...).
        name: dataset name for messages.
        crop_padding: training augmentation, random crop of the image zero-padded by this many pixels.
        hflip: training augmentation, random horizontal flip.
    """

    def __init__(self, x, y, *, num_classes: int, mean, std, classes: Sequence[str] | None = None,
                 name: str = "", crop_padding: int = 0, hflip: bool = False):
        x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
        if x.dim() != 4:
            raise param_error("x", _OWNER, "a 4-D tensor [N, C, H, W]", tuple(x.shape),
                              "Add the channel axis: x[:, None] for grayscale, x.permute(0, 3, 1, 2) for [N, H, W, C].")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise param_error("x", _OWNER, "uint8 (0..255) or float", str(x.dtype),
                              "Convert it with x.to(torch.uint8) or x.float().")
        if y.dim() != 1:
            raise param_error("y", _OWNER, "a 1-D tensor of labels [N]", tuple(y.shape),
                              "Flatten it with y.reshape(-1).")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise param_error("y", _OWNER, "integer class labels", str(y.dtype), "Convert it with y.long().")
        if len(x) != len(y):
            raise TodalError(f"x has {len(x)} samples but y has {len(y)}; give one label per image.")
        num_classes = check_int("num_classes", _OWNER, num_classes, lo=1)
        crop_padding = check_int("crop_padding", _OWNER, crop_padding, lo=0)
        hflip = check_bool("hflip", _OWNER, hflip)
        if x.is_floating_point():
            x = x.float()
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                kind = "NaN" if bool(torch.isnan(x[i]).any()) else "inf"
                raise TodalError(f"x contains {kind} at sample {i}; clean the data or drop those samples.")
        y = y.long()
        out = (y < 0) | (y >= num_classes)
        if bool(out.any()):
            i = int(out.nonzero()[0])
            raise TodalError(f"y has label {int(y[i])} at sample {i}, outside [0, {num_classes}); labels must be "
                             f"class indices 0..{num_classes - 1}: remap them or pass a larger num_classes.")
        c = x.shape[1]
        if classes is None:
            classes = [str(i) for i in range(num_classes)]
        classes = [str(n) for n in classes]
        if len(classes) != num_classes:
            raise param_error("classes", _OWNER, f"{num_classes} names (one per class)", f"{len(classes)} names")
        self._set(x.contiguous(), y.contiguous(), num_classes, _channels(mean, "mean", c, False),
                  _channels(std, "std", c, True), classes, str(name), int(crop_padding), bool(hflip))

    def _set(self, x, y, num_classes, mean, std, classes, name, crop_padding, hflip) -> None:
        self.x, self.y, self.num_classes = x, y, num_classes
        self.mean, self.std, self.classes, self.name = mean, std, classes, name
        self.crop_padding, self.hflip = crop_padding, hflip
        self.in_channels = int(x.shape[1])
        self.image_size = (int(x.shape[2]), int(x.shape[3]))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i) -> tuple[Tensor, Tensor]:
        """`(x[i] [C, H, W], y[i] [])`."""
        return self.x[i], self.y[i]

    def batch(self, idx) -> tuple[Tensor, Tensor]:
        """`(x[idx] [B, C, H, W], y[idx] [B])` for a LongTensor of indices `[B]`: one gather each."""
        return self.x[idx], self.y[idx]

    def subset(self, idx) -> "ArrayDataset":
        """A new ArrayDataset of the samples `idx` with the same metadata (no re-validation)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        new = object.__new__(ArrayDataset)
        new._set(self.x[idx], self.y[idx], self.num_classes, self.mean, self.std, list(self.classes),
                 self.name, self.crop_padding, self.hflip)
        return new

    def __repr__(self) -> str:
        c, (h, w) = self.in_channels, self.image_size
        dtype = str(self.x.dtype).replace("torch.", "")
        return (f"ArrayDataset({self.name!r}, n={len(self)}, x=[{c}, {h}, {w}] {dtype}, "
                f"num_classes={self.num_classes}, crop_padding={self.crop_padding}, hflip={self.hflip})")


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split: `round(n_c * test_fraction)` of each class go to test.

    Returns sorted `(train_idx, test_idx)`. A class with a single sample stays in train.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):  # a loop over classes, not samples
        members = np.flatnonzero(labels == c)
        k = min(int(round(len(members) * test_fraction)), len(members) - 1)
        test.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx
