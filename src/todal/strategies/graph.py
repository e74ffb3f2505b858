"""Sequential GCN sampling: UncertainGCN and CoreGCN (Caramalau, Bhattarai & Kim, CVPR 2021).

A graph is built over the task model's features of the labeled set and a random subset of the
unlabeled pool; a 2-layer GCN learns to tell labeled (1) from unlabeled (0) nodes, and its outputs
choose the queries. Constants follow the authors' code (razvancaramalau/Sequential-GCN-for-Active-
Learning: `main.py` arguments, `config.py`, `selection_methods.py`, `models/query_models.py`):

- node features: the learner's penultimate features, L2-normalized (`nn.functional.normalize`);
- adjacency (`aff_to_adj`): A = F Fᵀ − I, each column divided by its sum, then + I;
- GCN: gc1 (D -> 128 hidden, `--hidden_units`), ReLU, dropout 0.3 (`--dropout_rate`), gc3
  (128 -> 1), sigmoid; gc2 and the linear layer defined there are unused. Weights and biases
  uniform in ±1/sqrt(out_features) as in their `GraphConvolution.reset_parameters`;
- training: 200 full-graph steps (`EPOCH_GCN`) of Adam, lr 1e-3 (`LR_GCN`), weight decay 5e-4
  (`WDECAY`), loss `BCEAdjLoss` = −mean log s(labeled) − λ·mean log(1 − s(unlabeled)), λ = 1.2
  (`--lambda_loss`; in `BCEAdjLoss` λ weighs the *unlabeled* term);
- UncertainGCN: the unlabeled nodes whose score is closest to s_margin = 0.1 (`--s_margin`; the
  code sorts by −|s − margin| and `main.py` keeps the last ADDENDUM, i.e. the closest);
- graph over labeled + SUBSET = 10,000 random unlabeled samples; queries come from that subset.

Departures: the adjacency is applied as a low-rank operator (A·Y = F(Fᵀ(Y/c)) − Y/c + Y), the
same matrix without the N x N memory, so the authors' subset size fits on a CPU; CoreGCN runs
k-center greedy on the GCN's hidden features (the paper's CoreGCN; the code at the crawled
commit passes the normalized learner features instead: `kcenter_features="task"` does that);
the GCN trains on the CPU, seeded from `ctx.generator`. A training step costs O(N·D·hidden) for
N = subset + labeled nodes of D features (about 1 GFLOP for 15,000 nodes of 128 features).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import Int, Real, check_choice, check_int, check_number, validate
from . import register
from .base import Context, Strategy, top_k
from .coreset import k_center_greedy

# Column sums smaller than this (a node with no affinity to any other) are replaced by it.
_EPS = 1e-8


def _safe(col: Tensor) -> Tensor:
    return torch.where(col.abs() < _EPS, torch.full_like(col, _EPS), col)


def normalized_adjacency(features: Tensor) -> Tensor:
    """Dense `[N, N]` A = (F Fᵀ − I) diag(1/colsum) + I over L2-normalized rows of `features`."""
    f = F.normalize(features.float().flatten(1), dim=1)  # (N, D)
    eye = torch.eye(len(f))
    a = f @ f.T - eye
    return a / _safe(a.sum(0))[None, :] + eye


class CosineAdjacency:
    """`normalized_adjacency(features)` as an operator: `adj @ Y` in O(N·D·cols) time, O(N·D) memory.

    Column j of F Fᵀ − I sums to f_j·Σ_i f_i − 1, so A·Y = F(Fᵀ Z) − Z + Y with Z = Y / colsum[:, None].
    """

    def __init__(self, features: Tensor):
        self.f = F.normalize(features.float().flatten(1), dim=1)  # (N, D)
        self.inv_col = 1.0 / _safe(self.f @ self.f.sum(0) - 1.0)  # (N,)

    def __matmul__(self, y: Tensor) -> Tensor:
        z = y * self.inv_col[:, None]  # (N, h)
        return self.f @ (self.f.T @ z) - z + y


class GraphConvolution(nn.Module):
    """adj @ (x W) + b (Kipf & Welling), initialized uniform in ±1/sqrt(out) as the authors do."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(out_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor, adj) -> Tensor:
        return adj @ (x @ self.weight) + self.bias


