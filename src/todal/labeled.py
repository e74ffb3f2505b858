"""The labels training reads: the pool's, never the dataset's own.

A dataset's `y` may be wrong, missing (-1) or placeholders: in a labeling project the images have no
labels at all, and the labels a person gives live in the pool (or the project's database). `PoolLabels`
wraps the dataset so that every batch pairs the dataset's inputs with the labels that were *given*:

    fit(model, task, PoolLabels(dataset, pool.labels), pool.labeled, ...)

Everything else (`mean`, `std`, `crop_padding`, `train_pair_transform`, `name`, ...) is the dataset's.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .errors import TodalError
from .inference import DatasetView, fetch

LabelSource = Tensor | Callable[[Tensor], Tensor]


class PoolLabels(DatasetView):
    """`dataset` with its labels replaced: `batch(idx)` -> `(x [B, ...] of the dataset, labels of idx)`.

    Args:
        dataset: any dataset todal reads (`batch(idx)` or `__getitem__`).
        labels: a `[N]` tensor of class labels indexed by sample (-1 = not labeled), or a callable
            `labels(idx [B]) -> [B, ...]` (segmentation masks, read where they are kept).
    """

    def __init__(self, dataset, labels: LabelSource):
        super().__init__(dataset)
        if not callable(labels):
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.dim() != 1 or len(labels) != len(dataset):
                raise TodalError(f"PoolLabels needs one label per sample of the dataset ({len(dataset)}); "
                                 f"got shape {tuple(labels.shape)}.")
        self.labels = labels

    def labels_of(self, idx: Tensor) -> Tensor:
        """The given labels of `idx` `[B]`; refuses a sample that has none."""
        if callable(self.labels):
            return self.labels(idx)
        y = self.labels[idx]
        if bool((y < 0).any()):
            i = int(idx[(y < 0).nonzero()[0]])
            raise TodalError(f"Sample {i} has no label in the pool but was asked for one; train only on "
                             "pool.labeled.")
        return y

    def inputs(self, idx) -> Tensor:
        """`x [B, ...]` alone (unlabeled batches: no label is read)."""
        return fetch(self.dataset, torch.as_tensor(idx, dtype=torch.long))[0]

    def batch(self, idx) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.inputs(idx), self.labels_of(idx)

    def __getitem__(self, i) -> tuple[Tensor, Tensor]:
        x, y = self.batch(torch.tensor([int(i)]))
        return x[0], y[0]

    def __repr__(self) -> str:
        return f"PoolLabels({self.dataset!r})"
