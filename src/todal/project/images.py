"""A folder of unlabeled images as a dataset: indexed once, decoded once into a uint8 cache on disk.

`index_folder` walks the folder (any depth), reads each file once to hash it and decode it at the
model's input size, in worker processes; `ImageCache` is the decoded pool as a memory-mapped
`[N, C, S, S]` uint8 file, so the pool is never held in RAM and a step reads batches by index at
the speed of a memory copy. `FolderImages` is the dataset todal trains and scores on: inputs from the
cache, no labels of its own (the project's labels come from its database, `todal.labeled.PoolLabels`).
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.arrays import channel_stats
from ..errors import TodalError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P"}


def scan(root: Path) -> list[str]:
    """Relative POSIX paths of the images under `root` (any depth, hidden files and folders skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath).relative_to(root)
        out += [(base / f).as_posix() for f in filenames
                if not f.startswith(".") and Path(f).suffix.lower() in EXTENSIONS]
    return sorted(out)


@dataclass
class Decoded:
    """One file read once: its hash, size, pixels at the cache size (None when it fails to decode)."""

    path: str
    sha256: str
    bytes: int
    pixels: np.ndarray | None  # uint8 [C, S, S]
    error: str | None


def _read(args: tuple[str, str, int, str]) -> Decoded:
    root, rel, size, mode = args
    from PIL import Image

    try:
        data = Path(root, rel).read_bytes()
    except OSError as e:
        return Decoded(rel, "", 0, None, f"{type(e).__name__}: {e.strerror or e}")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            px = np.asarray(im, dtype=np.uint8).reshape(size, size, -1).transpose(2, 0, 1)
            return Decoded(rel, sha, len(data), np.ascontiguousarray(px), None)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return Decoded(rel, sha, len(data), None, f"{type(e).__name__}: {' '.join(str(e).split())}")


def guess_mode(root: Path, paths: Sequence[str], sample: int = 200) -> str:
    """"L" when the headers of (up to `sample` evenly spread) files are all grayscale, else "RGB"."""
    from PIL import Image

    step = max(1, len(paths) // sample)
    for rel in paths[::step]:
        try:
            with Image.open(Path(root, rel)) as im:  # the header only
                if im.mode not in _GRAY_MODES or (im.mode == "P" and not _palette_gray(im)):
                    return "RGB"
        except (OSError, ValueError, SyntaxError):
            continue
    return "L"


def _palette_gray(im) -> bool:
    pal = im.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())


def read_files(root: Path, paths: Sequence[str], size: int, mode: str, workers: int | None = None,
               progress: bool = False) -> Iterable[Decoded]:
    """Decode `paths` under `root` in worker processes (in order), each file read once."""
    from ..progress import bar

    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(str(root), p, size, mode) for p in paths]
    if workers <= 1 or len(jobs) < 64:
        yield from bar((_read(j) for j in jobs), "index" if progress else None, unit="img", total=len(jobs))
    else:
        with ProcessPoolExecutor(workers) as ex:
            yield from bar(ex.map(_read, jobs, chunksize=64), "index" if progress else None, unit="img",
                           total=len(jobs))


class ImageCache:
    """The decoded pool on disk: `[N, C, S, S]` uint8, row i = sample id i, memory-mapped when read."""

    def __init__(self, path: Path, channels: int, size: int):
        self.path, self.channels, self.size = Path(path), int(channels), int(size)
        self.row = self.channels * self.size * self.size
        self._mm = None

    def __len__(self) -> int:
        return self.path.stat().st_size // self.row if self.path.exists() else 0

    def write(self, rows: dict[int, np.ndarray]) -> None:
        """Write rows by sample id (appending ids at the end, overwriting earlier ones), then fsync."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._mm = None
        n = len(self)
        with open(self.path, "r+b" if self.path.exists() else "w+b") as f:
            top = max(rows, default=-1) + 1
            if top > n:
                f.truncate(top * self.row)
            for i, px in sorted(rows.items()):
                f.seek(i * self.row)
                f.write(np.ascontiguousarray(px, dtype=np.uint8).tobytes())
            f.flush()
            os.fsync(f.fileno())

    def array(self) -> np.ndarray:
        if self._mm is None:
            n = len(self)
            if n == 0:
                raise TodalError(f"The image cache {self.path} is empty; run `todal init` again.")
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(n, self.channels, self.size, self.size))
        return self._mm

    def batch(self, idx: Tensor) -> Tensor:
        """uint8 `[B, C, S, S]` of the samples `idx`: one fancy-index read of the memory map."""
        return torch.from_numpy(np.ascontiguousarray(self.array()[np.asarray(idx, dtype=np.int64)]))


class FolderImages:
    """A project's images as a todal dataset: `batch(idx)` -> `(uint8 [B, C, S, S], -1 labels)`.

    It has no labels: training pairs it with the project's labels (`PoolLabels`). Normalization
    comes from the model's input (`stats`: mean and std) or else the pool's own statistics; augmentation is the usual random crop (padding S/8) and
    horizontal flip (`hflip=False` for images where left and right differ, e.g. digits).
    """

    def __init__(self, cache: ImageCache, num_classes: int, *, classes: Sequence[str], name: str,
                 hflip: bool = True, task: str = "classification", stats: tuple | None = None):
        self.cache, self.num_classes, self.classes, self.name = cache, num_classes, list(classes), name
        self.in_channels, self.image_size = cache.channels, (cache.size, cache.size)
        self.crop_padding, self.hflip, self.task = max(1, cache.size // 8), bool(hflip), task
        # a pretrained model's own normalization (its processor's mean and std), else the pool's statistics
        self.mean, self.std = (tuple(stats[0]), tuple(stats[1])) if stats else self._stats()
        if task == "segmentation":
            from ..data.scenes import PairAugment, SegmentationData

            self.augment = PairAugment(None, padding=self.crop_padding, hflip=self.hflip)
            self.ignore_index = 255
            self.train_pair_transform = SegmentationData.train_pair_transform.__get__(self)
            self.test_transform = SegmentationData.test_transform.__get__(self)

    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        n = len(self)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:10_000].sort().values
        return channel_stats(self.cache.batch(pick))

    def __len__(self) -> int:
        return len(self.cache)

    def batch(self, idx) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.cache.batch(idx), torch.full((len(idx),), -1, dtype=torch.long)

    def __getitem__(self, i) -> tuple[Tensor, Tensor]:
        x, y = self.batch(torch.tensor([int(i)]))
        return x[0], y[0]

    def __repr__(self) -> str:
        return f"FolderImages({self.name!r}, n={len(self)}, x=[{self.in_channels}, {self.cache.size}, {self.cache.size}])"
