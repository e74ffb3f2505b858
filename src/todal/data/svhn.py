"""SVHN (cropped digits, format 2) from `train_32x32.mat` / `test_32x32.mat`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import TodalError
from . import _paths
from .arrays import ArrayDataset

MEAN = (0.4310, 0.4302, 0.4463)
STD = (0.1965, 0.1984, 0.1992)
_HOME = "http://ufldl.stanford.edu/housenumbers/"


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` uint8 `[N, 3, 32, 32]`, `y` int64 `[N]` with label 10 (upstream's digit 0) mapped to 0."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise TodalError("Reading SVHN's .mat files needs scipy: pip install scipy.") from None
    try:
        d = loadmat(path)
    except Exception as e:  # scipy raises several types for damaged files
        raise TodalError(f"{path} cannot be read as a MATLAB file ({_paths.one_line(e)}); re-download it "
                         f"from {_HOME}.") from None
    for key in ("X", "y"):
        if key not in d:
            raise TodalError(f"{path} has no {key!r} variable; it is not an SVHN 32x32 file: "
                             f"re-download it from {_HOME}.")
    x, y = np.asarray(d["X"]), np.asarray(d["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise TodalError(f"{path}: X is {x.dtype} {x.shape}, expected uint8 [32, 32, 3, N]; "
                         f"re-download it from {_HOME}.")
    if x.shape[3] != len(y):
        raise TodalError(f"{path} holds {x.shape[3]} images but {len(y)} labels; re-download it from {_HOME}.")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() > 10):
        raise TodalError(f"{path} has label {int(y.min() if y.min() < 0 else y.max())}, SVHN labels are 1..10; "
                         f"re-download it from {_HOME}.")
    y[y == 10] = 0  # upstream writes digit 0 as class 10
    x = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # [H, W, C, N] -> [N, C, H, W]
    return torch.from_numpy(x), torch.from_numpy(y)


def read_svhn(root: str | os.PathLike | None = None, *, extra: bool = False, crop_padding: int = 4,
              hflip: bool = True) -> tuple[ArrayDataset, ArrayDataset]:
    """SVHN train (73,257; +531,131 with `extra=True`) and test (26,032), x uint8 `[N, 3, 32, 32]`,
    classes "0".."9".

    Augmentation: crop_padding=4, hflip=True (the paper flips every classification set). Needs scipy.
    """
    _paths.check_root(root, "SVHN")
    paths = _paths.candidates(["svhn"], root)
    found = _paths.find_dir(paths, lambda p: (p / "train_32x32.mat").is_file() and (p / "test_32x32.mat").is_file())
    if found is None:
        raise TodalError(f"SVHN not found in {_paths.describe(paths)}. Download train_32x32.mat and test_32x32.mat "
                         f"from {_HOME} into one folder and pass it as root (or set TODAL_DATA).")
    x, y = _read(found / "train_32x32.mat")
    if extra:
        p = found / "extra_32x32.mat"
        if not p.is_file():
            raise TodalError(f"{p} is missing; download it from {_HOME} or pass extra=False.")
        xe, ye = _read(p)
        x, y = torch.cat([x, xe]), torch.cat([y, ye])
    test = _read(found / "test_32x32.mat")
    classes = [str(i) for i in range(10)]
    return tuple(ArrayDataset(a, b, num_classes=10, mean=MEAN, std=STD, classes=classes, name="svhn",
                              crop_padding=crop_padding, hflip=hflip) for a, b in ((x, y), test))
