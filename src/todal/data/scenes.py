"""fashion-mnist-scenes: an offline, real-data segmentation benchmark composed from Fashion-MNIST.

Each scene is a 64x64 canvas holding 2-4 Fashion-MNIST items. The canvas is cut into four 32x32
quadrants; each item takes its own quadrant (a random choice of 2-4 of the four) at a random offset
that may reach `jitter` pixels past the quadrant's edges, so neighbouring items overlap in strips at
most `2 * jitter` pixels wide (12 of an item's 28 by default) and every item stays inside the
canvas. Items are pasted in order; an item's pixel is opaque where its intensity is above
`threshold` (it covers what lies beneath) and transparent elsewhere. The label of a pixel is
1 + the class of the topmost item opaque there, 0 (background) where none is: 11 classes. The
image holds exactly the opaque pixels.

Scenes are generated on the fly, a batch at a time, from per-scene parameters drawn once from the
seed (item ids and offsets: 96 bytes a scene). Holding 60,000 scenes in memory would cost
2 x 245 MB (images and masks); composing a batch of 256 takes a few tens of milliseconds on one
CPU core, small beside a forward pass over it, so nothing is cached. Train scenes use only the
train split's items, test scenes only the test split's.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import Int, TodalError, check_bool, check_int, param_error, validate
from .transforms import normalize

ITEM = 28  # Fashion-MNIST items are 28x28
_OWNER = "read_fashion_mnist_scenes"
_SCENE_RULES = {"size": Int(lo=1), "seed": Int(lo=0), "canvas": Int(lo=2 * ITEM), "min_items": Int(lo=1),
                "jitter": Int(lo=0), "padding": Int(lo=0), "threshold": Int(lo=0, hi=254, expected="an int in [0, 255)")}


class PairAugment:
    """Random crop (of zero-padded images) and horizontal flip, applied to images and masks together.

    Args:
        crop: output size `(h, w)` (an int for a square); None keeps the input size.
        padding: pixels added on every side before cropping (images with `fill`, masks with
            `mask_fill`); the padding also grows so that an image smaller than `crop` can be cut.
        hflip: flip each sample left-right with probability 1/2.
        fill, mask_fill: the pad values of the image and of the mask (255 = ignored by the loss).
    The mask is only ever indexed (cropped, flipped), never interpolated.
    """

    def __init__(self, crop: int | Sequence[int] | None = None, padding: int = 0, hflip: bool = True,
                 fill: int = 0, mask_fill: int = 255):
        if crop is not None:
            crop = (crop, crop) if isinstance(crop, int) and not isinstance(crop, bool) else tuple(crop)
            if len(crop) != 2 or not all(isinstance(v, int) and v > 0 for v in crop):
                raise param_error("crop", "PairAugment", "a positive int, (height, width) or None", crop)
        padding = check_int("padding", "PairAugment", padding, lo=0)
        hflip = check_bool("hflip", "PairAugment", hflip)
        self.crop, self.padding, self.hflip = crop, padding, hflip
        self.fill, self.mask_fill = fill, mask_fill

    def _pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding for an `h x w` input."""
        th, tw = self.crop or (h, w)
        p = self.padding
        eh, ew = max(0, th - h - 2 * p), max(0, tw - w - 2 * p)
        return p + eh // 2, p + eh - eh // 2, p + ew // 2, p + ew - ew // 2

    def sample(self, batch_size: int, h: int, w: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Offsets `[B, 2]` (row, col of the crop in the padded input) and flips `[B]` bool."""
        device = generator.device if generator is not None else torch.device("cpu")
        top, bottom, left, right = self._pads(h, w)
        th, tw = self.crop or (h, w)
        hi = torch.tensor([h + top + bottom - th + 1, w + left + right - tw + 1], device=device)
        offsets = (torch.rand(batch_size, 2, generator=generator, device=device) * hi).long().minimum(hi - 1)
        if self.hflip:
            flips = torch.rand(batch_size, generator=generator, device=device) < 0.5
        else:
            flips = torch.zeros(batch_size, dtype=torch.bool, device=device)
        return offsets, flips

    def apply(self, x: Tensor, y: Tensor, offsets: Tensor, flips: Tensor) -> tuple[Tensor, Tensor]:
        """Cut `x` `[B, C, H, W]` and `y` `[B, H, W]` at `offsets`, flip where `flips`: one gather each."""
        b, c, h, w = x.shape
        if y.shape != (b, h, w):
            raise TodalError(f"PairAugment got images {tuple(x.shape)} and masks {tuple(y.shape)}; the masks must "
                             "be [B, H, W] with the images' B, H and W.")
        top, bottom, left, right = self._pads(h, w)
        if top or bottom or left or right:
            xp = x.new_full((b, c, h + top + bottom, w + left + right), self.fill)
            xp[:, :, top:top + h, left:left + w] = x
            yp = y.new_full((b, h + top + bottom, w + left + right), self.mask_fill)
            yp[:, top:top + h, left:left + w] = y
            x, y = xp, yp
        th, tw = self.crop or (h, w)
        offsets, flips = offsets.to(x.device), flips.to(x.device)
        ar_w = torch.arange(tw, device=x.device)
        rows = offsets[:, :1] + torch.arange(th, device=x.device)  # (B, th)
        cols = offsets[:, 1:] + torch.where(flips[:, None], ar_w.flip(0), ar_w)  # (B, tw): flip folded in
        bi = torch.arange(b, device=x.device)[:, None, None]
        r, k = rows[:, :, None], cols[:, None, :]
        x_out = x[bi, :, r, k].permute(0, 3, 1, 2).contiguous()  # (B, th, tw, C) -> (B, C, th, tw)
        return x_out, y[bi, r, k]  # (B, th, tw)

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        offsets, flips = self.sample(len(x), x.shape[-2], x.shape[-1], generator)
        return self.apply(x, y, offsets, flips)

    def __repr__(self) -> str:
        return f"PairAugment(crop={self.crop}, padding={self.padding}, hflip={self.hflip})"


class SegmentationData:
    """What the segmentation readers share: normalization and the paired training transform.

    `transforms_for` reads only `mean`/`std` (no `crop_padding`/`hflip`), so it normalizes without
    augmenting; `train_pair_transform(x, y, generator)` is the training augmentation of image and
    mask together, for a training loop that knows about it.
    """

    task = "segmentation"  # what `todal.loop.default_task` and `todal bench` read
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: PairAugment | None = None
    ignore_index = 255

    def train_pair_transform(self, x: Tensor, y: Tensor,
                             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """`(x uint8 [B, C, H, W], y [B, H, W])` -> augmented, normalized float x and its mask."""
        if self.augment is not None:
            x, y = self.augment(x, y, generator)
        return normalize(x, self.mean, self.std), y

    def test_transform(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return normalize(x, self.mean, self.std)

    def __getitem__(self, i) -> tuple[Tensor, Tensor]:
        """`(x [C, H, W] uint8, y [H, W] int64)`."""
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"index {int(i)} out of range for {n} samples")
        x, y = self.batch(torch.tensor([int(i) % n]))
        return x[0], y[0]


class FashionMNISTScenes(SegmentationData):
    """Scenes composed from Fashion-MNIST items (see the module docstring for the rules).

    Args:
        images: uint8 items `[M, 28, 28]` (or `[M, 1, 28, 28]`) of one split; labels: `[M]` in [0, 10).
        size: number of scenes. seed: all scene parameters derive from it (and from `split`).
        split: "train" or "test" (a different random stream for each).
        canvas, min_items, max_items, jitter, threshold: the composition rules.
        padding, hflip: training augmentation (image and mask together); padded pixels are black,
            so they are background, label 0.
        mean, std: normalization (None: measured on the first 1,024 scenes).
    """

    def __init__(self, images, labels, *, size: int, seed: int = 0, split: str = "train", canvas: int = 64,
                 min_items: int = 2, max_items: int = 4, jitter: int = 6, threshold: int = 32, padding: int = 4,
                 hflip: bool = True, classes: Sequence[str] | None = None, mean=None, std=None,
                 name: str = "fashion-mnist-scenes"):
        images, labels = torch.as_tensor(np.asarray(images)), torch.as_tensor(np.asarray(labels)).long()
        if images.dim() == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.dim() != 3 or tuple(images.shape[1:]) != (ITEM, ITEM) or images.dtype != torch.uint8:
            raise param_error("images", _OWNER, "uint8 Fashion-MNIST items [M, 28, 28]", tuple(images.shape))
        if len(images) == 0 or len(labels) != len(images):
            raise TodalError(f"{_OWNER} got {len(images)} items and {len(labels)} labels; give one label per "
                             "item and at least one item.")
        size, seed, canvas, min_items, jitter, padding, threshold = validate(
            _OWNER, _SCENE_RULES, size=size, seed=seed, canvas=canvas, min_items=min_items, jitter=jitter,
            padding=padding, threshold=threshold).values()
        max_items = check_int("max_items", _OWNER, max_items, lo=min_items, hi=4,
                              expected=f"an int in [min_items={min_items}, 4] (one item a quadrant)")
        if split not in ("train", "test"):
            raise param_error("split", _OWNER, "'train' or 'test'", split)
        self.items_x, self.items_y = images.contiguous(), labels.contiguous()
        self.size, self.seed, self.split, self.canvas = size, seed, split, canvas
        self.threshold, self.jitter = threshold, jitter
        self.name = name
        self.in_channels, self.num_classes = 1, 11
        self.image_size = (canvas, canvas)
        item_classes = list(classes) if classes is not None else [str(i) for i in range(10)]
        self.classes = ["background"] + item_classes
        self.item, self.offset = self._layout(size, seed, split, canvas, min_items, max_items, jitter, len(images))
        self.augment = PairAugment(None, padding, hflip, fill=0, mask_fill=0)
        if mean is None or std is None:
            from .arrays import channel_stats

            mean, std = channel_stats(self.batch(torch.arange(min(size, 1024)))[0])
        self.mean, self.std = tuple(mean), tuple(std)

    @staticmethod
    def _layout(n: int, seed: int, split: str, canvas: int, lo: int, hi: int, jitter: int,
                num_items: int) -> tuple[Tensor, Tensor]:
        """Per scene and slot: item id `[n, 4]` (-1 = empty slot) and top-left offset `[n, 4, 2]`."""
        rng = np.random.default_rng([int(seed), 0 if split == "train" else 1])
        count = rng.integers(lo, hi + 1, n)  # (n,)
        quadrant = np.argsort(rng.random((n, 4)), axis=1)  # (n, 4): a random order of the quadrants
        item = rng.integers(0, num_items, (n, 4))
        item[np.arange(4)[None, :] >= count[:, None]] = -1
        half = canvas // 2
        origin = np.stack([quadrant // 2, quadrant % 2], -1) * half  # (n, 4, 2) quadrant corner
        shift = rng.integers(-jitter, half - ITEM + jitter + 1, (n, 4, 2))
        offset = np.clip(origin + shift, 0, canvas - ITEM)
        return torch.from_numpy(item), torch.from_numpy(offset)

    def __len__(self) -> int:
        return self.size

    def batch(self, idx) -> tuple[Tensor, Tensor]:
        """`(x uint8 [B, 1, S, S], y int64 [B, S, S])` for scene indices `[B]`, composed in one pass."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        item, offset = self.item[idx], self.offset[idx]  # (B, 4), (B, 4, 2)
        b, s = len(idx), self.canvas
        used = item >= 0
        src = self.items_x[item.clamp_min(0)]  # (B, 4, 28, 28)
        ar = torch.arange(s)
        rows = ar - offset[..., :1]  # (B, 4, S): item row drawn at each canvas row
        cols = ar - offset[..., 1:]
        inside_r, inside_c = (rows >= 0) & (rows < ITEM), (cols >= 0) & (cols < ITEM)
        placed = src.gather(2, rows.clamp(0, ITEM - 1)[..., None].expand(b, 4, s, ITEM))  # (B, 4, S, 28)
        placed = placed.gather(3, cols.clamp(0, ITEM - 1)[:, :, None, :].expand(b, 4, s, s))  # (B, 4, S, S)
        inside = inside_r[..., :, None] & inside_c[..., None, :] & used[..., None, None]
        opaque = (placed > self.threshold) & inside  # (B, 4, S, S)
        label = (self.items_y[item.clamp_min(0)] + 1).to(torch.uint8)  # (B, 4)
        x = torch.zeros(b, s, s, dtype=torch.uint8)
        y = torch.zeros(b, s, s, dtype=torch.uint8)
        for k in range(4):  # painter's order over the four slots (not over samples)
            x = torch.where(opaque[:, k], placed[:, k], x)
            y = torch.where(opaque[:, k], label[:, k, None, None], y)
        return x[:, None], y.long()

    def __repr__(self) -> str:
        return (f"FashionMNISTScenes({self.split!r}, n={self.size}, canvas={self.canvas}, seed={self.seed}, "
                f"threshold={self.threshold}, jitter={self.jitter})")


def read_fashion_mnist_scenes(root: str | os.PathLike | None = None, *, size: int = 60000, test_size: int = 10000,
                              seed: int = 0, download: bool = True, **options
                              ) -> tuple[FashionMNISTScenes, FashionMNISTScenes]:
    """Train scenes from Fashion-MNIST's train split, test scenes from its test split.

    `root` is where Fashion-MNIST's four IDX files are (see `read_fashion_mnist`); `size` and
    `test_size` set the number of scenes; `options` go to `FashionMNISTScenes` (composition rules,
    `padding`, `hflip`). The test set uses the train set's mean/std.
    """
    from .fashion_mnist import CLASSES, read_fashion_mnist

    train, test = read_fashion_mnist(root, download=download)
    tr = FashionMNISTScenes(train.x, train.y, size=size, seed=seed, split="train", classes=CLASSES, **options)
    options = {**options, "mean": tr.mean, "std": tr.std}
    te = FashionMNISTScenes(test.x, test.y, size=test_size, seed=seed, split="test", classes=CLASSES, **options)
    return tr, te


__all__ = ["FashionMNISTScenes", "PairAugment", "SegmentationData", "read_fashion_mnist_scenes"]
