"""Training objectives beside the task loss.

`tod_consistency` is the unsupervised loss of Eq. 7; `official_consistency` is the form in the
authors' code. `Objective` is the interface `fit()` uses for objectives a strategy adds
(the loss-prediction module of LL4AL); `Consistency` is an objective on unlabeled batches against a
teacher, with its two forms `Eq7Consistency` and `OfficialConsistency` (Eq. 9's second term).
"""

from __future__ import annotations

import abc
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import check_choice
from .flavor import flavor_for

DEFAULT = flavor_for("default")  # the choices every default below follows (todal/flavor.py says why)


def tod_consistency(student_out: Tensor, teacher_out: Tensor, reduction: str = DEFAULT.consistency_reduction
                    ) -> Tensor:
    """Eq. 7: mean over samples of ||f(x; w) - f(x; w~)||², the teacher held fixed, over the C outputs
    averaged (`reduction="mean"`, the default flavor's and the authors' `F.mse_loss`) or summed ("sum", the
    squared norm as printed: C times the mean, so the same λ weighs it C times more).

    `[N, C]` -> scalar. Dense outputs `[N, C, *S]`: over the class axis, then the mean over samples
    and pixels (so λ keeps its meaning whatever the resolution).
    """
    check_choice("reduction", "tod_consistency", reduction, ("mean", "sum"))
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


class Consistency(Objective):
    """An unsupervised loss against a teacher, on one unlabeled batch per labeled batch (Eq. 9: λ times it).

    fit() calls `labeled_forward` for the student's labeled outputs (the task loss takes the first), then
    `unlabeled_loss` with an unlabeled batch. The callables fit passes run the model under its precision
    settings and return fp32 outputs; the teacher's run without gradients.
    """

    def __init__(self, teacher: nn.Module, lam: float = DEFAULT.lam, *,
                 teacher_train_mode: bool = DEFAULT.teacher_train_mode):
        self.teacher, self.lam, self.teacher_train_mode = teacher, float(lam), bool(teacher_train_mode)

    def check(self, model: nn.Module) -> None:
        """Refuse a model this loss cannot train, before any step."""

    def labeled_forward(self, student, heads, x: Tensor) -> tuple[Tensor, object]:
        """`(outputs, state)` of the student on the labeled batch; `state` goes to `unlabeled_loss`."""
        return student(x), None

    @abc.abstractmethod
    def unlabeled_loss(self, student, heads, teacher, x: Tensor, state, xu: Tensor) -> Tensor:
        """λ-weighted loss of one step: `student(x)`, `heads(x)` and `teacher(x)` give outputs."""

    def loss(self, **kw) -> Tensor:  # no term on the labeled batch alone
        return torch.zeros(())


class Eq7Consistency(Consistency):
    """Eq. 7 on the unlabeled batch: ||f(x; w) - f(x; w~)||² (averaged over the C outputs by default, as the
    authors' code; "sum" as printed), the teacher held fixed; defaults: the default flavor's."""

    def __init__(self, teacher: nn.Module, lam: float = DEFAULT.lam, *, reduction: str = DEFAULT.consistency_reduction,
                 teacher_train_mode: bool = DEFAULT.teacher_train_mode):
        super().__init__(teacher, lam, teacher_train_mode=teacher_train_mode)
        self.reduction = check_choice("reduction", "Eq7Consistency", reduction, ("mean", "sum"))

    def unlabeled_loss(self, student, heads, teacher, x, state, xu):
        return self.lam * tod_consistency(student(xu), teacher(xu), self.reduction)


class OfficialConsistency(Consistency):
    """The authors' code: the student's two heads on the labeled and the unlabeled batch, MSE between them
    plus MSE between the second head and the teacher (`official_consistency`). Needs `model.heads(x)`
    (`todal.models.SecondHead(model)` gives any classifier one)."""

    def check(self, model: nn.Module) -> None:
        if not hasattr(model, "heads"):
            from .errors import param_error

            raise param_error("consistency", "fit", "'eq7' for a model without a second head", "official",
                              "Wrap it, todal.models.SecondHead(model), or build a todal model with "
                              "second_head=True for the official consistency.")

    def labeled_forward(self, student, heads, x):
        out, out2 = heads(x)
        return out, (out, out2)

    def unlabeled_loss(self, student, heads, teacher, x, state, xu):
        u, u2 = heads(xu)
        return self.lam * official_consistency([state, (u, u2)], [teacher(x), teacher(xu)])
