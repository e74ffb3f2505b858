"""COD and EMAOD sampling: pick the samples whose outputs moved most (Eq. 5, Sec. 4.2 and 5.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..discrepancy import MEASURES, SPACES, discrepancy, to_space
from ..errors import TodalError, check_choice
from ..inference import eval_mode
from . import register
from .base import Context, ScoreStrategy


class _OutputDiscrepancy(ScoreStrategy):
    """Discrepancy between `ctx.model` and a reference model, in `space` with `measure`
    (None: the flavor's: ||·|| for the paper, 0.5·||·||² for the official code)."""

    def __init__(self, space: str = "probs", measure: str | None = None):
        super().__init__()
        self.space = check_choice("space", f"strategy {self.name!r}", space, SPACES)
        self.measure = None if measure is None else check_choice("measure", f"strategy {self.name!r}",
                                                                  measure, MEASURES)

    def _measure(self, ctx: Context) -> str:
        return self.measure or ctx.flavor.measure

    @torch.no_grad()
    def _paired(self, ctx: Context, reference, candidates: Tensor) -> Tensor:
        """Both models on the same (augmented, for the official code's quirk) batches."""
        out = []
        with eval_mode(ctx.model, reference):
            for _, x in ctx.batches(candidates, f"scoring {self.name}", augmented=ctx.flavor.score_augment):
                a = to_space(ctx.model(x).float(), self.space)
                b = to_space(reference(x).float(), self.space)
                out.append(discrepancy(a, b, measure=self._measure(ctx), task=ctx.task).cpu())
        return torch.cat(out)


@register
class COD(_OutputDiscrepancy):
    """Cyclic Output Discrepancy: this cycle's model against the previous cycle's (Eq. 5).

    The current outputs on the candidates are kept for the next cycle, so a cycle costs one
    inference pass over the pool, not two. Dense outputs (segmentation) are not kept: storing
    full-resolution maps of the pool would not fit, so the previous model is run again.
    """

    name = "cod"
    description = "largest output change since the previous cycle (Cyclic Output Discrepancy)"
    reference = "Huang et al., Semi-Supervised Active Learning with Temporal Output Discrepancy, ICCV 2021"
    needs_previous = True

    def __init__(self, space: str = "probs", measure: str | None = None, cache: bool = True):
        super().__init__(space, measure)
        self.cache = bool(cache)
        # {cycle: {"indices": (n,), "outputs": (n, C)}} in self.space, for the last two cycles, so
        # scoring twice in one cycle still compares with the previous cycle's outputs.
        self._cache: dict[int, dict] = {}

    def ascending(self, ctx: Context) -> bool:
        return ctx.cycle == 0 and ctx.flavor.first_cycle_lowest

    def _previous_outputs(self, ctx: Context, candidates: Tensor) -> Tensor | None:
        c = self._cache.get(ctx.cycle - 1)
        if c is None:
            return None
        pos = torch.full((len(ctx.dataset),), -1, dtype=torch.long)
        pos[c["indices"]] = torch.arange(len(c["indices"]))
        p = pos[candidates]
        prev = torch.empty((len(candidates),) + tuple(c["outputs"].shape[1:]))
        hit = p >= 0
        prev[hit] = c["outputs"][p[hit]]
        if not bool(hit.all()):  # not scored last cycle (a random subset): run the previous model
            prev[~hit] = to_space(ctx.outputs(ctx.previous_model, candidates[~hit]), self.space)
        return prev

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        if ctx.flavor.score_augment:
            return self._paired(ctx, ctx.previous_model, candidates)
        current = to_space(ctx.outputs(ctx.model, candidates, f"scoring {self.name}"), self.space)
        previous = self._previous_outputs(ctx, candidates) if self.cache else None
        if previous is None:
            previous = to_space(ctx.outputs(ctx.previous_model, candidates, "previous model"), self.space)
        if self.cache and current.dim() == 2:
            self._cache = {c: v for c, v in self._cache.items() if c == ctx.cycle - 1}
            self._cache[ctx.cycle] = {"indices": candidates.clone(), "outputs": current}
        return discrepancy(current, previous, measure=self._measure(ctx), task=ctx.task)

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
