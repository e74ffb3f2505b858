"""What todal needs from a dataset, written down once.

Required: `len(ds)` and `ds[i] -> (x, y)`, with x a tensor (images `[C, H, W]`, channels first; any
shape the model takes) and y an integer class (or a `[H, W]` mask of class ids for segmentation). A
`torch.utils.data.TensorDataset` of `(x, y)` qualifies as it is.

Everything else is optional; each attribute below changes one documented behaviour, and
`explain(ds)` says which ones a dataset has and what they do.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..errors import TodalError


@runtime_checkable
class PoolDataset(Protocol):
    """The required part: a sized, indexable collection of `(x, y)` pairs."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[Any, Any]: ...


# attribute -> what it changes when present (the README's table is this one)
OPTIONAL: dict[str, str] = {
    "batch": "batch(idx) -> (x [B, ...], y [B]): one gather per batch instead of B calls to ds[i] (in-memory data)",
    "num_classes": "the number of classes (else counted from .y / .targets / a TensorDataset's labels, or "
                   "ActiveLoop(num_classes=))",
    "y": "the labels as a tensor: counts the classes without reading inputs, checks test labels up front",
    "targets": "as .y (torchvision's name)",
    "classes": "class names, used in reports and exports (else '0', '1', ...)",
    "mean": "per-channel mean, with std: inputs are normalized (x - mean) / std after scaling uint8 to [0, 1]",
    "std": "per-channel std (with mean)",
    "crop_padding": "with mean/std: random crops after this much zero padding in the default training augmentation",
    "hflip": "with mean/std: random horizontal flips in the default training augmentation",
    "train_pair_transform": "train_pair_transform(x, y, generator) -> (x, y): augments image and mask together "
                            "(segmentation)",
    "task": "'classification' (default) or 'segmentation': the loss, metrics and discrepancy reduction",
    "name": "the dataset's name: recorded with runs; the official flavor takes its per-dataset λ from it",
    "in_channels": "input channels for todal's built-in models (default 1)",
    "image_size": "(H, W): sizes the evaluation batches of dense tasks without reading a sample",
}


def explain(dataset) -> dict[str, str]:
    """{attribute: what it changes} for the optional attributes `dataset` has (after checking the required part)."""
    if not isinstance(dataset, PoolDataset):
        raise TodalError(f"{type(dataset).__name__} is not a dataset todal can read: it needs __len__ and "
                         "__getitem__(i) -> (x, y) (a TensorDataset(x, y) works).")
    return {name: text for name, text in OPTIONAL.items() if getattr(dataset, name, None) is not None}
