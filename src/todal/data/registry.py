"""`load_dataset(name_or_path)`: dataset names, `.npz` paths and image folders behind one call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import TodalError
from ..registry import Registry
from .arrays import ArrayDataset
from .cifar import read_cifar10, read_cifar100
from .cityscapes import read_cityscapes
from .digits import read_digits
from .fashion_mnist import read_fashion_mnist
from .folder import read_image_folder
from .npz import read_npz
from .scenes import read_fashion_mnist_scenes
from .svhn import read_svhn

Reader = Callable[..., tuple[ArrayDataset, ArrayDataset]]


def _folder(root=None, **kwargs) -> tuple[ArrayDataset, ArrayDataset]:
    if root is None:
        raise TodalError("The 'folder' dataset needs root=<folder with one sub-folder of images per class> "
                         "(--data-root on the command line).")
    return read_image_folder(root, **kwargs)


REGISTRY: Registry[Reader] = Registry("dataset", sep="-")


def register_dataset(name: str, reader: Reader, *, replace: bool = False) -> None:
    """Make `load_dataset(name, root=..., **kwargs)` call `reader(root=root, **kwargs) -> (train, test)`; the name
    is normalized (`todal.registry`), and one another reader holds is refused unless `replace=True`."""
    if not callable(reader):
        raise TodalError(f"register_dataset needs a callable reader(root=..., **options) -> (train, test). Got "
                         f"{reader!r}.")
    REGISTRY.register(name, reader, replace=replace)


for _name, _reader in (("digits", read_digits), ("fashion-mnist", read_fashion_mnist), ("cifar10", read_cifar10),
                       ("cifar100", read_cifar100), ("svhn", read_svhn), ("folder", _folder),
                       ("fashion-mnist-scenes", read_fashion_mnist_scenes), ("cityscapes", read_cityscapes)):
    register_dataset(_name, _reader)


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(REGISTRY.names())


def load_dataset(name_or_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 **kwargs) -> tuple[ArrayDataset, ArrayDataset]:
    """`(train, test)` for a registered name, a path to an `.npz` file, or a class-per-folder image tree.

    `root` is where the named dataset's files live (None: the default look-up); extra keyword
    arguments go to the reader (e.g. `crop_padding=`, `hflip=`, `image_size=`).
    """
    text = os.fspath(name_or_path)
    if text in REGISTRY:
        return REGISTRY.get(text)(root=root, **kwargs)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".npz":
        return read_npz(path, **kwargs)
    if path.is_dir():
        return read_image_folder(path, **kwargs)
    raise TodalError(f"Unknown dataset {text!r}. Valid: {', '.join(dataset_names())}; or a path to a .npz file "
                     f"or an image folder.")
