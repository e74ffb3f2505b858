"""Streaming inference over a dataset by index: batches are gathered with tensor indexing."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from .progress import bar

from .errors import TodalError

Transform = Callable[..., Tensor]


def fetch(dataset, idx: Tensor) -> tuple[Tensor, Tensor]:
    """`(x, y)` for the samples `idx`: `dataset.batch(idx)` when it exists (in-memory data, one
    gather), a `TensorDataset`'s tensors indexed at once, else the samples stacked one by one (lazy
    datasets: the cost is reading the files; `read` spreads it over worker processes)."""
    if hasattr(dataset, "batch"):
        return dataset.batch(idx)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        return x[idx], y[idx]
    xs, ys = zip(*(dataset[int(i)] for i in idx))
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys)


def fetch_inputs(dataset, idx: Tensor) -> Tensor:
    """`x` alone for the samples `idx` (unlabeled batches): `dataset.inputs(idx)` when the dataset
    keeps labels apart from inputs (`todal.labeled.PoolLabels`), else `fetch(...)[0]`."""
    if hasattr(dataset, "inputs"):
        return dataset.inputs(idx)
    return fetch(dataset, idx)[0]


def is_lazy(dataset) -> bool:
    """True for a dataset read a sample at a time (`ds[i]`, files): no `.batch`, not a TensorDataset. A
    wrapper that keeps labels apart (`todal.labeled.PoolLabels`) is looked through."""
    while hasattr(dataset, "inputs") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return not hasattr(dataset, "batch") and not isinstance(dataset, TensorDataset)


DEVICE_SHARE = 0.25  # in-memory inputs move to a GPU once when they take at most this share of its free memory


class DatasetView:
    """A wrapper that changes how a dataset's batches are read and is the dataset for everything else
    (`len`, `mean`, `std`, `crop_padding`, `train_pair_transform`, `name`, ...): `PoolLabels`, `DeviceInputs`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        # Only reached for attributes the view lacks: the dataset's metadata and transforms.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class DeviceInputs(DatasetView):
    """An in-memory dataset with its inputs held on a device: batches are gathered there, so training
    copies nothing from the host per step. Labels are read as the wrapped dataset gives them (a
    `PoolLabels`' given labels, else the dataset's own)."""

    def __init__(self, dataset, x: Tensor):
        super().__init__(dataset)
        self.x = x

    def inputs(self, idx) -> Tensor:
        return self.x[torch.as_tensor(idx, dtype=torch.long).to(self.x.device)]

    def batch(self, idx) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if hasattr(self.dataset, "labels_of"):
            y = self.dataset.labels_of(idx)
        elif isinstance(self.dataset, TensorDataset):
            y = self.dataset.tensors[1][idx]
        elif isinstance(getattr(self.dataset, "y", None), Tensor):
            y = self.dataset.y[idx]
        else:
            y = fetch(self.dataset, idx)[1]
        return self.inputs(idx), y


def on_device(dataset, device: torch.device, *, share: float = DEVICE_SHARE):
    """`dataset` with its inputs moved to `device` once (`DeviceInputs`), where that is possible and
    pays: a CUDA device, inputs held in one tensor (`ArrayDataset`, a 2-tensor `TensorDataset`, either
    inside `PoolLabels`) taking at most `share` of the device's free memory. Else `dataset` itself."""
    if device.type == "cpu":
        return dataset  # already there
    base = dataset
    while isinstance(base, DatasetView) and not hasattr(base, "features"):  # PoolLabels: labels kept apart
        base = base.dataset
    if hasattr(base, "features"):  # a frozen backbone's embeddings (todal.models.frozen.Embedded) are the inputs
        import numpy as np

        x = torch.from_numpy(np.ascontiguousarray(base.features, dtype=np.float32))
    elif isinstance(base, TensorDataset) and len(base.tensors) == 2:
        x = base.tensors[0]
    else:
        x = getattr(base, "x", None) if hasattr(base, "batch") else None
    if not isinstance(x, Tensor) or getattr(base, "train_pair_transform", None) is not None:
        return dataset
    if device.type == "cuda" and x.nbytes > share * torch.cuda.mem_get_info(device)[0]:
        return dataset
    return DeviceInputs(dataset, x.to(device))


def read_workers(dataset, workers: int | None = None) -> int:
    """Worker processes that read `dataset`'s batches: `workers`, else the environment's
    TODAL_READ_WORKERS, else none. Set it for a lazy dataset whose samples are slow to read (large
    images, network storage) and cores to spare; measure first (benchmarks/lazy_reading.py)."""
    if workers is None and os.environ.get("TODAL_READ_WORKERS", "").strip():
        workers = os.environ["TODAL_READ_WORKERS"]
    if workers is not None:
        try:
            n = int(workers)
        except ValueError:
            n = -1
        if n < 0:
            raise TodalError(f"read workers must be an integer >= 0, got {workers!r}; set TODAL_READ_WORKERS=0 "
                             "to read in the training process.")
        return n
    # default none: for small images the workers' startup and transfer outweigh the decoding they take over
    # (benchmarks/lazy-reading)
    return 0


class _Reads(Dataset):
    def __init__(self, dataset, batches: list[Tensor], inputs_only: bool):
        self.dataset, self.batches, self.inputs_only = dataset, batches, inputs_only

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int):
        idx = self.batches[j]
        return fetch_inputs(self.dataset, idx) if self.inputs_only else fetch(self.dataset, idx)


def read(dataset, batches: list[Tensor], *, inputs_only: bool = False, workers: int | None = None) -> Iterator:
    """`fetch(dataset, b)` (or `fetch_inputs`) for each batch of indices `b`, in order. With workers
    (`read_workers`), a `DataLoader` reads the next batches in other processes while this one computes;
    only reading moves there: transforms and their random draws stay in the caller, so the results do
    not depend on the number of workers."""
    n = read_workers(dataset, workers)
    if n == 0 or len(batches) <= 1:
        for idx in batches:
            yield fetch_inputs(dataset, idx) if inputs_only else fetch(dataset, idx)
        return
    yield from DataLoader(_Reads(dataset, list(batches), inputs_only), batch_size=None, shuffle=False,
                          num_workers=min(n, len(batches)), prefetch_factor=2)


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
    batches = list(chunks(indices, batch_size))
    with eval_mode(model):
        for idx, x in zip(bar(batches, progress),
                          read(dataset, batches, inputs_only=True)):
            yield idx, model(transform(x).to(device)).float().cpu()
