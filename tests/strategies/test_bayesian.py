"""MC-Dropout acquisitions (variation ratio, max entropy) and BALD."""

import math

import pytest
import torch
from torch import nn

from tinydata import TinyData
from todal import models, strategies
from todal.strategies import Context
from todal.strategies.base import top_k_with_tiebreak
from todal.strategies.bayesian import (PassStats, bald, max_entropy, stochastic_outputs, stochastic_scores,
                                       variation_ratio)
from todal.tasks import Classification

# [T=3, N=2, C=2]: sample 0's passes vote 0, 0, 1; sample 1's passes all say (0.6, 0.4)
PROBS = torch.tensor([
    [[0.9, 0.1], [0.6, 0.4]],
    [[0.8, 0.2], [0.6, 0.4]],
    [[0.3, 0.7], [0.6, 0.4]],
])


def h(*p: float) -> float:
    return -sum(q * math.log(q) for q in p)


def test_variation_ratio_by_hand():
    assert torch.allclose(variation_ratio(PROBS), torch.tensor([1 - 2 / 3, 0.0]))


def test_max_entropy_by_hand():
    assert torch.allclose(max_entropy(PROBS), torch.tensor([h(2 / 3, 1 / 3), h(0.6, 0.4)]))


def test_bald_by_hand():
    expected0 = h(2 / 3, 1 / 3) - (h(0.9, 0.1) + h(0.8, 0.2) + h(0.3, 0.7)) / 3
    assert torch.allclose(bald(PROBS), torch.tensor([expected0, 0.0]), atol=1e-6)


def test_dense_outputs_score_the_pixel_mean():
    # one sample, two pixels: pixel 0 is PROBS' sample 0, pixel 1 its sample 1 -> [T, 1, C, 1, 2]
    dense = PROBS.permute(0, 2, 1).reshape(3, 1, 2, 1, 2)
    for fn in (variation_ratio, max_entropy, bald):
        assert torch.allclose(fn(dense), fn(PROBS).mean().view(1), atol=1e-6)


def features_ctx(model, x, **kw) -> Context:
    ds = TinyData(x, torch.zeros(len(x)), 2)
    return Context(model=model, task=Classification(2), dataset=ds, labeled=torch.empty(0, dtype=torch.long),
                   unlabeled=torch.arange(len(x)), labels=torch.empty(0, dtype=torch.long),
                   generator=torch.Generator().manual_seed(0), **kw)


