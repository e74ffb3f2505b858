"""COD and EMAOD sampling: pick the samples whose outputs moved most (Eq. 5, Sec. 4.2 and 5.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..discrepancy import DEFAULT_SPACE, MEASURES, SPACES, discrepancy, to_space
from ..errors import TodalError, check_choice
from ..inference import eval_mode
from . import register
from .base import Context, ScoreStrategy


class _OutputDiscrepancy(ScoreStrategy):
    """Discrepancy between `ctx.model` and a reference model, in `space` with `measure`
    (None: the flavor's: ||·|| for the paper, 0.5·||·||² for the official code)."""

    def __init__(self, space: str = DEFAULT_SPACE, measure: str | None = None):
        super().__init__()
        self.space = check_choice("space", f"strategy {self.name!r}", space, SPACES)
        self.measure = None if measure is None else check_choice("measure", f"strategy {self.name!r}",
                                                                  measure, MEASURES)

    def _measure(self, ctx: Context) -> str:
        return self.measure or ctx.flavor.measure

    def _paired(self, ctx: Context, reference, candidates: Tensor) -> Tensor:
        """Both models on the same (augmented, for the official code's quirk) batches, reduced per batch."""
        measure = self._measure(ctx)

        def score(a: Tensor, b: Tensor) -> Tensor:
            return discrepancy(to_space(a, self.space), to_space(b, self.space), measure=measure, task=ctx.task)

        return ctx.per_sample(score, [ctx.model, reference], candidates, f"scoring {self.name}",
                              augmented=ctx.flavor.score_augment)


@register
class COD(_OutputDiscrepancy):
    """Cyclic Output Discrepancy: this cycle's model against the previous cycle's (Eq. 5).

    Scored a batch at a time; only the `[n]` scores are kept, whatever the output shape.
    Classification: the current outputs on the candidates (`[n, C]`, in `space`) are kept for the
    next cycle, so a cycle costs one inference pass over the pool, not two.
    Dense outputs (segmentation): nothing is kept. Full-resolution maps of the pool would not fit
    (`[n, C, H, W]`: 10 GB for 56,000 64x64 scenes of 11 classes, 2.5 TB for Cityscapes), and the
    discrepancy needs every pixel's class vector, so no smaller summary gives the same score. The
    previous cycle's model is run again on each batch instead: COD costs two inference passes
    per cycle (measured in benchmarks/segmentation-scoring), and memory stays one batch of outputs.
    """

    name = "cod"
    description = "largest output change since the previous cycle (Cyclic Output Discrepancy)"
    reference = "Huang et al., Semi-Supervised Active Learning with Temporal Output Discrepancy, ICCV 2021"
    needs_previous = True

    def __init__(self, space: str = DEFAULT_SPACE, measure: str | None = None, cache: bool = True):
        super().__init__(space, measure)
        self.cache = bool(cache)
        # {cycle: {"indices": (n,), "outputs": (n, C)}} in self.space, for the last two cycles, so
        # scoring twice in one cycle still compares with the previous cycle's outputs.
        self._cache: dict[int, dict] = {}

    def ascending(self, ctx: Context) -> bool:
        return ctx.cycle == 0 and ctx.flavor.first_cycle_lowest

    def _cached(self, ctx: Context) -> tuple[dict, Tensor] | None:
        """Last cycle's kept outputs and, per dataset index, their row there (-1: not kept)."""
        c = self._cache.get(ctx.cycle - 1) if self.cache else None
        if c is None:
            return None
        row = torch.full((len(ctx.dataset),), -1, dtype=torch.long)
        row[c["indices"]] = torch.arange(len(c["indices"]))
        return c, row

    def _previous(self, ctx: Context, x: Tensor, idx: Tensor, cached, like: Tensor) -> Tensor:
        """The previous model's outputs (in `self.space`) on one batch: kept ones where there are, the
        previous model run on the rest of the batch."""
        if cached is None:
            with eval_mode(ctx.previous_model):
                return to_space(ctx.previous_model(x).float(), self.space)
        c, row = cached
        r = row[idx]
        hit = r >= 0
        prev = torch.empty_like(like)
        prev[hit.to(like.device)] = c["outputs"][r[hit]].to(like.device, like.dtype)
        if not bool(hit.all()):  # not scored last cycle (a random subset): run the previous model
            miss = (~hit).to(x.device)
            with eval_mode(ctx.previous_model):
                prev[miss.to(like.device)] = to_space(ctx.previous_model(x[miss]).float(), self.space)
        return prev

    @torch.no_grad()
    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        if ctx.flavor.score_augment:
            return self._paired(ctx, ctx.previous_model, candidates)
        measure, cached = self._measure(ctx), self._cached(ctx)
        scores, kept, pos = torch.empty(len(candidates)), [], 0
        with eval_mode(ctx.model):
            for idx, x in ctx.batches(candidates, f"scoring {self.name}"):
                current = to_space(ctx.model(x).float(), self.space)
                if self.cache and current.dim() == 2:  # dense outputs are never kept
                    kept.append(current.cpu())
                previous = self._previous(ctx, x, idx, cached if current.dim() == 2 else None, current)
                scores[pos : pos + len(idx)] = discrepancy(current, previous, measure=measure, task=ctx.task).cpu()
                pos += len(idx)
        if kept:
            self._cache = {c: v for c, v in self._cache.items() if c == ctx.cycle - 1}
            self._cache[ctx.cycle] = {"indices": candidates.clone(), "outputs": torch.cat(kept)}
        return scores

    def state_dict(self) -> dict:
        return {"cache": self._cache}

    def load_state_dict(self, state: dict) -> None:
        self._cache = dict(state.get("cache") or {})


@register
class EMAOD(_OutputDiscrepancy):
    """EMA Output Discrepancy: the current model against its EMA teacher (paper Sec. 5.4)."""

    name = "emaod"
    description = "largest output gap between the model and its EMA teacher"
    reference = "Huang et al., ICCV 2021 (Sec. 5.4, EMAOD)"
    needs_ema = True

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        if ctx.ema_model is None:
            raise TodalError("Strategy 'emaod' needs an EMA teacher; run it through ActiveLoop (which "
                             "keeps one) or pass ema_model= to the Context.")
        return self._paired(ctx, ctx.ema_model, candidates)
