"""A record the usual tools read: TensorBoard event files, one point per cycle or step.

`Recorder(log_dir)` writes, per cycle (or project step) `n`: every number of its record as a scalar
(`cycle/accuracy`, `cycle/train_loss`, `cycle/train_time_s`, `cycle/stop_kappa`, ...), the learning curve as
scalars over the number of labels (`curve/accuracy`, with its interval for a project's estimate), and a grid
of the samples just queued (`queued`). TensorBoard is an optional extra (`pip install 'todal[tensorboard]'`),
imported only when a log directory is asked for.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import torch
from torch import Tensor

from .errors import TodalError

CURVE = ("accuracy", "miou", "val_accuracy", "val_low", "val_high", "val_miou")


class Recorder:
    """TensorBoard event files under `log_dir`."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TodalError("--log-dir writes TensorBoard event files, which needs the tensorboard package: pip "
                             "install 'todal[tensorboard]' (or drop --log-dir).") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

    def record(self, n: int, record: dict, *, labels: int | None = None, images: Tensor | None = None) -> None:
        """Cycle or step `n`: its numbers as scalars, the curve over `labels`, and up to 64 queued `images`."""
        for key, value in record.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"cycle/{key}", float(value), n)
        if labels is not None:
            for key in CURVE:
                if isinstance(record.get(key), numbers.Real):
                    self.writer.add_scalar(f"curve/{key}", float(record[key]), int(labels))
        if images is not None and len(images) and images.dim() in (3, 4):  # images, not feature vectors
            self.writer.add_images("queued", _displayable(images[:64]), n)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _displayable(x: Tensor) -> Tensor:
    """`[B, C, H, W]` images as floats in [0, 1] with 1 or 3 channels (each batch rescaled to its range)."""
    x = x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.shape[1] not in (1, 3):
        x = x[:, :1]
    lo, hi = x.amin(), x.amax()
    return (x - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros_like(x)