def disagreeing_model() -> nn.Module:
    """Dropout on the inputs, then logits = 10·x: x = (1, 1) flips class with the mask, x = 0 never moves."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(10 * torch.eye(2))
        lin.bias.zero_()
    return nn.Sequential(nn.Dropout(0.5), lin)


X = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize("name", ["bald", "mc_dropout"])
def test_picks_the_sample_whose_passes_disagree(name):
    assert strategies.get(name).select(features_ctx(disagreeing_model(), X), 1).tolist() == [1]


def test_bald_is_zero_when_dropout_is_off():
    ctx = features_ctx(nn.Sequential(nn.Linear(2, 2)), torch.randn(6, 2))
    assert torch.allclose(strategies.get("bald", p=0.0).score(ctx, ctx.unlabeled), torch.zeros(6), atol=1e-6)


def test_bald_is_zero_when_the_passes_agree():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.zero_()  # outputs = bias whatever the dropout mask
        lin.bias.copy_(torch.tensor([0.3, -0.2]))
    ctx = features_ctx(nn.Sequential(nn.Dropout(0.5), lin), torch.randn(6, 2))
    assert torch.allclose(strategies.get("bald").score(ctx, ctx.unlabeled), torch.zeros(6), atol=1e-6)
    assert torch.equal(strategies.get("mc_dropout").score(ctx, ctx.unlabeled), torch.zeros(6))


def test_a_model_without_dropout_is_left_as_it_was():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).train()
    ctx = features_ctx(model, torch.randn(6, 2))
    rng = torch.get_rng_state()
    strategies.get("bald").select(ctx, 2)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert model.training
    assert torch.equal(rng, torch.get_rng_state())  # the masks came from ctx.generator


def test_own_dropout_is_switched_on_and_batchnorm_stays_in_eval():
    torch.manual_seed(0)
    model = models.get("small_cnn", in_channels=1, num_classes=3, width=0.25, dropout=0.5)
    with torch.no_grad():
        model.head.weight.mul_(50)  # an untrained head predicts ~uniform whatever the mask
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    ctx = features_ctx(model, torch.randn(5, 1, 8, 8))
    scores = strategies.get("bald", passes=4).score(ctx, ctx.unlabeled)
    assert scores.shape == (5,) and bool((scores > 1e-5).all())
    assert torch.equal(bn.running_mean, before)


def test_head_only_dropout_runs_the_trunk_once_with_the_same_masks():
    model = models.with_dropout(models.get("small_cnn", in_channels=1, num_classes=3, width=0.25), 0.5).eval()
    model.drop.train()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.manual_seed(0)
        full = model(x.repeat(5, 1, 1, 1)).view(5, 3, 3)  # T = 5 passes as one batch, through everything
        torch.manual_seed(0)
        fast = stochastic_outputs(model, x, 5, max_batch=64)
    assert torch.allclose(full, fast, atol=1e-5)


def test_a_segmenter_runs_its_trunk_once_with_the_same_pixel_masks():
    model = models.with_dropout(models.get("seg_cnn", in_channels=1, num_classes=4, width=0.25), 0.5).eval()
    assert isinstance(model.drop, nn.Dropout)  # set where the built-in segmenter applies it, not a wrapped head
    model.drop.train()
    x = torch.randn(2, 1, 16, 16)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(1))
    with torch.no_grad():
        torch.manual_seed(0)
        full = model(x.repeat(3, 1, 1, 1)).view(3, 2, 4, 16, 16)  # T = 3 passes as one batch, through everything
        calls.clear()
        torch.manual_seed(0)
        fast = stochastic_outputs(model, x, 3, max_batch=64)
    assert not calls  # the full forward never ran: features once, then the head per pass
    assert torch.allclose(full, fast, atol=1e-5) and not torch.allclose(fast[0], fast[1])


def test_passes_are_split_to_respect_the_batch_size():
    calls = []
    lin = nn.Linear(2, 2)
    lin.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    model = nn.Sequential(nn.Dropout(0.5), lin)
    out = stochastic_outputs(model, torch.randn(6, 2), passes=4, max_batch=8)
    assert out.shape == (4, 6, 2) and max(calls) <= 8


def test_pass_statistics_add_up_over_chunks_of_passes():
    probs = torch.softmax(torch.randn(7, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0)), 2)  # dense
    stats = PassStats().add(probs[:3]).add(probs[3:5]).add(probs[5:])
    for fn in (variation_ratio, max_entropy, bald):
        assert torch.allclose(getattr(stats, fn.__name__)(), fn(probs), atol=1e-6)


@pytest.mark.parametrize("passes, max_batch", [(5, 64), (5, 4), (9, 4), (3, 1)])
def test_streamed_scores_equal_the_scores_of_all_passes(passes, max_batch):
    # the same chunks in the same order draw the same masks, so the two must agree
    model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(2, 3, 1))
    x, task = torch.randn(6, 2, 4, 4), Classification(3)
    torch.manual_seed(0)
    out = stochastic_outputs(model, x, passes, max_batch)  # (T, 6, 3, 4, 4)
    torch.manual_seed(0)
    scores, entropies = stochastic_scores(model, task, x, passes, max_batch, "bald")
    probs = torch.softmax(out, 2)
    assert out.shape == (passes, 6, 3, 4, 4)
    assert torch.allclose(scores, bald(probs), atol=1e-6)
    assert torch.allclose(entropies, max_entropy(probs), atol=1e-6)


def test_seeded_repeats_for_a_seed_and_leaves_the_global_rng_alone():
    ctx = features_ctx(nn.Linear(2, 2), torch.randn(4, 2))
    rng = torch.get_rng_state()
    with ctx.seeded() as seed:
        first = torch.rand(3)
    assert torch.equal(rng, torch.get_rng_state())
    ctx.generator.manual_seed(0)
    with ctx.seeded() as again:
        assert again == seed and torch.equal(torch.rand(3), first)
    with ctx.seeded() as later:  # each block draws a new seed
        assert later != seed


def test_variation_ratio_ties_go_to_higher_entropy():
    primary, secondary = torch.tensor([1.0, 2.0, 2.0, 0.0]), torch.tensor([0.0, 0.1, 0.5, 0.9])
    assert top_k_with_tiebreak(primary, secondary, 3).tolist() == [2, 1, 0]


def test_max_entropy_takes_a_steady_uniform_prediction_that_bald_ignores():
    # x = 0 predicts (0.5, 0.5) in every pass: maximal entropy, zero mutual information
    ctx = features_ctx(disagreeing_model(), X)
    scores = strategies.get("mc_dropout", acquisition="max_entropy").score(ctx, ctx.unlabeled)
    assert torch.allclose(scores[[0, 2]], torch.tensor(math.log(2)))
    assert strategies.get("bald").score(ctx, ctx.unlabeled)[0].abs() < 1e-6


@pytest.mark.parametrize("name, options, message", [
    ("mc_dropout", {"acquisition": "bald"}, "'acquisition' parameter of strategy 'mc_dropout' must be one of "
                                            "variation_ratio, max_entropy. Got 'bald'. Use strategy 'bald'"),
    ("bald", {"passes": 1}, "'passes' parameter of strategy 'bald' must be an int >= 2. Got 1."),
    ("mc_dropout", {"passes": 2.5}, "'passes' parameter"),
    ("bald", {"p": 1.0}, r"'p' parameter of strategy 'bald' must be a float in \[0, 1\). Got 1.0."),
    ("bald", {"acquisition": "max_entropy"}, "'acquisition' parameter of strategy 'bald'"),
])
def test_bad_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        strategies.get(name, **options)
