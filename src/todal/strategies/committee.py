"""Query-by-committee: pick the samples a committee of models disagrees on most.

Disagreement over member probabilities `[M, N, C, *S]` (pixel means for dense outputs):

    vote entropy   -sum_c V(c)/M · log(V(c)/M)        V(c): members whose argmax is c (Dagan & Engelson 1995)
    consensus KL   mean_m KL(p_m || mean_m' p_m')      (McCallum & Nigam 1998)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TodalError, check_choice, check_int, check_number
from ..inference import eval_mode, fetch
from ..models import head_of
from ..train import TrainConfig, fit
from . import register
from .base import Context, RowWriter, ScoreStrategy, per_sample_mean
from .badge import outputs_and_features


def vote_entropy(probs: Tensor) -> Tensor:
    """`[M, N, C, *S]` -> `[N]`: entropy of the members' hard votes."""
    m, c = probs.shape[0], probs.shape[2]
    share = F.one_hot(probs.argmax(2), c).sum(0).to(probs.dtype) / m  # (N, *S, C)
    return per_sample_mean(-(share * share.clamp_min(1e-12).log()).sum(-1))


def consensus_kl(probs: Tensor) -> Tensor:
    """`[M, N, C, *S]` -> `[N]`: mean over members of KL(p_m || consensus), consensus = mean_m p_m."""
    consensus = probs.mean(0, keepdim=True)
    kl = (probs * (probs.clamp_min(1e-12).log() - consensus.clamp_min(1e-12).log())).sum(2)  # (M, N, *S)
    return per_sample_mean(kl.mean(0))


DISAGREEMENTS = {"vote_entropy": vote_entropy, "kl": consensus_kl}


class _Revealed:
    """The dataset's inputs with the labels revealed so far (`ctx.labels`), for `fit()`; exposes the
    dataset's `train_pair_transform` (image and mask augmented together), if it has one."""

    def __init__(self, ctx: Context):
        self.dataset, self.labels = ctx.dataset, ctx.labels
        pair = getattr(ctx.dataset, "train_pair_transform", None)
        if pair is not None:
            self.train_pair_transform = pair
        self.pos = torch.full((len(ctx.dataset),), -1, dtype=torch.long)
        self.pos[ctx.labeled] = torch.arange(len(ctx.labeled))

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        return fetch(self.dataset, idx)[0], self.labels[self.pos[idx]]


