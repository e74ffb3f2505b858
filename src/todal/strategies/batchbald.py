"""BatchBALD: a batch that maximizes the mutual information of its joint labels and the weights (Kirsch et al. 2019).

    a(x_1..n) = H(y_1..n) - sum_i E_w[H(y_i | w)]        joint entropy minus the conditional entropies

over K weight samples w_k: consistent MC dropout, pass k applying the same mask k to every candidate. The batch
grows greedily, each step adding the candidate that maximizes a. With n points picked, H(y_1..n, y) is exact
while the C^n joint configurations fit in `num_samples`, and an importance-sampled estimate over
`num_samples // K * K` sampled configurations beyond (the reference's `SampledJointEntropy`, batchbald_redux).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..errors import Int, Real, TodalError, check_int, param_error, validate
from ..inference import eval_mode
from ..models import with_dropout
from . import register
from .base import Context, RowWriter, Strategy, bounded
from .bayesian import has_dropout, stochastic_chunks

BLOCK_BYTES = 2**23  # one block of `[M, b, C]` joint probabilities and their p log p; cache-sized blocks run faster


def conditional_entropies(log_probs: Tensor, chunk: int | None = None) -> Tensor:
    """`[N, K, C]` log-probabilities -> `[N]` float64 mean over the K passes of H[p(y | x, w_k)], `chunk`
    candidates at a time (None: blocks of `BLOCK_BYTES`)."""
    N, K, C = log_probs.shape
    chunk = chunk or max(1, BLOCK_BYTES // (8 * K * C))
    out = torch.empty(N, dtype=torch.float64, device=log_probs.device)
    for s in range(0, N, chunk):
        p = log_probs[s : s + chunk].double().exp_()
        out[s : s + chunk] = torch.special.entr(p, out=p).sum((1, 2)) / K
    return out


def configurations(probs: Tensor, num_samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`[n, K, C]` probabilities of the picked points -> `(joint [M, K], weights [M])`, float64: p(y^m | w_k) of
    joint configurations y^m and their weights in the entropy sums. Exact while C^n <= num_samples: all C^n
    configurations, weight 1. Beyond: M = num_samples // K * K sampled ones (`sampled_configurations`),
    weight 1 / (M p(y^m)), an importance-sampled sum."""
    n, K, C = probs.shape
    if C**n <= num_samples:
        joint = torch.ones(1, K, dtype=torch.float64, device=probs.device)
        for j in range(n):  # configuration m*C + c extends m by y_j = c
            joint = (joint[:, None, :] * probs[j].double().t()[None]).reshape(-1, K)
        return joint, torch.ones(len(joint), dtype=torch.float64, device=probs.device)
    joint = sampled_configurations(probs, num_samples, generator)
    return joint, 1.0 / (len(joint) * joint.mean(1))


