"""Query-by-committee: vote entropy, consensus KL, bootstrap and snapshot committees."""

import copy
import math

import pytest
import torch
from torch import nn

from tinydata import TinyData, blobs, mlp
from todal import strategies
from todal.strategies import Context
from todal.strategies.committee import _Revealed, consensus_kl, vote_entropy
from todal.tasks import Classification


def votes(*classes: int, c: int = 3) -> torch.Tensor:
    """Member probabilities `[M, 1, C]` that put 0.8 on each member's class."""
    p = torch.full((len(classes), 1, c), 0.2 / (c - 1))
    p[torch.arange(len(classes)), 0, torch.tensor(classes)] = 0.8
    return p


def test_vote_entropy_by_hand():
    assert torch.allclose(vote_entropy(votes(0, 0, 1, 1)), torch.tensor([math.log(2)]))
    three_one = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert torch.allclose(vote_entropy(votes(0, 0, 0, 1)), torch.tensor([three_one]))
    assert torch.allclose(vote_entropy(votes(0, 1, 2)), torch.tensor([math.log(3)]))
    assert torch.equal(vote_entropy(votes(2, 2, 2, 2)), torch.zeros(1))


def test_consensus_kl_by_hand():
    p = torch.tensor([[[0.8, 0.2]], [[0.2, 0.8]]])  # consensus (0.5, 0.5); both members equally far
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert torch.allclose(consensus_kl(p), torch.tensor([kl]))
    assert torch.allclose(consensus_kl(torch.tensor([[[0.3, 0.7]]] * 3)), torch.zeros(1), atol=1e-7)


def test_dense_outputs_score_the_pixel_mean():
    a, b = votes(0, 0, 1, 1), votes(0, 0, 0, 0)
    dense = torch.stack([a, b], dim=-1)  # (M, 1, C, 2 pixels)
    assert torch.allclose(vote_entropy(dense), torch.tensor([math.log(2) / 2]))
    assert torch.allclose(consensus_kl(dense), (consensus_kl(a) + consensus_kl(b)) / 2)


def linear(bias) -> nn.Module:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.copy_(torch.tensor(bias))
    return nn.Sequential(lin)


# logits = x (model) and x + (0, 1) (teacher): they disagree only on sample 1
X = torch.tensor([[5.0, 0.0], [0.5, 0.0], [0.0, 5.0], [3.0, 0.0]])


def ctx_for(model, x=X, **kw) -> Context:
    ds = TinyData(x, torch.zeros(len(x)), 2)
    return Context(model=model, task=Classification(2), dataset=ds, labeled=torch.empty(0, dtype=torch.long),
                   unlabeled=torch.arange(len(x)), labels=torch.empty(0, dtype=torch.long),
                   generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("disagreement", ["vote_entropy", "kl"])
def test_snapshot_picks_the_sample_the_members_disagree_on(disagreement):
    ctx = ctx_for(linear([0.0, 0.0]), ema_model=linear([0.0, 1.0]))
    qbc = strategies.get("qbc", committee="snapshot", disagreement=disagreement)
    assert qbc.select(ctx, 1).tolist() == [1]


def test_vote_entropy_ties_go_to_the_larger_soft_disagreement():
    # all agree on samples 0, 2, 3 (vote entropy 0); among them sample 3 is closest to the boundary
    ctx = ctx_for(linear([0.0, 0.0]), ema_model=linear([0.0, 1.0]))
    assert strategies.get("qbc", committee="snapshot").select(ctx, 2).tolist() == [1, 3]


def test_snapshot_uses_the_previous_model_from_cycle_one():
    ctx = ctx_for(linear([0.0, 0.0]), previous=lambda: linear([0.0, 1.0]), cycle=1)
    assert strategies.get("qbc", committee="snapshot").select(ctx, 1).tolist() == [1]


def test_snapshot_with_one_model_is_a_clear_error():
    # in cycle 0 "previous" is an untrained network, so it is not a member
    ctx = ctx_for(linear([0.0, 0.0]), previous=lambda: linear([0.0, 1.0]), cycle=0)
    with pytest.raises(ValueError, match="needs at least two models"):
        strategies.get("qbc", committee="snapshot").select(ctx, 1)


def test_snapshot_asks_the_loop_for_an_ema_teacher():
    assert strategies.get("qbc", committee="snapshot").needs_ema
    assert not strategies.get("qbc").needs_ema


def blobs_ctx(seed: int, labels=None) -> Context:
    ds = blobs(60, seed)
    labeled, unlabeled = torch.arange(20), torch.arange(20, 60)
    torch.manual_seed(seed)
    return Context(model=mlp(), task=Classification(3), dataset=ds, labeled=labeled, unlabeled=unlabeled,
                   labels=ds.y[labeled] if labels is None else labels, generator=torch.Generator().manual_seed(seed),
                   batch_size=16)


def test_bootstrap_members_are_trained_copies_and_the_model_is_untouched(seed):
    ctx = blobs_ctx(seed)
    before = copy.deepcopy(ctx.model.state_dict())
    qbc = strategies.get("qbc", scope="all", members=3, epochs=3, lr=0.05)
    members = qbc._bootstrap(ctx)
    assert len(members) == 3
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in before.items())
    weights = [m[0].weight for m in members]
    assert not torch.equal(weights[0], before["0.weight"])
    assert not torch.equal(weights[0], weights[1])  # different resamples, different members


