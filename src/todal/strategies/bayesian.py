"""MC-Dropout acquisition: T stochastic passes, scored on probabilities `[T, N, C, *S]` (Gal et al. 2017).

    variation ratio   1 - f_m / T                      f_m: passes voting for the modal class
    max entropy       H[mean_t p_t]                    predictive entropy
    BALD              H[mean_t p_t] - mean_t H[p_t]    mutual information between y and the weights

Dense outputs (segmentation) reduce per-pixel values to a per-sample mean.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_choice, param_error
from ..models import Classifier, dropout_active, with_dropout
from . import register
from .base import Context, ScoreStrategy, top_k


def _per_sample(per_elem: Tensor) -> Tensor:
    return per_elem if per_elem.dim() == 1 else per_elem.flatten(1).mean(1)


def _entropy(probs: Tensor, dim: int) -> Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim)


def variation_ratio(probs: Tensor) -> Tensor:
    """`[T, N, C, *S]` -> `[N]`: 1 - (passes whose argmax is the modal class) / T."""
    t, c = probs.shape[0], probs.shape[2]
    votes = F.one_hot(probs.argmax(2), c).sum(0)  # (N, *S, C): passes voting for each class
    return _per_sample(1.0 - votes.max(-1).values.to(probs.dtype) / t)


def max_entropy(probs: Tensor) -> Tensor:
    """`[T, N, C, *S]` -> `[N]`: entropy of the mean prediction, H[mean_t p_t]."""
    return _per_sample(_entropy(probs.mean(0), dim=1))


def bald(probs: Tensor) -> Tensor:
    """`[T, N, C, *S]` -> `[N]`: H[mean_t p_t] - mean_t H[p_t] (zero when the passes agree)."""
    return _per_sample(_entropy(probs.mean(0), dim=1) - _entropy(probs, dim=2).mean(0))


ACQUISITIONS = {"variation_ratio": variation_ratio, "max_entropy": max_entropy, "bald": bald}


@contextlib.contextmanager
def seeded_by(ctx: Context):
    """Seed torch's RNG (dropout masks, initializers) from `ctx.generator` for a block and restore it
    afterwards; on a GPU the device's generator is forked too, so the masks are reproducible there."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=ctx.generator))
    dev = torch.device(ctx.device)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def top_k_with_tiebreak(primary: Tensor, secondary: Tensor, k: int) -> Tensor:
    """Positions of the k best `primary` scores; ties (common for vote counts) go to the higher
    `secondary` score, then to index order."""
    by_secondary = top_k(secondary, len(secondary))
    return by_secondary[top_k(primary[by_secondary], k)]


def has_dropout(model: nn.Module) -> bool:
    """Whether `dropout_active` has anything to switch on (an `nn.Dropout` layer)."""
    return any(isinstance(m, nn.Dropout) for m in model.modules())


def _dropout_only_before_head(model: nn.Module) -> bool:
    """A built-in model whose one dropout sits between trunk and head: the trunk is deterministic,
    so it runs once and only the head sees the T masks (same distribution, T times cheaper)."""
    return (isinstance(model, Classifier) and type(model).forward is Classifier.forward
            and all(m is model.drop for m in model.modules() if isinstance(m, nn.Dropout)))


