"""Training objectives beside the task loss.

`tod_consistency` is the unsupervised loss of Eq. 7; `official_consistency` is the form in the
authors' code. `Objective` is the interface `fit()` uses for objectives a strategy adds
(the loss-prediction module of LL4AL).
"""

from __future__ import annotations

import abc
from typing import Iterable

import torch.nn.functional as F
from torch import Tensor, nn


def tod_consistency(student_out: Tensor, teacher_out: Tensor, reduction: str = "sum") -> Tensor:
    """Eq. 7: mean over samples of ||f(x; w) - f(x; w~)||², the teacher held fixed.

    `[N, C]` -> scalar. Dense outputs `[N, C, *S]`: over the class axis, then the mean over samples
    and pixels (so λ keeps its meaning whatever the resolution).
    reduction: "sum" over the C outputs (Eq. 7 as printed: the squared norm), or "mean" over them
    (the authors' code, `F.mse_loss`: 1/C of the printed form, so the same λ weighs it C times less).
    """
    sq = (student_out - teacher_out.detach()).pow(2)
    return (sq.sum(dim=1) if reduction == "sum" else sq.mean(dim=1)).mean()


def official_consistency(student_heads: list[tuple[Tensor, Tensor]], teacher_outs: list[Tensor]) -> Tensor:
    """The authors' code: for each batch (labeled and unlabeled), MSE between the student's two
    heads plus MSE between its second head and the teacher's main head (means over N·C)."""
    loss = 0.0
    for (main, second), teacher in zip(student_heads, teacher_outs):
        loss = loss + F.mse_loss(main, second) + F.mse_loss(second, teacher.detach())
    return loss


class Objective(abc.ABC):
    """An extra loss that `fit()` adds to the task loss; may own parameters and hook the model."""

    def attach(self, model: nn.Module) -> None:
        """Called once before training (register forward hooks here)."""

    def detach(self) -> None:
        """Called once after training (remove hooks)."""

    def parameters(self) -> Iterable[nn.Parameter]:
        return []

    def train(self, mode: bool = True) -> None:
        """Switch the objective's own modules between train and eval mode."""

    @abc.abstractmethod
    def loss(self, *, out: Tensor, y: Tensor, per_sample_loss: Tensor, epoch: int, epochs: int) -> Tensor:
        """The extra loss for one labeled batch (`out`: model outputs, `per_sample_loss`: `[B]`)."""
