"""CIFAR-10 / CIFAR-100 from the upstream "python version" pickle folders.

The batches are pickles. They are read with an unpickler that builds only what a batch holds (dicts, lists,
bytes, numbers and numpy arrays) and refuses any other global, so a crafted file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import TodalError, check_choice
from . import _paths
from .arrays import ArrayDataset

# The normalization the TOD reference code uses for both CIFARs.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
_HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"


# The only globals a batch names: numpy's array reconstruction (numpy 1 and 2 module paths), and, in a copy
# re-pickled by Python 3 at protocol 2, `_codecs.encode` for its bytes.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds (refused, not run)")
        return super().find_class(module, name)


def _load(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as e:  # truncated or foreign files fail in many ways inside pickle
        raise TodalError(f"{path} cannot be unpickled ({_paths.one_line(e)}); "
                         f"re-extract {what} from {_HOME}.") from None
    if not isinstance(d, dict):
        raise TodalError(f"{path} holds a {type(d).__name__}, not a CIFAR batch dict; re-extract {what} from {_HOME}.")
    return d


def _key(d: dict, key: bytes, path: Path, what: str):
    # Upstream keys are bytes (pickled under Python 2); accept str too for re-pickled copies.
    for k in (key, key.decode()):
        if k in d:
            return d[k]
    raise TodalError(f"{path} has no {key.decode()!r} entry; it is not a {what} python-version batch: "
                     f"re-extract it from {_HOME}.")


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _batch(path: Path, label_key: bytes, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` uint8 `[N, 3, 32, 32]`, `y` int64 `[N]` from one batch file."""
    d = _load(path, what)
    data = np.asarray(_key(d, b"data", path, what))
    labels = np.asarray(_key(d, label_key, path, what), dtype=np.int64).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise TodalError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]; "
                         f"re-extract {what} from {_HOME}.")
    if len(data) != len(labels):
        raise TodalError(f"{path} holds {len(data)} images but {len(labels)} labels; re-extract {what} from {_HOME}.")
    # Each row is the R plane, then G, then B, each 32x32 row-major: exactly C, H, W.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _find(root, names: list[str], marker: str, what: str, archive: str) -> Path:
    _paths.check_root(root, what)
    paths = _paths.candidates(names, root)
    found = _paths.find_dir(paths, lambda p: (p / marker).is_file())
    if found is None:
        raise TodalError(f"{what} not found in {_paths.describe(paths)}. Download {archive} from {_HOME}, extract it "
                         f"and pass the extracted folder as root (or set TODAL_DATA to its parent).")
    return found


def read_cifar10(root: str | os.PathLike | None = None, *, crop_padding: int = 4,
                 hflip: bool = True) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 train (50,000) and test (10,000), x uint8 `[N, 3, 32, 32]`, 10 classes.

    `root` is `cifar-10-batches-py/` itself or its parent. Augmentation: crop_padding=4, hflip=True.
    """
    what = "CIFAR-10"
    folder = _find(root, ["cifar-10-batches-py", "cifar10", "cifar-10"], "data_batch_1", what, "cifar-10-python.tar.gz")
    parts = []
    for i in range(1, 6):
        p = folder / f"data_batch_{i}"
        if not p.is_file():
            raise TodalError(f"{p} is missing; re-extract {what} from {_HOME}.")
        parts.append(_batch(p, b"labels", what))
    test_path = folder / "test_batch"
    if not test_path.is_file():
        raise TodalError(f"{test_path} is missing; re-extract {what} from {_HOME}.")
    meta_path = folder / "batches.meta"
    classes = (_names(_key(_load(meta_path, what), b"label_names", meta_path, what)) if meta_path.is_file()
               else ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    train = (torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
    test = _batch(test_path, b"labels", what)
    return _make(train, test, classes, "cifar10", crop_padding, hflip)


def read_cifar100(root: str | os.PathLike | None = None, *, labels: str = "fine", crop_padding: int = 4,
                  hflip: bool = True) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-100 train (50,000) and test (10,000), x uint8 `[N, 3, 32, 32]`, 100 fine classes
    (or 20 with `labels="coarse"`).

    `root` is `cifar-100-python/` itself or its parent. Augmentation: crop_padding=4, hflip=True.
    """
    what = "CIFAR-100"
    check_choice("labels", "read_cifar100", labels, ("fine", "coarse"))
    folder = _find(root, ["cifar-100-python", "cifar100", "cifar-100"], "train", what, "cifar-100-python.tar.gz")
    for name in ("test", "meta"):
        if not (folder / name).is_file():
            raise TodalError(f"{folder / name} is missing; re-extract {what} from {_HOME}.")
    key = f"{labels}_labels".encode()
    meta = _load(folder / "meta", what)
    classes = _names(_key(meta, f"{labels}_label_names".encode(), folder / "meta", what))
    train = _batch(folder / "train", key, what)
    test = _batch(folder / "test", key, what)
    return _make(train, test, classes, "cifar100", crop_padding, hflip)


def _make(train, test, classes, name, crop_padding, hflip) -> tuple[ArrayDataset, ArrayDataset]:
    return tuple(ArrayDataset(x, y, num_classes=len(classes), mean=MEAN, std=STD, classes=classes, name=name,
                              crop_padding=crop_padding, hflip=hflip) for x, y in (train, test))
