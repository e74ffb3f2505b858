"""Cityscapes (Cordts et al., CVPR 2016) from its standard layout, read lazily a batch at a time.

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The 34 label ids map to the 19 training classes (every other id to 255, ignored) through one
256-entry lookup table, as in the official cityscapesScripts `labels.py`. Files are decoded when a
batch is fetched; nothing is held in memory but the file lists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import TodalError, check_int
from . import _paths
from .scenes import PairAugment, SegmentationData

# labelId -> trainId for the 19 evaluated classes (cityscapesScripts labels.py); all else -> 255.
_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
              26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABEL_TO_TRAIN = np.full(256, 255, dtype=np.uint8)
LABEL_TO_TRAIN[list(_TRAIN_IDS)] = list(_TRAIN_IDS.values())
CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
# Per-channel statistics of the Cityscapes train images, from the DRN authors' datasets/cityscapes/info.json.
MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
_FIX = ("download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com "
        "and unzip both into one folder")


def _holds_splits(folder: Path) -> bool:
    return all((folder / kind / split).is_dir() for kind in ("leftImg8bit", "gtFine") for split in ("train", "val"))


def find_cityscapes(root: str | os.PathLike | None = None) -> Path:
    """The folder holding `leftImg8bit/` and `gtFine/`: `root` (or `root/cityscapes`), else
    `$TODAL_DATA` (or `$TODAL_DATA/cityscapes`), `~/.cache/todal/cityscapes`, `/usr/share/datasets/cityscapes`."""
    _paths.check_root(root, "Cityscapes")
    paths = _paths.candidates(["cityscapes"], root)
    found = _paths.find_dir(paths, _holds_splits)
    if found is None:
        raise TodalError(f"Cityscapes (leftImg8bit/ and gtFine/, train and val) not found in "
                         f"{_paths.describe(paths)}; {_FIX}, then pass root=<that folder> (--data-root on the "
                         f"command line).")
    return found


def to_train_ids(label_ids: np.ndarray | Tensor) -> Tensor:
    """Cityscapes label ids (0..33, any integer array) -> train ids 0..18, 255 elsewhere, as int64."""
    ids = np.asarray(label_ids)
    ids = np.where((ids >= 0) & (ids < 256), ids, 255).astype(np.intp)
    return torch.from_numpy(LABEL_TO_TRAIN[ids].astype(np.int64))


def _pairs(folder: Path, split: str) -> tuple[list[Path], list[Path]]:
    images = sorted((folder / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise TodalError(f"No *{IMAGE_SUFFIX} images under {folder / 'leftImg8bit' / split}/<city>/; {_FIX}.")
    labels = [folder / "gtFine" / split / p.parent.name / (p.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
              for p in images]
    missing = [p for p in labels if not p.is_file()]
    if missing:
        raise TodalError(f"{missing[0]} is missing ({len(missing)} of the {split} label maps are); unzip "
                         f"gtFine_trainvaltest.zip into {folder}.")
    return images, labels


class CityscapesDataset(SegmentationData):
    """One split of Cityscapes: x uint8 `[3, H, W]`, y int64 `[H, W]` train ids (255 = ignored).

    Args:
        images, labels: paired file paths. split: "train" or "val" (for messages).
        crop, hflip: training augmentation, a random `crop` window and flip of image and mask together
            (the TOD paper: 688x688 crops and flips; None keeps the whole image).
        downsample: integer factor f; images are box-averaged over f x f blocks and label maps take
            one pixel per block (never interpolated). 1 keeps the 2048x1024 originals.
    """

    def __init__(self, images: Sequence[Path], labels: Sequence[Path], *, split: str = "train",
                 crop: int | Sequence[int] | None = 688, hflip: bool = True, downsample: int = 1,
                 mean=MEAN, std=STD, name: str = "cityscapes"):
        if len(images) != len(labels):
            raise TodalError(f"CityscapesDataset got {len(images)} images but {len(labels)} label maps; pair them.")
        downsample = check_int("downsample", "read_cityscapes", downsample, lo=1)
        self.images, self.labels = [Path(p) for p in images], [Path(p) for p in labels]
        self.split, self.downsample, self.name = split, downsample, name
        self.num_classes, self.in_channels, self.classes = 19, 3, list(CLASSES)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = PairAugment(crop, 0, hflip, fill=0, mask_fill=255) if (crop is not None or hflip) else None

    def __len__(self) -> int:
        return len(self.images)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        f = self.downsample
        try:
            with Image.open(self.images[i]) as im:
                img = im.convert("RGB")
                h, w = img.height // f, img.width // f
                if f > 1:
                    img = img.reduce(f)
                x = np.asarray(img, dtype=np.uint8)[:h, :w]
            with Image.open(self.labels[i]) as lab:
                ids = np.asarray(lab)
        except (OSError, ValueError, SyntaxError) as e:
            raise TodalError(f"Cannot read {self.images[i].name} or its label map ({_paths.one_line(e)}); "
                             f"re-extract the Cityscapes archives.") from None
        if ids.ndim != 2 or ids.shape[0] // f != h or ids.shape[1] // f != w:
            raise TodalError(f"{self.labels[i]} is {'x'.join(map(str, ids.shape))}, its image "
                             f"{self.images[i].name} is {h * f}x{w * f}; use the gtFine *_labelIds.png maps.")
        return x, ids[f // 2::f, f // 2::f][:h, :w]

    def batch(self, idx) -> tuple[Tensor, Tensor]:
        """`(x uint8 [B, 3, H, W], y int64 [B, H, W])`: the files of `idx` decoded and stacked."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        pairs = [self._read(int(i)) for i in idx]  # decoding is per file by nature
        shapes = {x.shape for x, _ in pairs}
        if len(shapes) > 1:
            raise TodalError(f"A Cityscapes batch mixes image sizes {sorted(shapes)}; every image must be the same "
                             "size (the originals are 2048x1024).")
        x = torch.from_numpy(np.stack([x for x, _ in pairs])).permute(0, 3, 1, 2).contiguous()
        return x, to_train_ids(np.stack([y for _, y in pairs]))

    def __repr__(self) -> str:
        return f"CityscapesDataset({self.split!r}, n={len(self)}, downsample={self.downsample}, {self.augment})"


def read_cityscapes(root: str | os.PathLike | None = None, *, crop: int | Sequence[int] | None = 688,
                    hflip: bool = True, downsample: int = 1) -> tuple[CityscapesDataset, CityscapesDataset]:
    """Cityscapes train (2,975 images) and val (500, the paper's test set), 19 classes, lazy.

    The TOD paper (appendix B) trains on random 688x688 crops with flips and tests on the val
    images whole; it holds out 300 train images for validation, which the active learning loop
    does not use. Normalization: the DRN authors' Cityscapes mean/std.
    """
    folder = find_cityscapes(root)
    kw = dict(crop=crop, hflip=hflip, downsample=downsample)
    train = CityscapesDataset(*_pairs(folder, "train"), split="train", **kw)
    val = CityscapesDataset(*_pairs(folder, "val"), split="val", **kw)
    return train, val
