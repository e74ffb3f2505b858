"""VAAL, SRAAL and TA-VAAL: the pure losses by hand, a separable pool, inputs, state, options."""

import io
import math
import warnings

import pytest
import torch
from torch import nn

from tinydata import TinyData, mlp
from todal import strategies
from todal.strategies import Context
from todal.strategies.adversarial import (adversary_loss, discriminator_loss, kl_divergence, online_uncertainty,
                                          vae_loss)
from todal.tasks import Classification

FAST = {"iterations": 3, "width": 4, "disc_width": 8, "batch_size": 8}


def ctx_for(x: torch.Tensor, labeled: torch.Tensor, model: nn.Module, seed: int = 0, classes: int = 3) -> Context:
    y = torch.arange(len(x)) % classes
    ds = TinyData(x, y, classes)
    unl = torch.tensor(sorted(set(range(len(x))) - set(labeled.tolist())))
    return Context(model=model, task=Classification(classes), dataset=ds, labeled=labeled, unlabeled=unl,
                   labels=ds.y[labeled], generator=torch.Generator().manual_seed(seed), batch_size=16)


def select(name: str, ctx: Context, k: int, **options):
    with warnings.catch_warnings():  # TA-VAAL's untrained ranker warns; that is LL4AL's business
        warnings.simplefilter("ignore", UserWarning)
        strategy = strategies.get(name, **options)
        return strategy.select(ctx, k), strategy


# ---------------------------------------------------------------- pure functions


def test_kl_of_a_known_gaussian():
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    # per dim ½(μ² + σ² - 1 - log σ²): ½(1 + 1 - 1 - 0) = 0.5 and ½(0 + 4 - 1 - log 4)
    per_dim = torch.tensor([0.5, 0.5 * (3.0 - math.log(4.0))])
    assert torch.allclose(kl_divergence(mu, logvar), per_dim.sum())
    assert torch.allclose(kl_divergence(mu, logvar, "mean"), per_dim.mean())
    assert kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0.0


def test_vae_loss_is_mean_squared_error_plus_beta_kl():
    x, recon = torch.zeros(2, 3), torch.full((2, 3), 2.0)  # MSE 4
    mu, logvar = torch.ones(2, 1), torch.zeros(2, 1)  # KL ½ per sample, 1 summed
    assert torch.allclose(vae_loss(x, recon, mu, logvar, beta=3.0), torch.tensor(4.0 + 3.0))
    assert torch.allclose(vae_loss(x, recon, mu, logvar, beta=3.0, kl_reduction="mean"), torch.tensor(4.0 + 1.5))


def test_bce_terms_by_hand():
    zero = torch.zeros(4, 1)
    assert torch.allclose(discriminator_loss(zero, zero), torch.tensor(2 * math.log(2)))
    assert torch.allclose(adversary_loss(zero, zero), torch.tensor(2 * math.log(2)))
    lab, unl = torch.full((3, 1), math.log(3.0)), torch.full((3, 1), math.log(0.25))  # D = 0.75 and 0.2
    assert torch.allclose(discriminator_loss(lab, unl), torch.tensor(-math.log(0.75) - math.log(0.8)), atol=1e-6)
    assert torch.allclose(adversary_loss(lab, unl), torch.tensor(-math.log(0.75) - math.log(0.2)), atol=1e-6)
    state = torch.tensor([0.25, 0.25, 0.25])  # SRAAL's soft target
    expected = -math.log(0.75) - (0.25 * math.log(0.2) + 0.75 * math.log(0.8))
    assert torch.allclose(discriminator_loss(lab, unl, state), torch.tensor(expected), atol=1e-6)


def test_online_uncertainty_by_hand():
    p = torch.tensor([
        [1.0, 0.0, 0.0, 0.0],  # certain: 0
        [0.25, 0.25, 0.25, 0.25],  # uniform: 1 - 1/C
        [0.7, 0.1, 0.1, 0.1],  # its own least-variance vector: ratio 1, ind = 1 - 0.7
        [0.5, 0.5, 0.0, 0.0],  # Var = 1/16, minVar = (1/16 + 3/144)/4 = 1/48, ratio 1/3, ind = 1 - 0.5/3
    ])
    assert torch.allclose(online_uncertainty(p), torch.tensor([0.0, 0.75, 0.3, 1 - 0.5 / 3]), atol=1e-6)
    dense = torch.stack([p[0], p[1]], -1).unsqueeze(0)  # (1, C, 2): two pixels, certain and uniform
    assert torch.allclose(online_uncertainty(dense), torch.tensor([0.375]))


# ---------------------------------------------------------------- behaviour


def blob_pool(seed: int):
    """40 points of blob A (20 labeled) and 40 of a far blob B, all unlabeled."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(40, 8, generator=g)
    b = torch.randn(40, 8, generator=g) + 12.0
    return torch.cat([a, b]), torch.arange(0, 40, 2)


def test_vaal_discriminator_separates_a_separable_pool_and_picks_the_unlabeled_looking_part(seed):
    x, labeled = blob_pool(seed)
    ctx = ctx_for(x, labeled, mlp(), seed)
    chosen, strategy = select("vaal", ctx, 10, iterations=60, width=8, disc_width=32, batch_size=20)
    assert all(i >= 40 for i in chosen.tolist())  # all from blob B
    nets = strategy.networks()
    with torch.no_grad():
        d = torch.sigmoid(nets["discriminator"](nets["vae"].encode(x)[0])).flatten()
    assert d[40:].mean() < d[labeled].mean() - 0.3


def test_sraal_prefers_the_unlabeled_blob_the_model_is_unsure_of(seed):
    """Labeled blob A; unlabeled far blobs B (uniform prediction, state 1/3) and C (confident,
    state ~1, relabeled as if labeled): SRAAL queries B, where VAAL could not tell them apart."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(20, 8, generator=g) for _ in range(3))
    b[:, 0], b[:, 1] = 0.0, b[:, 1] + 12.0  # logit 0 for every class
    c[:, 0], c[:, 2] = 3.0 + c[:, 0].abs(), c[:, 2] + 12.0  # logit >= 15 for class 0
    a[:, 0] = 0.0
    model = nn.Linear(8, 3, bias=False)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 0] = 5.0
    ctx = ctx_for(torch.cat([a, b, c]), torch.arange(20), model, seed)
    chosen, _ = select("sraal", ctx, 10, iterations=60, width=8, disc_width=32, batch_size=20, sti_weight=0.0)
    assert all(20 <= i < 40 for i in chosen.tolist())


