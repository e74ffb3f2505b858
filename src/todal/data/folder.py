"""Class-per-folder image trees (`root/<class>/*.png`), decoded once with PIL and held as uint8."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import TodalError, check_int, check_number, param_error
from .arrays import ArrayDataset, channel_stats, stratified_split

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                  and not p.name.startswith("."))


def _scan(root: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """Image paths and label indices under `root`; classes are the sorted sub-folder names."""
    if not root.is_dir():
        raise TodalError(f"Image folder {root} does not exist; pass a folder with one sub-folder of images per class.")
    dirs = _class_dirs(root)
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise TodalError(f"{root} has class folders {unknown} that the train folder lacks; the test classes "
                             f"must be a subset of the train classes.")
    files, labels = [], []
    for d in dirs:  # one iteration per class folder
        found = _files(d)
        files += found
        labels += [classes.index(d.name)] * len(found)
    if not files:
        raise TodalError(f"No images ({', '.join(EXTENSIONS)}) found in class sub-folders of {root}; put each class's "
                         f"images in its own sub-folder, e.g. {root}/cat/001.png, or, for images without labels, "
                         f"start a labeling project: todal init PROJECT --images {root} --classes a,b,c.")
    return files, labels, classes


def _size(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise param_error(name, "read_image_folder", "a positive int or (height, width)", value)


def _decode(paths: list[Path], mode: str, size: tuple[int, int], resize: int | None,
            crop: tuple[int, int] | None) -> np.ndarray:
    """Decode, convert and resize every image -> uint8 `[N, C, H, W]`."""
    from PIL import Image

    h, w = crop or size
    c = 1 if mode == "L" else 3
    out = np.empty((len(paths), h, w, c), dtype=np.uint8)
    for i, p in enumerate(paths):  # file decoding is per file by nature; this runs once, at load time
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if crop is None:
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                else:
                    scale = resize / min(im.size)  # shorter side -> resize, aspect kept
                    im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))),
                                   Image.Resampling.BILINEAR)
                    left, top = (im.width - w) // 2, (im.height - h) // 2
                    im = im.crop((left, top, left + w, top + h))
                out[i] = np.asarray(im, dtype=np.uint8).reshape(h, w, c)
        except (OSError, ValueError, SyntaxError) as e:
            raise TodalError(f"{p} cannot be decoded as an image ({type(e).__name__}: {' '.join(str(e).split())}); "
                             f"delete or replace the file.") from None
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _all_gray(paths: list[Path]) -> bool:
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as im:  # opening reads the header only
                if im.mode not in _GRAY_MODES:
                    return False
        except (OSError, ValueError, SyntaxError) as e:
            raise TodalError(f"{p} cannot be opened as an image ({type(e).__name__}: {' '.join(str(e).split())}); "
                             f"delete or replace the file.") from None
    return True


def read_image_folder(root: str | os.PathLike, *, image_size: int | tuple[int, int] = 32, resize: int | None = None,
                      center_crop: int | tuple[int, int] | None = None, test_fraction: float = 0.1, seed: int = 0,
                      grayscale: bool | None = None, crop_padding: int | None = None, hflip: bool = True,
                      name: str | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test sets from `root/<class>/<image>` (or `root/train/<class>/...` + `root/test/<class>/...`).

    Sizing: by default every image is resized (squashed) to `image_size`. With `center_crop`, the
    shorter side is first resized to `resize` (default: the crop size, aspect kept) and the centre
    cut out; the paper's Caltech-101 setting is `resize=256, center_crop=224`. `resize` alone
    means `center_crop=resize`. Images become RGB, or L when every file is grayscale
    (`grayscale=None`); force either with True/False. Everything is held as uint8 in memory
    (N x C x H x W bytes: Caltech-101 at 224 px is about 1.4 GB).

    Without train/ and test/ sub-trees, a deterministic stratified split puts `round(n_c *
    test_fraction)` images of every class in test (seeded by `seed`), like the paper's 90/10.
    Classes are the sorted folder names. mean/std come from the train split.
    Augmentation: crop_padding defaults to an eighth of the height (4 px at 32), hflip=True.
    Each set's `paths` holds its files' paths relative to `root`, in sample order.
    """
    root = Path(root).expanduser()
    size = _size(image_size, "image_size")
    resize = check_int("resize", "read_image_folder", resize, lo=1, optional=True,
                       expected="a positive int (the shorter side) or None")
    crop = None if center_crop is None else _size(center_crop, "center_crop")
    if crop is None and resize is not None:
        crop = (resize, resize)
    if crop is not None and resize is None:
        resize = max(crop)
    if crop is not None and resize < max(crop):
        raise param_error("resize", "read_image_folder", f">= the crop size {max(crop)}", resize)
    test_fraction = check_number("test_fraction", "read_image_folder", test_fraction, lo=0, hi=1, hi_open=True)

    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, train_y, classes = _scan(root / "train", None)
        test_files, test_y, _ = _scan(root / "test", classes)
    else:
        files, labels, classes = _scan(root, None)
        tr, te = stratified_split(np.asarray(labels), float(test_fraction), seed)
        train_files, train_y = [files[i] for i in tr], [labels[i] for i in tr]
        test_files, test_y = [files[i] for i in te], [labels[i] for i in te]
    if grayscale is None:
        grayscale = _all_gray(train_files + test_files)
    mode = "L" if grayscale else "RGB"
    xs = [torch.from_numpy(_decode(f, mode, size, resize, crop)) for f in (train_files, test_files)]
    ys = [torch.as_tensor(y, dtype=torch.long) for y in (train_y, test_y)]
    mean, std = channel_stats(xs[0])
    pad = max(1, xs[0].shape[2] // 8) if crop_padding is None else crop_padding
    name = root.name if name is None else name
    sets = tuple(ArrayDataset(x, y, num_classes=len(classes), mean=mean, std=std, classes=classes, name=name,
                              crop_padding=pad, hflip=hflip) for x, y in zip(xs, ys))
    for data, files in zip(sets, (train_files, test_files)):
        data.paths = [f.relative_to(root).as_posix() for f in files]  # sample i came from paths[i]
    return sets