def sampled_configurations(probs: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """`[n, K, C]` probabilities -> `[M, K]` float64 p(y^m | w_k) of M = num_samples // K * K sampled configurations.

    Configuration m = (k, s), s < num_samples // K, draws each y_j ~ p(y_j | w_k) (from `generator`, on the CPU):
    stratified samples of the mixture p(y_1..n) = mean_k p(y_1..n | w_k). The product runs over groups of points.
    """
    n, K, C = probs.shape
    S = num_samples // K
    choices = torch.multinomial(probs.reshape(-1, C).cpu(), S, replacement=True, generator=generator)
    choices = choices.to(probs.device).view(n, 1, K * S)  # (n, 1, M): class of point j in configuration m
    log_joint = torch.zeros(K, K * S, dtype=torch.float64, device=probs.device)  # (K, M)
    group = max(1, BLOCK_BYTES // (8 * K * K * S))
    for s in range(0, n, group):
        p = probs[s : s + group].double()
        picked = p.gather(2, choices[s : s + group].expand(len(p), K, K * S))  # (g, K, M): p(y_j^m | w_k)
        log_joint += picked.log().sum(0)
    return log_joint.exp().t().contiguous()


def joint_entropies(log_probs: Tensor, joint: Tensor, weights: Tensor, *, chunk: int | None = None) -> Tensor:
    """`[N]` float64 H(y_picked, y_x) of each candidate x of `log_probs [N, K, C]` with the picked points'
    configurations `(joint [M, K], weights [M])` (see `configurations`), `chunk` candidates at a time (None:
    blocks of `BLOCK_BYTES`), on the device of `joint`."""
    N, K, C = log_probs.shape
    M = len(joint)
    b = max(1, min(N, chunk or BLOCK_BYTES // (8 * C * (2 * M + 2 * K))))
    joint, weights = joint / K, -weights
    out = torch.empty(N, dtype=torch.float64, device=joint.device)
    buffers = torch.empty(2, M * b * C, dtype=torch.float64, device=joint.device)  # reused: no heap churn
    for s in range(0, N, b):
        p = log_probs[s : s + b].to(joint.device, torch.float64).exp_()  # (b, K, C)
        pair, plogp = buffers[:, : M * len(p) * C].view(2, M, -1)
        # (M, b*C): p(y^m, y_x = c) = mean_k p(y^m | w_k) p(c | x, w_k)
        torch.matmul(joint, p.transpose(0, 1).reshape(K, -1), out=pair)
        torch.log(pair, out=plogp).mul_(pair).nan_to_num_(0.0)  # 0 log 0 = 0; faster than special.entr
        out[s : s + b] = (weights @ plogp).view(-1, C).sum(1)
    return out


def batchbald_select(log_probs: Tensor, k: int, *, num_samples: int = 1000, generator: torch.Generator,
                     chunk: int | None = None, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Greedy BatchBALD over `[N, K, C]` log-probabilities (K consistent MC dropout passes): positions `[k]`
    in the order picked and `[k]` float64 scores, score i = a(x_1..x_i).

    `chunk` candidates at a time (None: blocks of 8 MiB), on `device` (None: that of `log_probs`); sampled
    configurations draw from `generator` (CPU). Memory besides `log_probs`: a few `[N]` float64 vectors, the
    `[M, K]` configurations (M <= num_samples) and one block, never `[N, M, C]`.
    """
    if log_probs.dim() != 3 or not log_probs.is_floating_point():
        raise TodalError(f"batchbald_select needs float log-probabilities [N, K, C]; got a {log_probs.dtype} "
                         f"tensor of shape {list(log_probs.shape)}.")
    N, K, C = log_probs.shape
    k = check_int("k", "batchbald_select", k, lo=0, hi=N, fix="k is the batch size: at most the N candidates.")
    check_int("num_samples", "batchbald_select", num_samples, lo=K,
              fix=f"Sampled configurations come num_samples // K per pass; K = {K} passes.")
    check_int("chunk", "batchbald_select", chunk, lo=1, optional=True)
    device = torch.device(device) if device is not None else log_probs.device
    cond = conditional_entropies(log_probs).to(device)
    picked = torch.zeros(N, dtype=torch.bool, device=device)
    picks: list[int] = []
    scores = torch.empty(k, dtype=torch.float64)
    lowest = torch.finfo(torch.float64).min
    for i in range(k):
        probs = log_probs[picks].to(device, torch.float64).exp()  # (n, K, C): the picks so far
        joint, weights = configurations(probs, num_samples, generator)
        a = joint_entropies(log_probs, joint, weights, chunk=chunk) - cond - cond[picks].sum()
        a = torch.where(picked, -torch.inf, torch.nan_to_num(a, nan=lowest, posinf=lowest, neginf=lowest))
        best = int(a.argmax())
        picks.append(best)
        picked[best] = True
        scores[i] = a[best]
    return torch.tensor(picks, dtype=torch.long), scores


@contextlib.contextmanager
def consistent_dropout(model: nn.Module, passes: int, seed: int):
    """Consistent MC dropout in `model` for a block: each `nn.Dropout` multiplies the rows of pass k by mask k.

    Forwards must carry `passes` repeats of a batch, pass-major (`[passes * b, ...]`, as `stochastic_chunks`
    lays them out when `passes` <= its `max_batch`). Each layer draws its K masks once, at its first call, from
    `seed` and the layer's position: the same K masks for every batch. The model is in eval mode meanwhile.
    """
    masks: dict[int, Tensor] = {}

    def hook(pos: int, p: float):
        def apply(module: nn.Module, inputs, out: Tensor) -> Tensor:
            if out.shape[0] % passes:
                raise RuntimeError(f"consistent_dropout got {out.shape[0]} rows, not a multiple of {passes} passes")
            if pos not in masks:
                keep = torch.full((passes, *out.shape[1:]), 1.0 - p)
                mask = torch.bernoulli(keep, generator=torch.Generator().manual_seed(seed + pos))
                masks[pos] = (mask / (1.0 - p) if p < 1 else mask).to(out.device)
            mask = masks[pos]
            if mask.shape[1:] != out.shape[1:]:
                raise TodalError(f"Consistent MC dropout needs inputs of one shape at each dropout layer; layer {pos} "
                                 f"saw {list(mask.shape[1:])}, then {list(out.shape[1:])}.")
            return (out.view(passes, -1, *out.shape[1:]) * mask.to(out.dtype).unsqueeze(1)).view_as(out)
        return apply

    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    handles = [m.register_forward_hook(hook(pos, m.p)) for pos, m in enumerate(layers)]
    try:
        with eval_mode(model):  # Dropout layers are identities in eval mode: the hooks apply the masks
            yield model
    finally:
        for h in handles:
            h.remove()


_RULES = {"passes": Int(lo=2, fix="The default is 20."), "p": Real(lo=0, hi=1, hi_open=True),
          "num_samples": Int(lo=1, fix="The default is 1000."),
          "subset": Int(lo=1, optional=True, expected="an int >= 1 or None (every candidate)"),
          "max_memory_gb": Real(lo=0, lo_open=True)}


@register
class BatchBALD(Strategy):
    """BatchBALD with consistent MC dropout: greedy batches by joint mutual information.

    A model without `nn.Dropout` is scored through a copy with `Dropout(p)` before its final linear layer
    (`todal.models.with_dropout`); one with dropout uses its own layers and rates (`p` ignored). The K masks are
    seeded from `ctx.generator`. Options: `passes` K (20), `p` (0.5), `num_samples` (1000, at least K),
    `subset` (a seeded random subset of this many candidates; None: all), `max_memory_gb` (8): refuse, naming
    `subset`, when the candidates' `[n, K, C]` log-probabilities would pass it. Classification outputs only.
    After `select`, `batch_scores_` holds a(x_1..x_i) of each pick `[k]`.
    """

    name = "batchbald"
    description = "greedy batch of largest joint mutual information between labels and weights (BatchBALD)"
    reference = ("Kirsch, van Amersfoort, Gal, BatchBALD: Efficient and Diverse Batch Acquisition for Deep "
                 "Bayesian Active Learning, NeurIPS 2019")
    batch_scores_: Tensor | None = None

    def __init__(self, passes: int = 20, p: float = 0.5, num_samples: int = 1000, subset: int | None = None,
                 max_memory_gb: float = 8.0):
        super().__init__()
        vars(self).update(validate(f"strategy {self.name!r}", _RULES, passes=passes, p=p, num_samples=num_samples,
                                   subset=subset, max_memory_gb=max_memory_gb))
        if self.num_samples < self.passes:
            raise param_error("num_samples", f"strategy {self.name!r}", f"an int >= passes ({self.passes})",
                              num_samples, "Sampled configurations come num_samples // passes per pass.")

    @torch.no_grad()
    def log_probs(self, ctx: Context, candidates: Tensor) -> Tensor:
        """`[n, K, C]` float32 log-probabilities of `candidates` under K consistent dropout masks (on the CPU)."""
        model = ctx.model
        if not has_dropout(model):
            try:
                model = with_dropout(model, self.p).to(ctx.device)
            except TodalError:
                raise TodalError(f"Strategy {self.name!r} needs a model with nn.Dropout layers, or a final nn.Linear "
                                 f"to insert Dropout(p) before; {type(model).__name__} has neither.") from None
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        rows = RowWriter(len(candidates))
        with consistent_dropout(model, self.passes, seed):
            for _, x in ctx.batches(candidates, f"scoring {self.name}"):
                for _, out in stochastic_chunks(model, x, self.passes, max(ctx.batch_size, self.passes)):
                    if out.dim() != 3:
                        raise TodalError(f"Strategy {self.name!r} needs [N, C] class outputs; the model returned "
                                         f"{list(out.shape[2:])} per sample. Use it for classification only.")
                    rows.add(torch.log_softmax(out.float(), dim=2).transpose(0, 1))  # (b, K, C)
        return rows.result()

    def _select(self, ctx: Context, k: int) -> Tensor:
        c = getattr(ctx.task, "num_classes", 0) or 0
        cand = bounded(ctx, ctx.pool_for(k), k, name=self.name, subset=self.subset,
                       bytes_per_item=4 * self.passes * c + 40, max_memory_gb=self.max_memory_gb)
        picks, self.batch_scores_ = batchbald_select(self.log_probs(ctx, cand), k, num_samples=self.num_samples,
                                                     generator=ctx.generator, device=ctx.device)
        return cand[picks]
