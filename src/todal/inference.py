"""Streaming inference over a dataset by index: batches are gathered with tensor indexing."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

Transform = Callable[..., Tensor]


def fetch(dataset, idx: Tensor) -> tuple[Tensor, Tensor]:
    """`(x, y)` for the samples `idx`: `dataset.batch(idx)` when it exists (in-memory data, one
    gather), else the samples stacked one by one (lazy datasets: the cost is reading the files)."""
    if hasattr(dataset, "batch"):
        return dataset.batch(idx)
    xs, ys = zip(*(dataset[int(i)] for i in idx))
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys)


def fetch_inputs(dataset, idx: Tensor) -> Tensor:
    """`x` alone for the samples `idx` (unlabeled batches): `dataset.inputs(idx)` when the dataset
    keeps labels apart from inputs (`todal.labeled.PoolLabels`), else `fetch(...)[0]`."""
    if hasattr(dataset, "inputs"):
        return dataset.inputs(idx)
    return fetch(dataset, idx)[0]


def test_transform(dataset) -> Transform:
    from .data import transforms_for

    return transforms_for(dataset)[1]


def train_transform(dataset) -> Transform:
    from .data import transforms_for

    return transforms_for(dataset)[0]


def chunks(indices: Tensor, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


@contextlib.contextmanager
def eval_mode(*models: nn.Module):
    """Put models in eval mode and restore each one's previous mode on exit."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset,
    indices: Tensor,
    *,
    transform: Transform | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: str | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield `(idx_batch, outputs)` over `indices`, the model in eval mode, outputs on the CPU."""
    device = torch.device(device or "cpu")
    transform = transform or test_transform(dataset)
    with eval_mode(model):
        for idx in tqdm(list(chunks(indices, batch_size)), desc=progress, disable=progress is None,
                        leave=False, unit="batch"):
            x, _ = fetch(dataset, idx)
            yield idx, model(transform(x).to(device)).float().cpu()
