"""Checks for your own strategy: `check_strategy(MyStrategy)` runs the suite every built-in strategy passes.

    from todal.testing import check_strategy
    check_strategy(MyStrategy)                 # a Strategy subclass (built with no options)
    check_strategy("entropy")                  # a registered name
    check_strategy(MyStrategy, options={"k": 3})

It raises AssertionError naming the broken rule; None when every rule holds. The rules: a description;
`budget` distinct indices from `ctx.unlabeled` (also in the first cycle, also when a candidate subset is
scored); the same indices for the same seed; the model, the index tensors and the data left unchanged; a
budget above the pool takes the whole pool with a warning; a budget below 1 refused with a ValueError.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from .ema import EMA
from .strategies import Context, Strategy
from .strategies import get as get_strategy
from .tasks import Classification

__all__ = ["check_strategy", "SyntheticPool"]


class SyntheticPool:
    """A pool of `n` images made from their index when a batch asks for them (nothing is stored): sample i
    is a 1 x size x size image of class i % classes, a class-dependent stripe pattern plus hash noise of i.
    For measuring what a strategy's memory does as the pool grows to millions (benchmarks/pool_scale.py)."""

    name = "synthetic"

    def __init__(self, n: int, classes: int = 10, size: int = 16):
        self.n, self.num_classes, self.size = int(n), int(classes), int(size)
        self._rows = torch.arange(size, dtype=torch.float32).view(size, 1).expand(size, size).reshape(-1)
        self._pix = torch.arange(size * size, dtype=torch.int64)

    def __len__(self) -> int:
        return self.n

    def batch(self, idx) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        y = idx % self.num_classes
        noise = ((idx[:, None] * 2654435761 + self._pix[None] * 40503) % 65521).float() / 65521
        x = torch.cos(self._rows[None] * (0.3 + 0.25 * y[:, None].float())) + noise - 0.5
        return x.view(-1, 1, self.size, self.size), y

    def __getitem__(self, i: int):
        x, y = self.batch(torch.tensor([int(i)]))
        return x[0], int(y[0])


class _Blobs:
    """Three Gaussian blobs in 8 dimensions: a dataset any strategy can score."""

    num_classes, name = 3, "check_strategy"

    def __init__(self, n: int, seed: int):
        centers = torch.randn(3, 8, generator=torch.Generator().manual_seed(1234)) * 3
        self.y = torch.arange(n) % 3
        self.x = centers[self.y] + torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
        self.classes = ["a", "b", "c"]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        return self.x[idx], self.y[idx]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _context(seed: int, n_labeled: int = 30, cycle: int = 1, subset: int | None = None) -> Context:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ds = _Blobs(100, seed)
        perm = torch.randperm(100, generator=torch.Generator().manual_seed(seed))
        labeled, unlabeled = perm[:n_labeled].sort().values, perm[n_labeled:].sort().values
        model, previous, teacher = _mlp(), _mlp(), EMA(_mlp()).model
    candidates = None if subset is None else unlabeled[torch.randperm(len(unlabeled),
                                                                      generator=torch.Generator().manual_seed(seed))[:subset]]
    return Context(model=model, task=Classification(3), dataset=ds, labeled=labeled, unlabeled=unlabeled,
                   labels=ds.y[labeled], generator=torch.Generator().manual_seed(seed), cycle=cycle,
                   ema_model=teacher, previous=lambda: copy.deepcopy(previous), batch_size=16,
                   candidates=candidates)


def check_strategy(strategy: str | type[Strategy], *, options: dict | None = None, seeds=(0, 1)) -> None:
    """Run every rule of the strategy contract on small synthetic pools; AssertionError names the first broken one."""
    options = dict(options or {})
    if isinstance(strategy, Strategy):
        raise TypeError("check_strategy needs the class or the registered name (it builds fresh instances): "
                        f"pass {type(strategy).__name__}, not an instance.")

    def fresh() -> Strategy:
        return get_strategy(strategy, **options) if isinstance(strategy, str) else strategy(**options)

    label = strategy if isinstance(strategy, str) else strategy.__name__
    first = fresh()
    _require(bool(first.name), label, "has a non-empty `name`")
    _require(bool(first.description), label, "has a one-line `description`")

    def select(seed: int, budget: int = 7, **kw) -> tuple[Tensor, Context]:
        ctx = _context(seed, **kw)
        return fresh().select(ctx, budget), ctx

    for seed in seeds:
        for kw in ({}, {"cycle": 0}, {"subset": 40}):
            chosen, ctx = select(seed, **kw)
            _require(isinstance(chosen, Tensor) and chosen.dtype == torch.long, label,
                     f"returns a LongTensor ({kw or 'cycle 1'})")
            _require(len(chosen) == 7 and len(chosen.unique()) == 7, label,
                     f"returns `budget` distinct indices ({kw or 'cycle 1'}): got {chosen.tolist()}")
            _require(set(chosen.tolist()) <= set(ctx.unlabeled.tolist()), label,
                     f"picks only unlabeled samples ({kw or 'cycle 1'})")
        _require(torch.equal(select(seed)[0], select(seed)[0]), label,
                 "picks the same samples for the same seed (draw randomness from ctx.generator)")

        ctx = _context(seed)
        before = ([p.detach().clone() for p in ctx.model.parameters()], ctx.labeled.clone(), ctx.unlabeled.clone(),
                  ctx.dataset.x.clone(), ctx.dataset.y.clone())
        fresh().select(ctx, 5)
        _require(all(torch.equal(a, b) for a, b in zip(before[0], ctx.model.parameters())), label,
                 "leaves the model's parameters unchanged (train copies)")
        _require(torch.equal(before[1], ctx.labeled) and torch.equal(before[2], ctx.unlabeled), label,
                 "leaves ctx.labeled and ctx.unlabeled unchanged")
        _require(torch.equal(before[3], ctx.dataset.x) and torch.equal(before[4], ctx.dataset.y), label,
                 "leaves the dataset unchanged")

    ctx = _context(seeds[0], n_labeled=95)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = fresh().select(ctx, 9)
    _require(sorted(chosen.tolist()) == sorted(ctx.unlabeled.tolist()), label,
             "takes the whole pool when the budget exceeds it")
    _require(any("exceeds the 5 unlabeled samples" in str(w.message) for w in caught), label,
             "warns when the budget exceeds the pool")
    try:
        fresh().select(_context(seeds[0]), 0)
    except ValueError:
        pass
    else:
        _require(False, label, "refuses a budget below 1 with a ValueError")


def _require(ok: bool, label: str, rule: str) -> None:
    if not ok:
        raise AssertionError(f"strategy {label!r} breaks the contract: it must be that it {rule}.")