@torch.no_grad()
def stochastic_outputs(model: nn.Module, x: Tensor, passes: int, max_batch: int) -> Tensor:
    """`passes` forward passes of `x [B, ...]` with dropout on: raw outputs `[T, B, C, *S]`.

    The passes run as one repeated batch (`T·b <= max_batch` rows per forward) instead of a loop.
    """
    if _dropout_only_before_head(model):
        h = model.trunk(x)  # (B, D)
        hs = h.unsqueeze(0).expand(passes, *h.shape).reshape(passes * len(h), -1)
        return model.head(model.drop(hs)).view(passes, len(x), -1)
    per = max(1, max_batch // passes)  # samples per forward
    outs = []
    for xb in x.split(per):
        rep = xb.unsqueeze(0).expand(passes, *xb.shape).reshape(passes * len(xb), *xb.shape[1:])
        out = model(rep)
        outs.append(out.view(passes, len(xb), *out.shape[1:]))
    return torch.cat(outs, dim=1)


class _MCDropout(ScoreStrategy):
    """T stochastic passes with dropout on and BatchNorm in eval mode, scored by an acquisition.

    A model without `nn.Dropout` layers is scored through a copy with `Dropout(p)` inserted before
    its final linear layer (`todal.models.with_dropout`); a model that has dropout uses its own
    layers and rates, and `p` is ignored (p=0 makes every pass the same: all scores 0). The masks
    are seeded from `ctx.generator`.
    T = 20 by default; the authors' released code (Riashat/Deep-Bayesian-Active-Learning) draws
    100 passes on a random 2,000-sample pool subset (`passes=100` with the loop's `score_subset`),
    with dropout 0.25 after the convolutions and 0.5 before the last dense layer. Ties (variation ratio takes only T + 1 values) go to the higher
    predictive entropy rather than to pool order.
    """

    reference = "Gal, Islam, Ghahramani, Deep Bayesian Active Learning with Image Data, ICML 2017"
    acquisition: str

    def __init__(self, passes: int = 20, p: float = 0.5, **unknown):
        super().__init__(**unknown)
        owner = f"strategy {self.name!r}"
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 2:
            raise param_error("passes", owner, "an int >= 2", passes, "The default is 20.")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise param_error("p", owner, "a float in [0, 1)", p)
        self.passes, self.p = passes, float(p)

    def _scores(self, ctx: Context, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """`[n]` acquisition scores and `[n]` predictive entropies (the tie-break) of `candidates`."""
        model = ctx.model if has_dropout(ctx.model) else with_dropout(ctx.model, self.p).to(ctx.device)
        score_fn = ACQUISITIONS[self.acquisition]
        scores, entropies = [], []
        with seeded_by(ctx), dropout_active(model):
            for _, x in ctx.batches(candidates, f"scoring {self.name}"):
                out = stochastic_outputs(model, x, self.passes, ctx.batch_size).float()  # (T, B, C, *S)
                probs = ctx.task.probs(out.flatten(0, 1)).view(out.shape)
                scores.append(score_fn(probs).cpu())
                entropies.append(max_entropy(probs).cpu())
        return torch.cat(scores), torch.cat(entropies)

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        return self._scores(ctx, candidates)[0]

    def _select(self, ctx: Context, k: int) -> Tensor:
        cand = ctx.candidates if len(ctx.candidates) >= k else ctx.unlabeled
        scores, entropies = self._scores(ctx, cand)
        return cand[top_k_with_tiebreak(scores, entropies, k)]


@register
class MCDropout(_MCDropout):
    """MC-Dropout with variation ratios (1 - modal share of the T votes) or max entropy.

    Options: `acquisition` ("variation_ratio" or "max_entropy"), `passes` T (20), `p` (0.5,
    dropout inserted before the head of a model that has none).
    """

    name = "mc_dropout"
    description = "MC-Dropout uncertainty over T stochastic passes (variation ratio or max entropy)"

    def __init__(self, acquisition: str = "variation_ratio", passes: int = 20, p: float = 0.5, **unknown):
        super().__init__(passes, p, **unknown)
        self.acquisition = check_choice("acquisition", f"strategy {self.name!r}", acquisition,
                                        ("variation_ratio", "max_entropy"),
                                        "Use strategy 'bald' for the mutual information.")


@register
class BALD(_MCDropout):
    """BALD (Houlsby et al. 2011) with MC-Dropout: mutual information between label and weights.

    Options: `passes` T (20), `p` (0.5, dropout inserted before the head of a model that has none).
    """

    name = "bald"
    description = "largest mutual information between label and weights under MC-Dropout (BALD)"
    acquisition = "bald"
