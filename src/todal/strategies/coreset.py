"""Core-set selection: greedy k-center on the model's features (Sener & Savarese, ICLR 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import TodalError, check_int, check_number, param_error
from . import register
from .base import Context, Strategy, bounded, feature_dim

# Centers handled per block when the min-distance vector is first built: the temporary distance
# block is (chunk_size, _CENTER_BLOCK), whatever the number of labeled points.
_CENTER_BLOCK = 256


def _sq_dist_to(features: Tensor, sq_norms: Tensor, centers: Tensor, chunk_size: int) -> Tensor:
    """`[N]` min over `centers` `[m, D]` of ||x - c||², rows in chunks: temp memory chunk·(D + m)."""
    out = torch.empty(len(features), dtype=features.dtype)
    c_sq = (centers * centers).sum(1)  # (m,)
    for start in range(0, len(features), chunk_size):
        x = features[start : start + chunk_size]  # (b, D)
        d = sq_norms[start : start + chunk_size, None] - 2.0 * (x @ centers.T) + c_sq[None]  # (b, m)
        out[start : start + chunk_size] = d.min(1).values.clamp_min_(0.0)
    return out


def k_center_greedy(features: Tensor, centers: Tensor, k: int, *, chunk_size: int = 4096,
                    generator: torch.Generator | None = None) -> Tensor:
    """Greedy 2-approximation of the k-center problem (Sener & Savarese 2018, Alg. 1).

    Repeatedly picks the point farthest (Euclidean) from its nearest center and makes it a center.
    Only the `[N]` vector of distances to the nearest center is kept; each pick updates it with
    the distances to the new center alone, computed over chunks of `chunk_size` rows, so memory is
    O(N + chunk_size·D) and an N x N matrix is never formed.

    Args:
        features: `[N, D]` points.
        centers: points already chosen (the labeled set): a bool mask `[N]` or positions; may be
            empty, then the first pick is a uniformly random point drawn with `generator`.
        k: number of new points, at most N minus the number of centers.
    Returns:
        `[k]` positions in `features`, in the order picked; never a center, never twice.
    """
    if features.dim() != 2:
        raise param_error("features", "k_center_greedy", "a [N, D] tensor", tuple(features.shape))
    n = len(features)
    chunk_size = check_int("chunk_size", "k_center_greedy", chunk_size, lo=1)
    centers = torch.as_tensor(centers)
    if centers.dtype == torch.bool:
        if centers.shape != (n,):
            raise param_error("centers", "k_center_greedy", f"a bool mask of shape ({n},) or positions",
                              tuple(centers.shape))
        is_center = centers.clone()
    else:
        is_center = torch.zeros(n, dtype=torch.bool)
        is_center[centers.long().flatten()] = True
    free = n - int(is_center.sum())
    k = check_int("k", "k_center_greedy", k, lo=0, hi=free,
                  expected=f"an int in [0, {free}] (points that are not centers)")
    if k == 0:
        return torch.empty(0, dtype=torch.long)

    x = features.detach().float().cpu()
    sq_norms = (x * x).sum(1)  # (N,)
    chosen = torch.empty(k, dtype=torch.long)
    start = 0
    if bool(is_center.any()):
        idx = is_center.nonzero().squeeze(1)
        min_d = torch.full((n,), torch.inf)
        for s in range(0, len(idx), _CENTER_BLOCK):
            min_d = torch.minimum(min_d, _sq_dist_to(x, sq_norms, x[idx[s : s + _CENTER_BLOCK]], chunk_size))
    else:
        first = int(torch.randint(n, (1,), generator=generator))
        chosen[0] = first
        is_center[first] = True
        min_d = _sq_dist_to(x, sq_norms, x[first : first + 1], chunk_size)
        start = 1
    # Centers can never be picked again: -inf survives every torch.minimum update, so even when
    # all remaining distances are 0 (duplicates) the argmax lands on a point not yet chosen.
    min_d[is_center] = -torch.inf
    for i in range(start, k):
        j = int(torch.argmax(min_d))
        chosen[i] = j
        min_d[j] = -torch.inf
        c = x[j]
        for s in range(0, n, chunk_size):  # (b,) squared distances to the new center only
            d = (sq_norms[s : s + chunk_size] - 2.0 * (x[s : s + chunk_size] @ c) + sq_norms[j]).clamp_min_(0.0)
            torch.minimum(min_d[s : s + chunk_size], d, out=min_d[s : s + chunk_size])
    return chosen


@register
class CoreSet(Strategy):
    """k-center greedy on penultimate features, the labeled set as initial centers.

    The labeled points and the candidates (`ctx.candidates`: the whole pool, or the random subset
    the official flavor scores, as the CoreSet baseline of Caramalau et al.'s code scores labeled +
    10,000 unlabeled) are embedded with the task model; the k picks are the greedy k-center
    solution (Sener & Savarese's Alg. 1; their robust MIP refinement is not run, as in the
    reference implementations). Options: `chunk_size` rows per distance block (memory only); `subset`: a
    seeded random subset of this many candidates (None: all, the paper); `max_memory_gb`: refuse, naming
    `subset`, when the features of the labeled set and the candidates would pass it (default 8).
    """

    name = "coreset"
    description = "greedy k-center cover of the pool in feature space (Core-set)"
    reference = "Sener & Savarese, Active Learning for Convolutional Neural Networks: A Core-Set Approach, ICLR 2018"

    def __init__(self, chunk_size: int = 4096, subset: int | None = None, max_memory_gb: float = 8.0):
        super().__init__()
        chunk_size = check_int("chunk_size", f"strategy {self.name!r}", chunk_size, lo=1)
        subset = check_int("subset", f"strategy {self.name!r}", subset, lo=1, optional=True,
                           expected="an int >= 1 or None (every candidate)")
        max_memory_gb = check_number("max_memory_gb", f"strategy {self.name!r}", max_memory_gb, lo=0, lo_open=True)
        self.chunk_size, self.subset, self.max_memory_gb = chunk_size, subset, max_memory_gb

    def _select(self, ctx: Context, k: int) -> Tensor:
        cand = bounded(ctx, ctx.pool_for(k), k, name=self.name, subset=self.subset, extra_items=len(ctx.labeled),
                       bytes_per_item=4 * feature_dim(ctx), max_memory_gb=self.max_memory_gb)
        feats = ctx.embeddings(torch.cat([ctx.labeled, cand]), desc=f"embedding for {self.name}")
        if feats.dim() != 2:
            raise TodalError(f"Strategy {self.name!r} needs [N, D] features; the model's embed() returned "
                             f"shape {tuple(feats.shape)}. Return pooled features from embed().")
        n_lab = len(ctx.labeled)
        picked = k_center_greedy(feats, torch.arange(n_lab), k, chunk_size=self.chunk_size,
                                 generator=ctx.generator)
        return cand[picked - n_lab]