class GCN(nn.Module):
    """gc1 -> ReLU -> dropout -> gc2 -> one logit per node; also returns the hidden features."""

    def __init__(self, in_features: int, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.gc1 = GraphConvolution(in_features, hidden)
        self.gc2 = GraphConvolution(hidden, 1)
        self.dropout = dropout

    def forward(self, x: Tensor, adj, *, ax: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`(logits [N], hidden [N, h])`; `ax = adj @ x`, precomputed once since x is fixed."""
        ax = adj @ x if ax is None else ax
        h = F.relu(ax @ self.gc1.weight + self.gc1.bias)  # == gc1(x, adj): (N, h)
        logits = self.gc2(F.dropout(h, self.dropout, self.training), adj)  # (N, 1)
        return logits.squeeze(1), h


def gcn_loss(logits: Tensor, labeled: Tensor, lambda_loss: float) -> Tensor:
    """The authors' `BCEAdjLoss`: −mean log σ(z_lab) − λ·mean log(1 − σ(z_unl)) over logits `[N]`.

    Computed with log-sigmoid (no log(0)); a term with no nodes is left out.
    """
    loss = logits.new_zeros(())
    if bool(labeled.any()):
        loss = loss - F.logsigmoid(logits[labeled]).mean()
    if not bool(labeled.all()):
        loss = loss - lambda_loss * F.logsigmoid(-logits[~labeled]).mean()
    return loss


def train_gcn(features: Tensor, labeled: Tensor, *, hidden: int = 128, dropout: float = 0.3, epochs: int = 200,
              lr: float = 1e-3, weight_decay: float = 5e-4, lambda_loss: float = 1.2,
              seed: int = 0) -> tuple[GCN, Tensor, Tensor]:
    """Train a GCN on the cosine graph of `features` `[N, D]` to predict `labeled` `[N]` (bool).

    Full-graph Adam steps on the CPU; initialization and dropout from `seed` (the global RNG is
    left as it was). Returns `(gcn in eval mode, scores σ(z) [N], hidden features [N, h])`.
    """
    x = F.normalize(features.detach().float().cpu().flatten(1), dim=1)  # (N, D)
    adj = CosineAdjacency(x)
    ax = adj @ x  # (N, D)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stays untouched
        gcn = GCN(x.shape[1], hidden, dropout)
        opt = torch.optim.Adam(gcn.parameters(), lr=lr, weight_decay=weight_decay)
        gcn.train()
        for _ in range(epochs):
            opt.zero_grad()
            logits, _ = gcn(x, adj, ax=ax)
            gcn_loss(logits, labeled, lambda_loss).backward()
            opt.step()
    gcn.eval()
    with torch.no_grad():
        logits, h = gcn(x, adj, ax=ax)
    return gcn, torch.sigmoid(logits), h


def uncertain_gcn_score(scores: Tensor, margin: float = 0.1) -> Tensor:
    """−|s − margin| per node: the scores σ(z) `[N]` nearest `margin` rank first (UncertainGCN)."""
    return -(scores - margin).abs()


_GCN_RULES = {
    "subset": Int(lo=1, optional=True, expected="an int >= 1 or None (the whole pool)"), "hidden": Int(lo=1),
    "dropout": Real(lo=0, hi=1, hi_open=True), "epochs": Int(lo=1), "lr": Real(lo=0, lo_open=True),
    "weight_decay": Real(lo=0), "lambda_loss": Real(lo=0),
}


class _SequentialGCN(Strategy):
    """Builds the graph over labeled + a subset of the candidates, trains the GCN, then `_choose`.

    Options (the authors' values): `subset` unlabeled nodes drawn from `ctx.candidates` with
    `ctx.generator` (10,000; None: all), `hidden` 128, `dropout` 0.3, `epochs` 200, `lr` 1e-3,
    `weight_decay` 5e-4, `lambda_loss` 1.2. The trained GCN and its nodes are kept in `state_dict()`.
    """

    reference = ("Caramalau, Bhattarai & Kim, Sequential Graph Convolutional Network for Active "
                 "Learning, CVPR 2021")

    def __init__(self, subset: int | None = 10_000, hidden: int = 128, dropout: float = 0.3, epochs: int = 200,
                 lr: float = 1e-3, weight_decay: float = 5e-4, lambda_loss: float = 1.2):
        super().__init__()
        vars(self).update(validate(f"strategy {self.name!r}", _GCN_RULES, subset=subset, hidden=hidden,
                                   dropout=dropout, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                   lambda_loss=lambda_loss))
        self.gcn_: GCN | None = None
        self.nodes_: Tensor | None = None  # dataset indices of the graph's nodes: subset, then labeled

    @abc.abstractmethod
    def _choose(self, ctx: Context, k: int, scores: Tensor, hidden: Tensor, features: Tensor,
                n_sub: int) -> Tensor:
        """k positions among the first `n_sub` nodes (the unlabeled subset), from the GCN's
        scores `[N]`, hidden features `[N, h]` and the learner's features `[N, D]`."""

    def _select(self, ctx: Context, k: int) -> Tensor:
        cand = ctx.pool_for(k)
        m = len(cand) if self.subset is None else max(self.subset, k)
        if m < len(cand):
            cand = cand[torch.randperm(len(cand), generator=ctx.generator)[:m].sort().values]
        nodes = torch.cat([cand, ctx.labeled])
        features = ctx.embeddings(nodes, desc=f"embedding for {self.name}").flatten(1)  # (N, D)
        labeled = torch.arange(len(nodes)) >= len(cand)
        # ctx.seeded() draws the seed as in every strategy. train_gcn keeps its own fork seeding the
        # CPU generator only (`default_generator`, not `torch.manual_seed`): it is public and runs
        # without a Context, the GCN trains on the CPU whatever ctx.device is, and `torch.manual_seed`
        # under a CPU-only fork would reseed the CUDA generators and never restore them.
        with ctx.seeded() as seed:
            gcn, scores, hidden = train_gcn(features, labeled, hidden=self.hidden, dropout=self.dropout,
                                            epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                                            lambda_loss=self.lambda_loss, seed=seed)
        self.gcn_, self.nodes_ = gcn, nodes
        return cand[self._choose(ctx, k, scores, hidden, features, len(cand))]

    def state_dict(self) -> dict:
        if self.gcn_ is None:
            return {}
        return {"gcn": {k: v.detach().cpu().clone() for k, v in self.gcn_.state_dict().items()},
                "in_features": self.gcn_.gc1.weight.shape[0], "nodes": self.nodes_.clone()}

    def load_state_dict(self, state: dict) -> None:
        if not state or state.get("gcn") is None:
            self.gcn_, self.nodes_ = None, None
            return
        gcn = GCN(int(state["in_features"]), state["gcn"]["gc1.weight"].shape[1], self.dropout)
        gcn.load_state_dict(state["gcn"])
        self.gcn_, self.nodes_ = gcn.eval(), state["nodes"].clone()


@register
class UncertainGCN(_SequentialGCN):
    """Unlabeled subset nodes whose labeled-vs-unlabeled score is closest to `margin` (0.1)."""

    name = "uncertaingcn"
    description = "GCN over labeled + unlabeled features; scores nearest the labeled/unlabeled margin"

    def __init__(self, margin: float = 0.1, **options):
        super().__init__(**options)
        self.margin = check_number("margin", f"strategy {self.name!r}", margin, lo=0, hi=1)

    def _choose(self, ctx, k, scores, hidden, features, n_sub):
        return top_k(uncertain_gcn_score(scores[:n_sub], self.margin), k)


@register
class CoreGCN(_SequentialGCN):
    """k-center greedy over the GCN's hidden features, the labeled nodes as initial centers."""

    name = "coregcn"
    description = "GCN over labeled + unlabeled features; greedy k-center cover in the GCN's feature space"

    def __init__(self, kcenter_features: str = "gcn", chunk_size: int = 4096, **options):
        super().__init__(**options)
        owner = f"strategy {self.name!r}"
        self.kcenter_features = check_choice("kcenter_features", owner, kcenter_features, ("gcn", "task"))
        self.chunk_size = check_int("chunk_size", owner, chunk_size, lo=1)

    def _choose(self, ctx, k, scores, hidden, features, n_sub):
        space = hidden if self.kcenter_features == "gcn" else F.normalize(features.float(), dim=1)
        return k_center_greedy(space, torch.arange(n_sub, len(space)), k, chunk_size=self.chunk_size,
                               generator=ctx.generator)