def test_head_scope_members_differ_and_the_model_is_untouched(seed):
    ctx = blobs_ctx(seed)
    before = copy.deepcopy(ctx.model.state_dict())
    probs = strategies.get("qbc", members=3)._head_committee(ctx, ctx.unlabeled)
    assert probs.shape == (3, 40, 3)
    assert not torch.allclose(probs[0], probs[1])
    assert all(torch.equal(v, ctx.model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("disagreement", ["vote_entropy", "kl"])
def test_head_scope_picks_the_boundary_sample(seed, disagreement):
    # a linear model (h = x) on 3 blobs; candidates: the midpoint of two centers, and two centers
    ds = blobs(63, seed)
    centers = torch.stack([ds.x[ds.y == c].mean(0) for c in range(3)])
    ds.x[60:] = torch.stack([(centers[0] + centers[1]) / 2, centers[2], centers[0]])
    torch.manual_seed(seed)
    ctx = Context(model=nn.Sequential(nn.Linear(8, 3)), task=Classification(3), dataset=ds, labeled=torch.arange(60),
                  unlabeled=torch.arange(60, 63), labels=ds.y[:60], generator=torch.Generator().manual_seed(seed))
    # the head starts untrained here, so it gets more epochs than the fine-tuning default
    assert strategies.get("qbc", disagreement=disagreement, epochs=50).select(ctx, 1).tolist() == [60]


def test_head_scope_refuses_a_model_whose_output_is_not_its_head():
    model = nn.Sequential(nn.Linear(8, 3), nn.Tanh())
    ctx = blobs_ctx(0)
    ctx.model = model
    with pytest.raises(ValueError, match="scope='head' needs a model whose output is its last nn.Linear"):
        strategies.get("qbc").select(ctx, 2)
    assert len(strategies.get("qbc", scope="all", epochs=1).select(ctx, 2)) == 2


def test_bootstrap_trains_on_the_revealed_labels():
    ctx = blobs_ctx(0, labels=torch.full((20,), 2))
    x, y = _Revealed(ctx).batch(torch.tensor([5, 0, 19]))
    assert torch.equal(y, torch.tensor([2, 2, 2])) and torch.equal(x, ctx.dataset.x[[5, 0, 19]])


def test_bootstrap_without_labels_is_a_clear_error():
    with pytest.raises(ValueError, match="labeled set, which is empty"):
        strategies.get("qbc").select(ctx_for(linear([0.0, 0.0])), 1)


@pytest.mark.parametrize("options, message", [
    ({"disagreement": "entropy"}, "'disagreement' parameter of strategy 'qbc' must be one of vote_entropy, kl. "
                                  "Got 'entropy'."),
    ({"committee": "ensemble"}, "'committee' parameter of strategy 'qbc' must be one of bootstrap, snapshot."),
    ({"members": 1}, "'members' parameter of strategy 'qbc' must be an int >= 2. Got 1."),
    ({"epochs": 0}, r"'epochs' parameter of strategy 'qbc' must be an int >= 1 or None \(20 for scope 'head', "
                    r"2 for 'all'\). Got 0."),
    ({"scope": "trunk"}, "'scope' parameter of strategy 'qbc' must be one of head, all. Got 'trunk'."),
    ({"lr": 0}, "'lr' parameter of strategy 'qbc' must be a float > 0. Got 0."),
    ({"member": 3}, "'member' parameter of strategy 'qbc' must be a known option"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        strategies.get("qbc", **options)
