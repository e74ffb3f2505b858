"""Folders of small learnable images for the labeling-project tests (importable as `projkit`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["horizontal", "vertical", "diagonal"]


def pattern(cls: int, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """A noisy bar: horizontal (0), vertical (1) or diagonal (2), at a random offset; uint8 [size, size]."""
    img = rng.integers(0, 60, (size, size))
    k = int(rng.integers(2, size - 2))
    if cls == 0:
        img[k - 1 : k + 1, :] = 255
    elif cls == 1:
        img[:, k - 1 : k + 1] = 255
    else:
        ar = np.arange(size)
        img[ar, ar] = 255
        img[ar[:-1], ar[1:]] = 255
    return img.astype(np.uint8)


def write_images(root: Path, n: int, seed: int = 0, start: int = 0, nested: bool = True) -> dict[str, int]:
    """`n` PNGs under `root` (nested folders), returns {relative path: true class}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(start, start + n):
        cls = i % 3
        rel = Path(f"part{i % 2}/deep{i % 4}/img{i:05d}.png" if nested else f"img{i:05d}.png")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pattern(cls, rng)).save(root / rel)
        truth[rel.as_posix()] = cls
    return truth


def answer_queue(project, truth: dict[str, int], *, relabel=lambda c: c, limit: int | None = None,
                 annotator: str = "tester") -> int:
    """Label the project's waiting queue as a person would, class `relabel(true class)`; returns how many."""
    items = project.store.queued()[:limit]
    rows = [{"sample": it.sample, "class": relabel(truth[it.path]), "annotator": annotator} for it in items]
    project.store.add_labels(rows, source="test")
    return len(rows)
