"""Fashion-MNIST (Xiao et al. 2017) from the four upstream IDX `.gz` files."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import TodalError
from . import _paths
from .arrays import ArrayDataset, channel_stats

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TIMEOUT_S = 15.0
_FIX = "re-download or reinstall dataset-fashion-mnist"


def _file(folder: Path, name: str) -> Path | None:
    """`name` or its un-gzipped twin (some mirrors ship the raw files)."""
    for p in (folder / name, folder / name.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


def _holds_all(folder: Path) -> bool:
    return all(_file(folder, n) is not None for n in FILES.values())


def read_idx(path: str | os.PathLike, ndim: int, fix: str = _FIX) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzip'd when the name ends in .gz).

    Layout: magic `0x0000 08 <ndim>` big-endian, `ndim` big-endian uint32 dims, then the bytes.
    Returns a uint8 array of shape `dims`; a bad magic, bad dims or wrong byte count is a TodalError.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise TodalError(f"{path} cannot be read ({_paths.one_line(e)}); {fix}.") from None
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise TodalError(f"{path} is truncated ({len(raw)} bytes, no IDX header); {fix}.")
    magic = struct.unpack(">I", raw[:4])[0]
    want = 0x0800 | ndim
    if magic != want:
        raise TodalError(f"{path} has IDX magic 0x{magic:08x}, expected 0x{want:08x} (unsigned bytes, {ndim}-D); "
                         f"it is not the right file: {fix}.")
    if len(raw) < header:
        raise TodalError(f"{path} is truncated ({len(raw)} bytes, shorter than its {header}-byte header); {fix}.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    body = len(raw) - header
    if body != count:
        state = "truncated" if body < count else "too long"
        raise TodalError(f"{path} is {state}: its header says {'x'.join(map(str, dims))} = {count} bytes of data, "
                         f"the file holds {body}; {fix}.")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


def _download(folder: Path, base_url: str, timeout: float) -> None:
    """Fetch the missing files into `folder`; each lands atomically (temp file + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        if _file(folder, name) is not None:
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base_url + name, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            os.replace(tmp, folder / name)
        finally:
            Path(tmp).unlink(missing_ok=True)


def find_fashion_mnist(root: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The folder holding the four files: `root` (or `root/fashion-mnist`), else `$TODAL_DATA`
    (or `$TODAL_DATA/fashion-mnist`), `~/.cache/todal/fashion-mnist`, `/usr/share/datasets/fashion-mnist`;
    else a download from the official location into `root` or `~/.cache/todal/fashion-mnist`."""
    paths = _paths.candidates(["fashion-mnist"], root)
    found = _paths.find_dir(paths, _holds_all)
    if found is not None:
        return found
    why = ""
    if download:
        target = Path(root).expanduser() if root is not None else _paths.cache_dir() / "fashion-mnist"
        try:
            _download(target, URL, TIMEOUT_S)
            return target
        except Exception as e:  # any network or disk failure ends in the same advice
            why = f" (download from {URL} failed: {_paths.one_line(e)})"
    raise TodalError(f"Fashion-MNIST not found in {_paths.describe(paths)}{why}. Install the Debian package "
                     f"dataset-fashion-mnist or set TODAL_DATA to a folder holding the four IDX .gz files.")


def read_fashion_mnist(root: str | os.PathLike | None = None, *, download: bool = True, crop_padding: int = 2,
                       hflip: bool = True) -> tuple[ArrayDataset, ArrayDataset]:
    """Fashion-MNIST train (60,000) and test (10,000) sets, x uint8 `[N, 1, 28, 28]`, 10 classes.

    Augmentation defaults: crop_padding=2 (a 28-px image tolerates shifts of 2 px; 4 would move
    garments partly out of frame) and hflip=True (clothes are left-right symmetric).
    mean/std come from the train split (about 0.2860 / 0.3530).
    """
    folder = find_fashion_mnist(root, download=download)
    arrays = {k: read_idx(_file(folder, n), 3 if k.endswith("images") else 1) for k, n in FILES.items()}
    sets = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        img, lab = _file(folder, FILES[f"{split}_images"]), _file(folder, FILES[f"{split}_labels"])
        if x.shape[1:] != (28, 28):
            raise TodalError(f"{img} holds {x.shape[1]}x{x.shape[2]} images, Fashion-MNIST's are 28x28; {_FIX}.")
        if len(x) != len(y):
            raise TodalError(f"{img} holds {len(x)} images but {lab} holds {len(y)} labels; {_FIX}.")
        if len(y) and int(y.max()) >= len(CLASSES):
            raise TodalError(f"{lab} has label {int(y.max())}, Fashion-MNIST has 10 classes; {_FIX}.")
        sets.append((torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)))
    mean, std = channel_stats(sets[0][0])
    return tuple(ArrayDataset(x, y, num_classes=10, mean=mean, std=std, classes=CLASSES, name="fashion-mnist",
                              crop_padding=crop_padding, hflip=hflip) for x, y in sets)
