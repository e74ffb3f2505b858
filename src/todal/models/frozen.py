"""A frozen backbone: every sample embedded once into a memory-mapped cache, a small head trained each cycle.

The backbone (any model source: its `embed(x)`, or the input of its final linear layer) runs once per
sample; its features `[N, D]` go to a float32 `.npy` file read by memory map, so a pool of 10^5 images costs
one pass and then only the head's. `Embedded` is the dataset the engine trains and scores on (the
features, with the labels and names of the dataset), `FrozenHead` the model it trains: dropout on the
features, then a linear layer. The dropout is also the perturbation of the TOD loss in this mode: the
student and its EMA teacher see the same fixed features, so without a perturbation Eq. 7 would only pull the
head toward its own average; with it, each sees the features with its own random mask, the analogue of the
augmented images they see when the whole network trains.

The cache is named by a digest of the backbone (its spec, options and the weights' SHA-256) and of its input,
so it is rebuilt when the backbone or its weights change and reused otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import TodalError
from ..inference import DatasetView, chunks, eval_mode, fetch, read, test_transform
from . import Classifier
from .source import FROZEN_DROPOUT, ModelSource

# what the backbone's input needs and a features dataset must not pass on (transforms would re-normalize)
_PIXEL_ATTRIBUTES = {"mean", "std", "crop_padding", "hflip", "train_pair_transform", "test_transform", "augment",
                     "in_channels", "image_size", "batch", "x"}


class FrozenHead(Classifier):
    """The trained part over fixed features `[B, D]`: dropout (p) then a linear layer (and the official flavor's
    second head); `embed(x)` is the features themselves, so coreset, BADGE and the GCNs see the backbone's."""

    def __init__(self, dim: int, num_classes: int, *, second_head: bool = False, dropout: float = FROZEN_DROPOUT):
        super().__init__(dim, num_classes, second_head=second_head, dropout=dropout)

    def trunk(self, x: Tensor) -> Tensor:
        return x.float().flatten(1)


@dataclass(frozen=True)
class HeadSource:
    """The model source the engine gets for a frozen backbone: heads over its `dim` features."""

    backbone: ModelSource
    dim: int
    dropout: float = FROZEN_DROPOUT

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def options(self) -> dict:
        return self.backbone.recorded_options()

    def build(self, *, in_channels: int, num_classes: int, second_head: bool = False) -> nn.Module:
        return FrozenHead(self.dim, num_classes, second_head=second_head, dropout=self.dropout)


class Embedded(DatasetView):
    """`dataset` with each sample's input replaced by its row of `features` `[N, D]` (a memory map): the labels,
    names and task are the dataset's; its pixel statistics and augmentation are not (features are not pixels)."""

    def __init__(self, dataset, features: np.ndarray):
        super().__init__(dataset)
        if len(features) != len(dataset):
            raise TodalError(f"The embedding cache has {len(features)} rows for {len(dataset)} samples; delete it to "
                             "rebuild it.")
        self.features = features

    def __getattr__(self, name: str):
        if name in _PIXEL_ATTRIBUTES:
            raise AttributeError(name)
        return super().__getattr__(name)

    def inputs(self, idx) -> Tensor:
        rows = np.asarray(torch.as_tensor(idx, dtype=torch.long), dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.features[rows], dtype=np.float32))

    def batch(self, idx) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        labels = getattr(self.dataset, "y", None)
        y = labels[idx] if isinstance(labels, Tensor) else fetch(self.dataset, idx)[1]
        return self.inputs(idx), y

    def __getitem__(self, i):
        x, y = self.batch(torch.tensor([int(i)]))
        return x[0], y[0]


def cache_key(source: ModelSource, input_spec: dict | None) -> str:
    """16 hex digits naming a backbone and its input: another backbone, other weights, another input -> another key."""
    options = {k: v for k, v in source.recorded_options().items() if k != "head_dropout"}  # the head's, not the cache's
    text = json.dumps({"model": source.name, "options": options, "input": input_spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def embed_rows(backbone: nn.Module, dataset, rows: Tensor, out: np.ndarray, *, batch_size: int,
               device: torch.device, progress: bool = False) -> None:
    """Write `embed(backbone, x)` of `rows` of `dataset` into `out[rows]` (eval mode, the test transform)."""
    from ..progress import bar

    from . import embed

    transform = test_transform(dataset)
    batches = list(chunks(rows, batch_size))
    backbone.to(device)
    with eval_mode(backbone):
        for idx, x in zip(bar(batches, "embed" if progress else None),
                          read(dataset, batches, inputs_only=True)):
            out[idx.numpy()] = embed(backbone, transform(x).to(device)).float().cpu().numpy()


def probe_dim(backbone: nn.Module, dataset, device: torch.device) -> int:
    """D: the width of the backbone's features on one sample of `dataset`."""
    from . import embed

    x = test_transform(dataset)(fetch(dataset, torch.arange(1))[0]).to(device)
    with torch.no_grad(), eval_mode(backbone.to(device)):
        feats = embed(backbone, x)
    if feats.dim() != 2:
        raise TodalError(f"The backbone's features have shape {list(feats.shape)}, not [B, D]; give the model an "
                         "embed(x) returning [B, D] or a final nn.Linear.")
    return int(feats.shape[1])


def embed_dataset(backbone: nn.Module, dataset, path: Path, *, batch_size: int, device: torch.device,
                  progress: bool = False) -> np.ndarray:
    """The features of every sample of `dataset`, from `path` (`.npy`) when it is complete, else computed into a
    temporary file renamed when done (a crash leaves no half-written cache); read-only memory map."""
    path = Path(path)
    if path.exists():
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    dim = probe_dim(backbone, dataset, device)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(dataset), dim))
    embed_rows(backbone, dataset, torch.arange(len(dataset)), out, batch_size=batch_size, device=device,
               progress=progress)
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


class FrozenModel(nn.Module):
    """A frozen backbone and its trained head as one model over images: `head(embed(backbone, x))`."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def embed(self, x: Tensor) -> Tensor:
        from . import embed

        return embed(self.backbone, x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))
