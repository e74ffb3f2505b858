"""Random sampling: the baseline every method must beat."""

from __future__ import annotations

import torch
from torch import Tensor

from . import register
from .base import Context, Strategy


@register
class Random(Strategy):
    name = "random"
    description = "uniformly random unlabeled samples"
    reference = "baseline"

    def _select(self, ctx: Context, k: int) -> Tensor:
        return ctx.unlabeled[torch.randperm(len(ctx.unlabeled), generator=ctx.generator)[:k]]
