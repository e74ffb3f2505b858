"""Tiny seeded data and models built in the tests (importable as `tinydata`)."""

from __future__ import annotations

import torch
from torch import nn


class TinyData:
    """An in-memory dataset of float features `[N, D]` with `.batch()`, like todal's readers."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str = "tiny"):
        self.x, self.y, self.num_classes, self.name = x, y.long(), num_classes, name
        self.in_channels = 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def batch(self, idx):
        return self.x[idx], self.y[idx]


def blobs(n: int, seed: int, classes: int = 3, dim: int = 8, name: str = "tiny") -> TinyData:
    """Gaussian blobs: separable enough that a linear model learns them in a few epochs."""
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 3  # one task
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = centers[y] + torch.randn(n, dim, generator=g)
    return TinyData(x, y, classes, name)


def mlp(dim: int = 8, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, classes))


class Killed(Exception):
    """Stands for the process being killed between two stages of a run."""


def run_until_killed(run, monkeypatch, after: int) -> None:
    """Call `run()` with the loop dying right after its `after`-th write of progress.json."""
    from pathlib import Path

    import pytest

    import todal.loop

    real = todal.loop.write_json
    count = {"n": 0}

    def dying(path, obj):
        real(path, obj)
        if Path(path).name == "progress.json":
            count["n"] += 1
            if count["n"] == after:
                raise Killed

    monkeypatch.setattr(todal.loop, "write_json", dying)
    try:
        with pytest.raises(Killed):
            run()
    finally:
        monkeypatch.setattr(todal.loop, "write_json", real)


def largest_tensor_while(fn) -> int:
    """The largest tensor (in elements) any torch operation produces while `fn()` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    with LargestTensor() as mode:
        fn()
    return mode.largest


def save_tiny_hf_resnet(folder, size: dict):
    """A tiny random `transformers` ResNet saved as a user's pretrained model comes: `save_pretrained` and an image
    processor config with side `size` (e.g. {"shortest_edge": 16} or {"height": 16, "width": 16}) and its own mean
    and std (0.5, 0.4, 0.3 / 0.25, 0.2, 0.15)."""
    import json

    import transformers

    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    layer_type="basic")
    transformers.ResNetModel(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConvNextImageProcessor", "do_resize": True, "size": size, "do_normalize": True,
        "image_mean": [0.5, 0.4, 0.3], "image_std": [0.25, 0.2, 0.15]}))
    return folder
