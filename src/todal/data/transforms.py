"""Batched, vectorized transforms: normalization and training augmentation (random crop + flip).

Order used by `transforms_for`: augment in *pixel space* (the raw uint8 or float batch, so the
zero padding is a black pixel, as in "randomly crop 32x32 images from the 36x36 zero-padded
images"), then normalize.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import TodalError, check_bool, check_int, param_error

BatchFn = Callable[..., Tensor]


def to_float(x: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1]; anything else -> float32 with its values unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    return x.float()


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """`(to_float(x) - mean) / std` per channel.

    Args:
        x: `[B, C, H, W]` (or `[C, H, W]`), uint8 (divided by 255 first) or float (used as-is).
        mean, std: C values (or one) on the [0, 1] scale.
    Returns:
        float32 tensor of the same shape.
    """
    c = x.shape[-3] if x.dim() >= 3 else -1
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise TodalError(f"normalize got a batch of shape {tuple(x.shape)} with {len(mean)} means and {len(std)} "
                         f"stds; give one mean and std per channel ({c}).")
    x = to_float(x)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x - m) / s


class BatchAugment:
    """Random crop from the zero-padded image and random horizontal flip, per sample, in one gather.

    Args:
        crop_padding: p; each image is zero-padded by p on every side and an H x W window is cut at a
            per-sample offset (dy, dx) in [0, 2p]^2. (p, p) is the identity.
        hflip: flip each image left-right with probability 1/2.
    """

    def __init__(self, crop_padding: int = 0, hflip: bool = False):
        crop_padding = check_int("crop_padding", "BatchAugment", crop_padding, lo=0)
        hflip = check_bool("hflip", "BatchAugment", hflip)
        self.crop_padding, self.hflip = crop_padding, hflip

    @property
    def identity(self) -> bool:
        return self.crop_padding == 0 and not self.hflip

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw the random parameters: offsets `[B, 2]` int64 (dy, dx) in [0, 2p], flips `[B]` bool.

        All randomness comes from `generator` (the global RNG when None), on the generator's device.
        """
        device = generator.device if generator is not None else torch.device("cpu")
        p = self.crop_padding
        if p > 0:
            offsets = torch.randint(0, 2 * p + 1, (batch_size, 2), generator=generator, device=device)
        else:
            offsets = torch.zeros(batch_size, 2, dtype=torch.long, device=device)
        if self.hflip:
            flips = torch.rand(batch_size, generator=generator, device=device) < 0.5
        else:
            flips = torch.zeros(batch_size, dtype=torch.bool, device=device)
        return offsets, flips

    def apply(self, x: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
        """Crop `x` `[B, C, H, W]` at `offsets` `[B, 2]` of its padded version, flip where `flips` `[B]`.

        Returns `[B, C, H, W]`, same dtype as `x`.
        """
        if x.dim() != 4:
            raise param_error("x", "BatchAugment", "a 4-D batch [B, C, H, W]", tuple(x.shape))
        b, c, h, w = x.shape
        offsets, flips = offsets.to(x.device), flips.to(x.device)
        p = self.crop_padding
        if p == 0:
            return torch.where(flips.view(b, 1, 1, 1), x.flip(-1), x) if self.hflip else x
        # Zeros are black pixels, since x is still in pixel space. (F.pad is ~500x slower on uint8 on CPU.)
        padded = x.new_zeros(b, c, h + 2 * p, w + 2 * p)
        padded[:, :, p:p + h, p:p + w] = x
        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = offsets[:, :1] + ar_h  # [B, H]
        # Flipping the crop reads its columns right to left, so the flip folds into the same gather.
        cols = offsets[:, 1:] + torch.where(flips[:, None], ar_w.flip(0), ar_w)  # [B, W]
        bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
        ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch `[B, C, H, W]` -> `[B, C, H, W]` (same dtype)."""
        if self.identity:
            return x
        offsets, flips = self.sample(len(x), generator)
        return self.apply(x, offsets, flips)

    def __repr__(self) -> str:
        return f"BatchAugment(crop_padding={self.crop_padding}, hflip={self.hflip})"


def transforms_for(dataset) -> tuple[BatchFn, BatchFn]:
    """`(train_fn, test_fn)` for a dataset; each is `fn(x_batch, generator=None) -> float32 batch`.

    With `mean`/`std` attributes (ArrayDataset): train_fn augments with the dataset's
    `crop_padding`/`hflip` in pixel space, then normalizes; test_fn only normalizes. Without them
    (any other dataset) both just convert to float32 (uint8 scaled to [0, 1]).
    """
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    if mean is None or std is None:
        def plain(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
            return to_float(torch.as_tensor(x))

        return plain, plain
    mean, std = tuple(mean), tuple(std)
    augment = BatchAugment(int(getattr(dataset, "crop_padding", 0) or 0), bool(getattr(dataset, "hflip", False)))

    def train_fn(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return normalize(augment(x, generator), mean, std)

    def test_fn(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return normalize(x, mean, std)

    return train_fn, test_fn
