"""BADGE: k-means++ seeding on last-layer gradient embeddings (Ash et al., ICLR 2020).

The gradient of the cross-entropy at the hallucinated label y^ = argmax p, with respect to the
final linear layer's weights, is g = (p - onehot(y^)) ⊗ h (h: the layer's input). With a = p - onehot,

    ||g_i - g_j||² = ||a_i||²·||h_i||² + ||a_j||²·||h_j||² - 2 (a_i·a_j)(h_i·h_j)

so distances to a center cost O(N·(C + D)) and the N x (C·D) embedding is never built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TodalError, check_int, check_number
from ..inference import eval_mode
from ..models import check_head, head_of
from . import register
from .base import Context, RowWriter, Strategy, bounded, feature_dim


def gradient_factors(probs: Tensor) -> Tensor:
    """`[N, C]` probabilities -> a = p - onehot(argmax p), `[N, C]` (g = a ⊗ h)."""
    return probs - F.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)


def sq_distances_to(a: Tensor, h: Tensor, center: int, sq_norms: Tensor | None = None,
                    chunk: int = 65536) -> Tensor:
    """`[N]` squared distances ||g_i - g_center||² (float64) of the gradient embeddings, from the
    factors `a [N, C]` and `h [N, D]` alone, `chunk` rows at a time; `sq_norms` = ||g_i||² =
    ||a_i||²·||h_i||² when precomputed. The dot products run in the inputs' precision (float32:
    the per-center update is the hot loop), the sum in float64."""
    if sq_norms is None:
        sq_norms = _sq_norms(a, h)
    ac, hc = a[center], h[center]
    d2 = torch.empty(len(a), dtype=torch.float64)  # filled with <g_i, g_center>, then turned into distances
    for s in range(0, len(a), chunk):
        torch.mul((a[s : s + chunk] @ ac).double(), (h[s : s + chunk] @ hc).double(), out=d2[s : s + chunk])
    d2.mul_(-2).add_(sq_norms).add_(sq_norms[center]).clamp_min_(0)
    d2[center] = 0.0
    return d2


def _sq_norms(a: Tensor, h: Tensor, chunk: int = 8192) -> Tensor:
    """`[N]` ||g_i||² = ||a_i||²·||h_i||² in float64."""
    return torch.cat([a[s : s + chunk].double().pow(2).sum(1) * h[s : s + chunk].double().pow(2).sum(1)
                      for s in range(0, len(a), chunk)])


def kmeans_pp(a: Tensor, h: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding on g = a ⊗ h: positions `[k]`, in the order they were picked.

    The first center is the largest gradient norm (as the authors' code does, not a uniform draw);
    each next one is drawn with probability proportional to D²(x), the squared distance to the
    nearest chosen center. Only the `[N]` vector of D² is kept, updated once per new center.
    """
    n = len(a)
    a, h = a.contiguous(), h.contiguous()
    sq_norms = _sq_norms(a, h)
    chosen = torch.zeros(n, dtype=torch.bool)
    picks = [int(sq_norms.argmax())]
    chosen[picks[0]] = True
    d2 = sq_distances_to(a, h, picks[0], sq_norms)
    while len(picks) < k:
        weights = d2.masked_fill(chosen, 0.0)
        if not float(weights.sum()) > 0:  # every remaining point coincides with a center
            weights = (~chosen).double()
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        picks.append(nxt)
        chosen[nxt] = True
        torch.minimum(d2, sq_distances_to(a, h, nxt, sq_norms), out=d2)
    return torch.tensor(picks, dtype=torch.long)


@torch.no_grad()
def outputs_and_features(ctx: Context, model: nn.Module, indices: Tensor, desc: str | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Raw outputs `[n, C, ...]` and the input of the final linear layer `[n, D]` in one pass (a
    forward hook on `head_of(model)`); a model without an `nn.Linear` falls back to two passes,
    `ctx.outputs` and `ctx.embeddings` (its `embed()`)."""
    try:
        head = head_of(model)
    except TodalError:
        return ctx.outputs(model, indices, desc), ctx.embeddings(indices, model, desc)
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    outs, feats = RowWriter(len(indices)), RowWriter(len(indices))
    try:
        with eval_mode(model):
            for _, x in ctx.batches(indices, desc):
                captured.clear()
                out = model(x)
                check_head(model, head, out)
                outs.add(out)
                feats.add(captured[-1].flatten(1))
    finally:
        handle.remove()
    return outs.result(), feats.result()


@register
class BADGE(Strategy):
    """Batch Active learning by Diverse Gradient Embeddings.

    h is the input of the final linear layer (the penultimate features `ctx.embeddings` gives,
    read in the same pass as the outputs), p the softmax of the outputs. Follows the
    authors' code (JordanAsh/badge): hallucinated label argmax p, first center the largest
    gradient norm, then D² sampling (their `init_centers`); the randomness is `ctx.generator`.
    Classification outputs `[N, C]` only. The gradient embeddings stay factored (h and p - onehot, never
    their D·C outer products), so memory is the candidates' features. Options: `subset`, a seeded random
    subset of this many candidates (None: all); `max_memory_gb`: refuse, naming `subset`, past it (8).
    """

    def __init__(self, subset: int | None = None, max_memory_gb: float = 8.0):
        super().__init__()
        subset = check_int("subset", f"strategy {self.name!r}", subset, lo=1, optional=True,
                           expected="an int >= 1 or None (every candidate)")
        max_memory_gb = check_number("max_memory_gb", f"strategy {self.name!r}", max_memory_gb, lo=0, lo_open=True)
        self.subset, self.max_memory_gb = subset, max_memory_gb

    name = "badge"
    description = "k-means++ seeding on last-layer gradient embeddings: uncertain and diverse (BADGE)"
    reference = ("Ash, Zhang, Krishnamurthy, Langford, Agarwal, Deep Batch Active Learning by Diverse, "
                 "Uncertain Gradient Lower Bounds, ICLR 2020")

    def _select(self, ctx: Context, k: int) -> Tensor:
        c = getattr(ctx.task, "num_classes", 0) or 0
        cand = bounded(ctx, ctx.pool_for(k), k, name=self.name, subset=self.subset,
                       bytes_per_item=4 * (feature_dim(ctx) + 2 * c), max_memory_gb=self.max_memory_gb)
        out, h = outputs_and_features(ctx, ctx.model, cand, "badge embeddings")
        if out.dim() != 2:
            raise TodalError(f"Strategy 'badge' needs [N, C] class outputs; the model returned "
                             f"{list(out.shape[1:])} per sample. Use it for classification only.")
        a = gradient_factors(ctx.task.probs(out))
        return cand[kmeans_pp(a, h, k, ctx.generator)]
