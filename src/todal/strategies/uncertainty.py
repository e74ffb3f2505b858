"""Uncertainty heuristics on softmax probabilities `[N, C, *S]` (pixel means for dense outputs).

Scored a batch at a time (`Context.per_sample`): memory is one batch of outputs whatever the pool size.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from . import register
from .base import Context, ScoreStrategy, per_sample_mean


def entropy_score(probs: Tensor) -> Tensor:
    """H(p) = -sum_c p_c log p_c per sample (pixel mean)."""
    return per_sample_mean(-(probs * probs.clamp_min(1e-12).log()).sum(1))


def margin_score(probs: Tensor) -> Tensor:
    """-(p_top1 - p_top2): small margins score high."""
    top2 = probs.topk(2, dim=1).values
    return per_sample_mean(top2[:, 1] - top2[:, 0])


def least_confidence_score(probs: Tensor) -> Tensor:
    """1 - max_c p_c."""
    return per_sample_mean(1.0 - probs.max(dim=1).values)


class _Uncertainty(ScoreStrategy):
    """Scores the model's probabilities with `score_probs` (a staticmethod set by each subclass)."""

    reference = "Settles, Active Learning Literature Survey, 2009"
    score_probs: Callable[[Tensor], Tensor]

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        # Reduced per batch: only `[n]` is kept, so dense outputs never pile up as `[n, C, H, W]`.
        return ctx.per_sample(lambda out: self.score_probs(ctx.task.probs(out)), [ctx.model], candidates,
                              f"scoring {self.name}")


@register
class Entropy(_Uncertainty):
    name = "entropy"
    description = "highest predictive entropy"
    score_probs = staticmethod(entropy_score)


@register
class Margin(_Uncertainty):
    name = "margin"
    description = "smallest gap between the two most probable classes"
    score_probs = staticmethod(margin_score)


@register
class LeastConfidence(_Uncertainty):
    name = "least_confidence"
    description = "lowest probability of the predicted class"
    score_probs = staticmethod(least_confidence_score)
