"""The check suite every registered strategy passes (STYLE principle 4)."""

import copy

import pytest
import torch

from tinydata import blobs, mlp
from todal import strategies
from todal.ema import EMA
from todal.strategies import Context
from todal.tasks import Classification


def make_ctx(seed: int, n_labeled: int = 30, cycle: int = 1) -> Context:
    torch.manual_seed(seed)
    ds = blobs(100, seed)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(seed))
    labeled, unlabeled = perm[:n_labeled].sort().values, perm[n_labeled:].sort().values
    model, previous = mlp(), mlp()
    return Context(model=model, task=Classification(3), dataset=ds, labeled=labeled, unlabeled=unlabeled,
                   labels=ds.y[labeled], generator=torch.Generator().manual_seed(seed), cycle=cycle,
                   ema_model=EMA(mlp()).model, previous=lambda: copy.deepcopy(previous), batch_size=16)


def run(name: str, seed: int, budget: int = 7, **ctx_kw):
    strategy = strategies.get(name)
    ctx = make_ctx(seed, **ctx_kw)
    return strategy.select(ctx, budget), ctx


@pytest.mark.parametrize("name", strategies.names())
def test_returns_budget_distinct_unlabeled_indices(name, seed):
    chosen, ctx = run(name, seed)
    assert chosen.dtype == torch.long and len(chosen) == 7 and len(chosen.unique()) == 7
    assert set(chosen.tolist()) <= set(ctx.unlabeled.tolist())


@pytest.mark.parametrize("name", strategies.names())
def test_is_deterministic_for_a_seed(name, seed):
    assert torch.equal(run(name, seed)[0], run(name, seed)[0])


@pytest.mark.parametrize("name", strategies.names())
def test_does_not_mutate_its_inputs(name, seed):
    ctx = make_ctx(seed)
    before = ([p.clone() for p in ctx.model.parameters()], ctx.labeled.clone(), ctx.unlabeled.clone(),
              ctx.dataset.x.clone())
    strategies.get(name).select(ctx, 5)
    assert all(torch.equal(a, b) for a, b in zip(before[0], ctx.model.parameters()))
    assert torch.equal(before[1], ctx.labeled) and torch.equal(before[2], ctx.unlabeled)
    assert torch.equal(before[3], ctx.dataset.x)


@pytest.mark.parametrize("name", strategies.names())
def test_budget_above_the_pool_takes_all_with_a_warning(name, seed):
    ctx = make_ctx(seed, n_labeled=95)
    with pytest.warns(UserWarning, match="exceeds the 5 unlabeled samples"):
        chosen = strategies.get(name).select(ctx, 9)
    assert sorted(chosen.tolist()) == sorted(ctx.unlabeled.tolist())


@pytest.mark.parametrize("name", strategies.names())
def test_bad_budget_is_refused(name):
    with pytest.raises(ValueError, match="'budget' parameter"):
        strategies.get(name).select(make_ctx(0), 0)


@pytest.mark.parametrize("name", strategies.names())
def test_has_a_description_and_reference(name):
    cls = type(strategies.get(name))
    assert cls.description and cls.reference


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown strategy 'codd'. Valid: random, entropy"):
        strategies.get("codd")


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="'spce' parameter of strategy 'random'"):
        strategies.get("random", spce="probs")
