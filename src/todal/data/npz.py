"""A user's own arrays in one `.npz`: `x_train, y_train, x_test, y_test` (+ optional metadata)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import TodalError, check_choice
from .arrays import ArrayDataset, channel_stats

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_CHANNELS = (1, 3, 4)


def _images(x: np.ndarray, key: str, path: Path, layout: str) -> np.ndarray:
    """`[N, H, W]`, `[N, H, W, C]` or `[N, C, H, W]` -> `[N, C, H, W]`, uint8 or float32."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if layout == "auto":
            # Channels-last is numpy's habit; channels-first only when the last axis cannot be channels.
            layout = "NHWC" if x.shape[3] in _CHANNELS or x.shape[1] not in _CHANNELS else "NCHW"
        if layout == "NHWC":
            if x.shape[3] not in _CHANNELS:
                raise TodalError(f"{path}: {key} has shape {x.shape}, whose last axis is not 1, 3 or 4 channels; "
                                 f"save it as [N, H, W, C] or [N, C, H, W] (or pass layout='NCHW').")
            x = x.transpose(0, 3, 1, 2)
    else:
        raise TodalError(f"{path}: {key} has shape {x.shape}; save images as [N, H, W], [N, H, W, C] or [N, C, H, W].")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        x = np.ascontiguousarray(x, dtype=np.float32)
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            kind = "NaN" if np.isnan(x[i]).any() else "inf"
            raise TodalError(f"{path}: {key} contains {kind} at sample {i}; clean the data or drop those samples.")
        return x
    if np.issubdtype(x.dtype, np.integer) and (x.size == 0 or (x.min() >= 0 and x.max() <= 255)):
        return np.ascontiguousarray(x, dtype=np.uint8)  # integer pixels 0..255, stored wider than needed
    raise TodalError(f"{path}: {key} has dtype {x.dtype}; save pixels as uint8 (0..255) or float32.")


def _labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise TodalError(f"{path}: {key} has shape {y.shape}; save labels as a 1-D array [N] of class indices.")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
            y = y.astype(np.int64)  # whole-number floats are labels saved carelessly, not regression targets
        else:
            raise TodalError(f"{path}: {key} has dtype {y.dtype}; save labels as integer class indices 0..C-1.")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        i = int(np.argmin(y))
        raise TodalError(f"{path}: {key} has negative label {int(y[i])} at sample {i}; labels must be class "
                         f"indices 0..C-1: remap them.")
    return y


def read_npz(path: str | os.PathLike, *, layout: str = "auto", crop_padding: int | None = None, hflip: bool = False,
             name: str | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test sets from an `.npz` with `x_train, y_train, x_test, y_test`.

    x: `[N, H, W]` (grayscale), `[N, H, W, C]` (C in 1/3/4) or `[N, C, H, W]`; uint8 or float
    (float is normalized as-is). Optional keys: `classes` (C names), `mean`, `std` (per channel,
    default computed from x_train), `num_classes` (default max label + 1).
    layout: "auto", "NHWC" or "NCHW" for 4-D x (auto treats a last axis of 1, 3 or 4 as channels).
    Augmentation: crop_padding defaults to H // 8 (small shifts suit nearly any image), hflip to
    False (mirroring breaks text and digits; pass True for natural images).
    """
    check_choice("layout", "read_npz", layout, ("auto", "NHWC", "NCHW"))
    path = Path(path).expanduser()
    if not path.is_file():
        raise TodalError(f"{path} does not exist; pass the path of an .npz holding x_train, y_train, x_test, y_test.")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise TodalError(f"{path} is not a readable .npz ({type(e).__name__}: {' '.join(str(e).split())}); "
                         f"save it with numpy.savez.") from None
    with npz:
        missing = [k for k in REQUIRED if k not in npz.files]
        if missing:
            raise TodalError(f"{path} has no {', '.join(map(repr, missing))} array; save x_train, y_train, x_test, "
                             f"y_test with numpy.savez (found: {', '.join(npz.files) or 'nothing'}).")
        try:
            arrays = {k: npz[k] for k in npz.files}
        except ValueError:  # an object array needs pickle, which a data file should not
            raise TodalError(f"{path} holds an object array (e.g. classes as a Python list of objects); save "
                             f"classes as np.array(names, dtype=str) and everything else as numbers.") from None
    xs = {s: _images(arrays[f"x_{s}"], f"x_{s}", path, layout) for s in ("train", "test")}
    ys = {s: _labels(arrays[f"y_{s}"], f"y_{s}", path) for s in ("train", "test")}
    for s in ("train", "test"):
        if len(xs[s]) != len(ys[s]):
            raise TodalError(f"{path}: x_{s} has {len(xs[s])} samples but y_{s} has {len(ys[s])}; "
                             f"save one label per image.")
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise TodalError(f"{path}: x_train images are {xs['train'].shape[1:]} but x_test images are "
                         f"{xs['test'].shape[1:]} (C, H, W); save both splits at the same size and channels.")
    if xs["train"].dtype != xs["test"].dtype:
        raise TodalError(f"{path}: x_train is {xs['train'].dtype} but x_test is {xs['test'].dtype}; "
                         f"save both splits with the same dtype (uint8 or float32).")
    if len(xs["train"]) == 0:
        raise TodalError(f"{path}: x_train is empty; save at least one training image.")
    top = int(max(y.max() if len(y) else -1 for y in ys.values())) + 1
    if "num_classes" in arrays:
        num_classes = int(np.asarray(arrays["num_classes"]).reshape(-1)[0])
        if num_classes < top:
            raise TodalError(f"{path}: num_classes is {num_classes} but the labels go up to {top - 1}; "
                             f"fix num_classes or remap the labels.")
    else:
        num_classes = top
    classes = None
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
        if len(classes) != num_classes:
            raise TodalError(f"{path}: classes has {len(classes)} names for {num_classes} classes; save one name "
                             f"per class (or drop the key).")
    x_train = torch.from_numpy(xs["train"])
    mean, std = channel_stats(x_train)
    stats = {"mean": mean, "std": std}
    c = xs["train"].shape[1]
    for key in ("mean", "std"):
        if key in arrays:
            v = np.asarray(arrays[key]).reshape(-1)
            if not np.issubdtype(v.dtype, np.number) or len(v) not in (1, c) or not np.isfinite(v).all() or (
                    key == "std" and (v <= 0).any()):
                positive = " (> 0)" if key == "std" else ""
                raise TodalError(f"{path}: {key} is {v.tolist()!r}; save {c} finite per-channel values on the [0, 1] "
                                 f"scale{positive}, or drop the key to compute it from x_train.")
            stats[key] = v.astype(np.float64).tolist()
    mean, std = stats["mean"], stats["std"]
    h = xs["train"].shape[2]
    pad = max(1, h // 8) if crop_padding is None else crop_padding
    name = path.stem if name is None else name
    return tuple(ArrayDataset(torch.from_numpy(xs[s]), torch.from_numpy(ys[s]), num_classes=num_classes, mean=mean,
                              std=std, classes=classes, name=name, crop_padding=pad, hflip=hflip)
                 for s in ("train", "test"))
