"""scikit-learn's embedded 8x8 digits: the default dataset for tests and the demo (no files, no network)."""

from __future__ import annotations

import numpy as np
import torch

from .arrays import ArrayDataset, channel_stats

TEST_FRACTION = 0.3
SEED = 0


def read_digits(root=None, *, crop_padding: int = 1, hflip: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """The 1,797 sklearn digits split 70/30, stratified, `random_state=0`: 1,257 train / 540 test.

    x uint8 `[N, 1, 8, 8]` (sklearn's 0..16 scaled by 255/16 and rounded), classes "0".."9".
    Augmentation defaults: crop_padding=1 (one pixel is already 1/8 of the image), hflip=False
    (digits are not mirror-symmetric). `root` is ignored (the data ships with scikit-learn).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=TEST_FRACTION, stratify=y,
                                           random_state=SEED)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    mean, std = channel_stats(xt[train_idx])
    classes = [str(i) for i in range(10)]
    return tuple(ArrayDataset(xt[i], yt[i], num_classes=10, mean=mean, std=std, classes=classes, name="digits",
                              crop_padding=crop_padding, hflip=hflip) for i in (train_idx, test_idx))