@pytest.mark.parametrize("name", ["vaal", "sraal", "ta_vaal"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (2, 5, 7)])
def test_image_inputs_of_any_size(name, shape):
    x = torch.rand(30, *shape, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    chosen, strategy = select(name, ctx_for(x, torch.arange(10), model), 5, **FAST)
    assert len(chosen.unique()) == 5 and min(chosen.tolist()) >= 10
    size = 16 if max(shape[1:]) <= 16 else 32  # the default image_size
    assert strategy.networks()["vae"].prepare(x[:2]).shape == (2, shape[0], size, size)


@pytest.mark.parametrize("name", ["vaal", "sraal", "ta_vaal"])
def test_flat_inputs_use_an_mlp_vae(name):
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    chosen, strategy = select(name, ctx_for(x, torch.arange(10), mlp()), 5, **FAST)
    assert len(chosen) == 5 and strategy.state_dict()
    assert not any(isinstance(m, nn.Conv2d) for m in strategy.networks().modules())


def test_sraal_relabels_unlabeled_targets_with_one_minus_the_indicator():
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    ctx = ctx_for(x, torch.arange(10), mlp())
    strategy = strategies.get("sraal", **FAST)
    side = strategy._side(ctx, ctx.unlabeled)
    with torch.no_grad():
        probs = torch.softmax(ctx.model(x[ctx.unlabeled]), 1)  # (20, 3)
    assert torch.allclose(side["state_u"], 1 - online_uncertainty(probs), atol=1e-6)
    assert torch.equal(side["y_l"], ctx.labels)


def test_ta_vaal_composes_ll4al():
    strategy = strategies.get("ta_vaal", margin=0.5, **FAST)
    assert strategy.objectives() == strategy.ranker.objectives() and strategy.ranker.objective.margin == 0.5
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        strategy.select(ctx_for(x, torch.arange(10), mlp()), 4)
    assert strategy.state_dict()["adversarial"]["arch"]["disc_extra"] == 1
    assert set(strategy.state_dict()) == {"adversarial", "ranker"}


def test_ta_vaal_discriminator_reads_the_predicted_loss(seed):
    """Inputs from one distribution, so only the ranker's r tells labeled from unlabeled: samples
    with a predicted loss never seen among the labeled ones look unlabeled."""
    x = torch.randn(60, 8, generator=torch.Generator().manual_seed(seed))
    strategy = strategies.get("ta_vaal", iterations=200, width=8, disc_width=32, batch_size=20)
    strategy.ranker.predicted_loss = lambda ctx, idx: (idx >= 40).float() * 5.0
    chosen = strategy.select(ctx_for(x, torch.arange(20), mlp(), seed), 10)
    assert all(i >= 40 for i in chosen.tolist())


def test_a_single_labeled_and_a_single_unlabeled_sample_train():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # 16x16: the encoder ends at 1x1
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    chosen, _ = select("vaal", ctx_for(x, torch.tensor([0]), model), 1, **FAST)
    assert chosen.tolist() == [1]


def test_no_labeled_samples_is_refused():
    x = torch.randn(10, 8)
    ctx = ctx_for(x, torch.empty(0, dtype=torch.long), mlp())
    with pytest.raises(ValueError, match="needs labeled samples"):
        strategies.get("vaal", **FAST).select(ctx, 2)


@pytest.mark.parametrize("name", ["vaal", "sraal", "ta_vaal"])
def test_state_dict_round_trip(name):
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    _, strategy = select(name, ctx_for(x, torch.arange(10), model), 5, **FAST)
    buf = io.BytesIO()
    torch.save(strategy.state_dict(), buf)
    buf.seek(0)
    restored = strategies.get(name, **FAST)
    restored.load_state_dict(torch.load(buf))
    a, b = strategy.networks(), restored.networks()
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    fresh = strategies.get(name)
    fresh.load_state_dict({})
    assert fresh.networks() is None


@pytest.mark.parametrize("options, match", [
    ({"image_size": 20}, "'image_size' parameter of strategy 'vaal' must be None or a multiple of 16"),
    ({"iterations": 0}, "'iterations' parameter of strategy 'vaal' must be an int >= 1 or None. Got 0"),
    ({"batch_size": 2.5}, "'batch_size' parameter of strategy 'vaal' must be an int >= 1"),
    ({"lr": 0}, "'lr' parameter of strategy 'vaal' must be a float > 0"),
    ({"beta": -1}, "'beta' parameter of strategy 'vaal' must be a float >= 0"),
    ({"itrations": 5}, "'itrations' parameter of strategy 'vaal'"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        strategies.get("vaal", **options)


def test_bad_sraal_and_ta_vaal_options_are_refused():
    with pytest.raises(ValueError, match="'sti_weight' parameter of strategy 'sraal' must be a float >= 0"):
        strategies.get("sraal", sti_weight=-1.0)
    with pytest.raises(ValueError, match="'width' parameter of strategy 'ta_vaal'"):
        strategies.get("ta_vaal", width=0)