@register
class QBC(ScoreStrategy):
    """Query-by-committee: the samples the committee's members disagree on most.

    committee="bootstrap" (default): `members` copies of the current model, each fine-tuned for
    `epochs` epochs (SGD, `lr`, momentum 0.9, weight decay 5e-4, batch 128) on its own bootstrap
    resample of the labeled set (query by bagging, Abe & Mamitsuka 1998; Kuo et al. used an
    ensemble of separately trained networks). The default because it works in any run and its
    members differ by the data they saw, which is what disagreement is meant to measure.
      scope="head" (default): only the final linear layer is fine-tuned (20 epochs), on features
        read once, so the whole committee costs one pass over the pool, like entropy sampling.
        Needs a model whose output is its last `nn.Linear` applied to that layer's input (checked).
      scope="all": whole-network copies (2 epochs, the training augmentation): `members` passes
        over the pool plus `members` x `epochs` epochs on the labeled set, several times the cost.
        On a GPU its selections repeat only as far as cuDNN's backward pass does (as the loop's own
        training does). Members train with the dataset's paired image+mask augmentation when it
        has one (segmentation), else with `ctx.augment`.
      Dense outputs (segmentation, `[N, C, H, W]`) always use scope="all": a per-pixel head on
        cached features would hold the whole pool's per-pixel features. One candidate's output
        decides, before any pool-wide work; the scoring then keeps one batch of outputs per member.
    A full ensemble trained from scratch, as Kuo et al. did, would cost `members` cycles of training.
    committee="snapshot": no training; the models the run already has: the current one, the
    previous cycle's (from cycle 1 on) and the EMA teacher (kept by ActiveLoop when this is chosen).
    They are close to each other, so this is the cheap, weaker committee.
    `ctx.model` itself is never trained (copies are). Ties (vote entropy takes few values for a
    small committee) go to the higher consensus KL.
    """

    shardable = False  # trains its own selector on every feature: rank 0 alone in data-parallel runs

    name = "qbc"
    description = "largest disagreement among a committee of models (vote entropy or consensus KL)"
    reference = ("Kuo et al., Cost-Sensitive Active Learning for Intracranial Hemorrhage Detection, MICCAI 2018; "
                 "Seung, Opper, Sompolinsky, Query by Committee, COLT 1992")

    def __init__(self, disagreement: str = "vote_entropy", committee: str = "bootstrap", members: int = 4,
                 scope: str = "head", epochs: int | None = None, lr: float = 0.01, **unknown):
        super().__init__(**unknown)
        owner = f"strategy {self.name!r}"
        self.disagreement = check_choice("disagreement", owner, disagreement, DISAGREEMENTS)
        self.committee = check_choice("committee", owner, committee, ("bootstrap", "snapshot"))
        self.scope = check_choice("scope", owner, scope, ("head", "all"))
        self.members = check_int("members", owner, members, lo=2)
        self.epochs = check_int("epochs", owner, epochs, lo=1, optional=True,
                                expected="an int >= 1 or None (20 for scope 'head', 2 for 'all')")
        self.lr = check_number("lr", owner, lr, lo=0, lo_open=True)
        # ActiveLoop keeps an EMA teacher only for strategies that ask for one.
        self.needs_ema = committee == "snapshot"

    def _epochs(self, scope: str) -> int:
        return self.epochs if self.epochs is not None else (20 if scope == "head" else 2)

    def _scope(self, ctx: Context, candidates: Tensor) -> str:
        """`scope`, except "all" for dense outputs (judged from one candidate's output)."""
        if self.scope == "all" or len(candidates) == 0:
            return self.scope
        return "all" if ctx.outputs(ctx.model, candidates[:1]).dim() > 2 else "head"

    def _member_seeds(self, ctx: Context) -> list[torch.Generator]:
        if len(ctx.labeled) == 0:
            raise TodalError("Strategy 'qbc' with committee='bootstrap' fine-tunes on the labeled set, "
                             "which is empty; label some samples first or use committee='snapshot'.")
        return [torch.Generator().manual_seed(int(torch.randint(0, 2**63 - 1, (1,), generator=ctx.generator)))
                for _ in range(self.members)]

    def _bootstrap(self, ctx: Context) -> list[nn.Module]:
        """Whole-network members (scope 'all')."""
        gens = self._member_seeds(ctx)
        n = len(ctx.labeled)
        cfg = TrainConfig(epochs=self._epochs("all"), batch_size=min(128, n), lr=self.lr, lr_drop_at=1.0)
        data = _Revealed(ctx)
        committee = []
        for g in gens:
            resample = ctx.labeled[torch.randint(n, (n,), generator=g)]
            member = copy.deepcopy(ctx.model)
            with ctx.seeded():
                fit(member, ctx.task, data, resample, cfg=cfg, generator=g, device=ctx.device,
                    transform=None if hasattr(data, "train_pair_transform") else ctx.augment)
            committee.append(member)
        return committee

    def _head_committee(self, ctx: Context, candidates: Tensor) -> Tensor:
        """Member probabilities `[M, n, C]` of heads fine-tuned on cached features (scope 'head')."""
        gens = self._member_seeds(ctx)
        n = len(ctx.labeled)
        mismatch = TodalError("Strategy 'qbc' with scope='head' needs a model whose output is its last "
                              "nn.Linear applied to that layer's input; use scope='all' for this model.")
        try:
            head = copy.deepcopy(head_of(ctx.model)).cpu().float()
        except TodalError:
            raise mismatch from None
        _, h_lab = outputs_and_features(ctx, ctx.model, ctx.labeled, "qbc labeled features")
        out, h = outputs_and_features(ctx, ctx.model, candidates, f"scoring {self.name}")  # checks the head
        with torch.no_grad():
            if out.dim() != 2 or not torch.allclose(head(h), out, rtol=1e-4, atol=1e-4):
                raise mismatch
        probs = []
        for g in gens:
            pick = torch.randint(n, (n,), generator=g)
            x, y = h_lab[pick], ctx.labels[pick]
            member = copy.deepcopy(head)
            opt = torch.optim.SGD(member.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
            for _ in range(self._epochs("head")):
                for idx in torch.randperm(n, generator=g).split(128):
                    loss = ctx.task.loss(member(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                probs.append(ctx.task.probs(member(h)))
        return torch.stack(probs)

    def _snapshot(self, ctx: Context) -> list[nn.Module]:
        committee = [ctx.model]
        if ctx.previous is not None and ctx.cycle > 0:  # in cycle 0 "previous" is an untrained net
            committee.append(ctx.previous_model)
        if ctx.ema_model is not None:
            committee.append(ctx.ema_model)
        if len(committee) < 2:
            raise TodalError("Strategy 'qbc' with committee='snapshot' needs at least two models, but the "
                             "context has only the current one; pass ema_model= or previous= (from cycle 1) "
                             "to the Context, or use committee='bootstrap'.")
        return committee

    def _scores(self, ctx: Context, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """`[n]` disagreement of `candidates` and `[n]` consensus KL (the tie-break)."""
        score_fn = DISAGREEMENTS[self.disagreement]
        if self.committee == "bootstrap" and self._scope(ctx, candidates) == "head":
            probs = self._head_committee(ctx, candidates)  # (M, n, C)
            return score_fn(probs), consensus_kl(probs)
        committee = self._bootstrap(ctx) if self.committee == "bootstrap" else self._snapshot(ctx)
        scores, kls = RowWriter(len(candidates)), RowWriter(len(candidates))
        with torch.no_grad(), eval_mode(*committee):
            for _, x in ctx.batches(candidates, f"scoring {self.name}"):
                probs = torch.stack([ctx.task.probs(m(x).float()) for m in committee])  # (M, B, C, *S)
                scores.add(score_fn(probs))
                kls.add(consensus_kl(probs))
        return scores.result(), kls.result()

    def score(self, ctx: Context, candidates: Tensor) -> Tensor:
        return self._scores(ctx, candidates)[0]

    def score_with_tiebreak(self, ctx: Context, candidates: Tensor) -> tuple[Tensor, Tensor]:
        return self._scores(ctx, candidates)  # ties of the vote entropy go to the higher consensus KL
