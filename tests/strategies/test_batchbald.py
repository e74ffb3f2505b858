"""BatchBALD: the pure selection against the authors' reimplementation (batchbald_redux), consistent MC dropout,
a crafted pool where BALD and BatchBALD differ, and the options."""

import math

import pytest
import torch
from torch import nn

from tinydata import TinyData
from todal import models, strategies
from todal.models import dropout_active
from todal.strategies import Context
from todal.strategies.batchbald import batchbald_select, conditional_entropies, configurations, joint_entropies
from todal.strategies.bayesian import bald, stochastic_outputs
from todal.tasks import Classification

# the authors' reimplementation, test-only: installed with --no-deps (see the dev extra in pyproject.toml)
from batchbald_redux.batchbald import get_batchbald_batch


def random_log_probs(n: int, k: int, c: int, seed: int) -> torch.Tensor:
    """`[N, K, C]` log-probabilities whose passes disagree (a per-sample mean plus per-pass noise)."""
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, 1, c, generator=g) + 2 * torch.randn(n, k, c, generator=g), dim=2)


def reference(log_probs: torch.Tensor, k: int, num_samples: int, seed: int) -> tuple[list[int], torch.Tensor]:
    """batchbald_redux's picks and scores, in float64; its sampling draws from torch's global RNG, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        batch = get_batchbald_batch(log_probs.double(), k, num_samples, dtype=torch.double)
    return batch.indices, torch.tensor(batch.scores, dtype=torch.float64)


@pytest.mark.parametrize("n, passes, classes, k", [(40, 10, 2, 6), (50, 10, 3, 5), (60, 8, 4, 4), (200, 20, 10, 3)])
def test_exact_regime_equals_the_reference(n, passes, classes, k, seed):
    log_probs = random_log_probs(n, passes, classes, seed)
    assert classes ** (k - 1) <= 1000  # every joint configuration of the picks is enumerated
    ref_picks, ref_scores = reference(log_probs, k, 1000, seed)
    picks, scores = batchbald_select(log_probs, k, num_samples=1000, generator=torch.Generator().manual_seed(seed))
    assert picks.tolist() == ref_picks
    assert torch.allclose(scores, ref_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n, passes, classes, k, num_samples", [(60, 8, 4, 8, 200), (200, 20, 10, 6, 1000),
                                                                 (80, 10, 3, 10, 100)])
def test_sampled_regime_equals_the_reference_drawing_the_same_configurations(n, passes, classes, k, num_samples,
                                                                              seed):
    # both draw the configurations with one torch.multinomial per step over the same probabilities: the same
    # seed (ours through the generator, the reference's through the global RNG) gives the same samples
    log_probs = random_log_probs(n, passes, classes, seed)
    assert classes ** (k - 1) > num_samples  # the last steps sample
    ref_picks, ref_scores = reference(log_probs, k, num_samples, seed)
    picks, scores = batchbald_select(log_probs, k, num_samples=num_samples,
                                     generator=torch.Generator().manual_seed(seed))
    assert picks.tolist() == ref_picks
    assert torch.allclose(scores, ref_scores, rtol=0, atol=1e-6)


def test_sampled_joint_entropy_is_an_unbiased_estimate_of_the_exact_one():
    log_probs = random_log_probs(12, 10, 3, 0)
    picked, cand = log_probs[:4].exp(), log_probs[4:]  # 3^4 = 81 configurations of the picks
    exact = joint_entropies(cand, *configurations(picked, 81, torch.Generator()))
    assert torch.equal(configurations(picked, 81, torch.Generator())[1], torch.ones(81, dtype=torch.float64))
    estimates = torch.stack([joint_entropies(cand, *configurations(picked, 80, torch.Generator().manual_seed(s)))
                             for s in range(200)])  # 80 sampled configurations each
    assert estimates.shape == (200, 8) and bool((estimates.std(0) > 0.01).all())  # each one is noisy...
    assert torch.allclose(estimates.mean(0), exact, rtol=0, atol=4 * float(estimates.std(0).max()) / 200**0.5)


def test_first_pick_is_balds_and_its_score_the_mutual_information():
    log_probs = random_log_probs(30, 10, 4, 0)
    picks, scores = batchbald_select(log_probs, 3, generator=torch.Generator())
    mi = bald(log_probs.exp().transpose(0, 1))
    assert int(picks[0]) == int(mi.argmax())
    assert math.isclose(float(scores[0]), float(mi.max()), abs_tol=1e-5)
    assert bool((scores.diff() >= -1e-9).all())  # a grows with the batch (mutual information of more labels)


def test_chunks_and_device_do_not_change_the_answer():
    log_probs = random_log_probs(70, 6, 3, 1)
    whole = batchbald_select(log_probs, 8, num_samples=30, generator=torch.Generator().manual_seed(0))
    for chunk in (1, 7, 64):
        picks, scores = batchbald_select(log_probs, 8, num_samples=30, generator=torch.Generator().manual_seed(0),
                                         chunk=chunk, device="cpu")
        assert torch.equal(picks, whole[0]) and torch.allclose(scores, whole[1], rtol=0, atol=1e-12)


def test_same_generator_seed_same_picks_in_the_sampled_regime(seed):
    log_probs = random_log_probs(100, 10, 5, seed)

    def pick(s):
        return batchbald_select(log_probs, 10, num_samples=50, generator=torch.Generator().manual_seed(s))

    rng = torch.get_rng_state()
    assert torch.equal(pick(seed)[0], pick(seed)[0]) and torch.equal(pick(seed)[1], pick(seed)[1])
    assert torch.equal(rng, torch.get_rng_state())  # nothing drawn from the global RNG


def test_conditional_entropies_by_hand():
    p = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])  # one sample, K = 2 passes
    assert torch.allclose(conditional_entropies(p.log()), torch.tensor([math.log(2) / 2], dtype=torch.float64))


# ---- crafted: two duplicate, highly uncertain points ------------------------------------------------------------

def crafted_log_probs() -> torch.Tensor:
    """K = 4 passes, C = 2. A (twice) splits the passes {0, 1} | {2, 3} confidently; B splits them {0, 2} | {1, 3},
    less confidently (smaller BALD); D agrees in every pass."""
    def passes(*p0):
        p = torch.tensor(p0)
        return torch.stack([p, 1 - p], 1).log()

    a = passes(0.99, 0.99, 0.01, 0.01)
    return torch.stack([a, a, passes(0.9, 0.1, 0.9, 0.1), passes(0.99, 0.99, 0.99, 0.99)])


def test_crafted_bald_takes_both_duplicates_batchbald_one_then_the_other_split():
    log_probs = crafted_log_probs()
    assert bald(log_probs.exp().transpose(0, 1)).topk(2).indices.sort().values.tolist() == [0, 1]
    picks, scores = batchbald_select(log_probs, 2, generator=torch.Generator())
    assert picks.tolist() == [0, 2]
    mi_b = math.log(2) - (-0.9 * math.log(0.9) - 0.1 * math.log(0.1))  # B is independent of A: its BALD adds up
    assert math.isclose(float(scores[1] - scores[0]), mi_b, abs_tol=1e-6)


def crafted_ctx(seed: int = 0, **kw) -> Context:
    """Dropout on 2 inputs, logit_0 = 20 (x_0 + x_1) - 10, logit_1 = 0: sample (1, 0) is a confident coin flip on
    mask bit 0 (twice in the pool), (0, 0.3) a less confident one on bit 1, (0, 0) always class 1."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[20.0, 20.0], [0.0, 0.0]]))
        lin.bias.copy_(torch.tensor([-10.0, 0.0]))
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.3], [0.0, 0.0], [0.0, 0.0]])
    return Context(model=nn.Sequential(nn.Dropout(0.5), lin), task=Classification(2),
                   dataset=TinyData(x, torch.zeros(5), 2), labeled=torch.empty(0, dtype=torch.long),
                   unlabeled=torch.arange(5), labels=torch.empty(0, dtype=torch.long),
                   generator=torch.Generator().manual_seed(seed), **kw)


def test_crafted_through_a_model_consistent_masks_make_the_duplicate_worthless(seed):
    strategy = strategies.get("batchbald")
    log_probs = strategy.log_probs(crafted_ctx(seed), torch.arange(5))
    assert torch.equal(log_probs[0], log_probs[1])  # the same mask k for both copies in every pass k
    assert strategies.get("bald").select(crafted_ctx(seed), 2).sort().values.tolist() == [0, 1]
    assert strategy.select(crafted_ctx(seed), 2).tolist() == [0, 2]
    assert strategy.batch_scores_.shape == (2,)


def test_crafted_has_teeth_per_sample_masks_make_the_duplicate_look_new():
    # plain MC dropout draws a mask per sample: the copies disagree, and BatchBALD takes the second one
    ctx = crafted_ctx()
    torch.manual_seed(0)
    with dropout_active(ctx.model):
        out = stochastic_outputs(ctx.model, ctx.dataset.x, 20, 256)  # (K, N, C)
    log_probs = torch.log_softmax(out, 2).transpose(0, 1)
    assert batchbald_select(log_probs, 2, generator=torch.Generator())[0].sort().values.tolist() == [0, 1]


# ---- consistent MC dropout through the strategy -------------------------------------------------------------

def blob_ctx(model: nn.Module, n: int = 12, dim: int = 8, **kw) -> Context:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(7))
    return Context(model=model, task=Classification(3), dataset=TinyData(x, torch.zeros(n), 3),
                   labeled=torch.empty(0, dtype=torch.long), unlabeled=torch.arange(n),
                   labels=torch.empty(0, dtype=torch.long), generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),  # gets Dropout(p) before its last layer
    lambda: nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 16), nn.Dropout(0.5),
                          nn.Linear(16, 3)),  # its own two layers, masks through the whole forward
], ids=["inserted", "own_layers"])
def test_masks_are_the_same_for_every_batch(make):
    torch.manual_seed(0)
    model = make()
    strategy = strategies.get("batchbald", passes=5)
    one = strategy.log_probs(blob_ctx(model, batch_size=1), torch.arange(12))
    together = strategy.log_probs(blob_ctx(model, batch_size=64), torch.arange(12))
    reordered = strategy.log_probs(blob_ctx(model, batch_size=5), torch.arange(11, -1, -1))
    assert one.shape == (12, 5, 3)
    assert torch.allclose(one, together, atol=1e-6) and torch.allclose(one, reordered.flip(0), atol=1e-6)
    assert not torch.allclose(one[:, 0], one[:, 1])  # the passes differ


def test_a_builtin_classifier_runs_its_trunk_once_with_consistent_head_masks():
    torch.manual_seed(0)
    model = models.get("small_cnn", in_channels=1, num_classes=3, width=0.25, dropout=0.5)
    with torch.no_grad():
        model.head.weight.mul_(50)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    ctx = Context(model=model, task=Classification(3), dataset=TinyData(x, torch.zeros(6), 3),
                  labeled=torch.empty(0, dtype=torch.long), unlabeled=torch.arange(6),
                  labels=torch.empty(0, dtype=torch.long), generator=torch.Generator().manual_seed(0), batch_size=2)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(1))
    lp = strategies.get("batchbald", passes=4).log_probs(ctx, torch.arange(6))
    assert not calls  # trunk once per batch, then the head per pass (bayesian._split_at_dropout)
    ctx.batch_size, ctx.generator = 6, torch.Generator().manual_seed(0)
    assert torch.allclose(lp, strategies.get("batchbald", passes=4).log_probs(ctx, torch.arange(6)), atol=1e-5)
    assert torch.equal(bn.running_mean, before)


def test_leaves_the_model_and_the_global_rng_as_they_were():
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    rng = torch.get_rng_state()
    strategies.get("batchbald", passes=4).select(blob_ctx(model), 3)
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training and all(not m._forward_hooks for m in model.modules())


def test_p_zero_makes_every_pass_the_same_and_the_scores_zero():
    ctx = blob_ctx(nn.Sequential(nn.Linear(8, 3)))
    strategy = strategies.get("batchbald", p=0.0, passes=3)
    lp = strategy.log_probs(ctx, ctx.unlabeled)
    assert torch.equal(lp[:, 0], lp[:, 1])
    strategy.select(ctx, 3)
    assert torch.allclose(strategy.batch_scores_, torch.zeros(3, dtype=torch.float64), atol=1e-6)


def test_subset_scores_only_that_many_candidates():
    rows = []
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 3))
    model[1].register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    chosen = strategies.get("batchbald", passes=4, subset=5).select(blob_ctx(model, n=30), 2)
    assert sum(rows) == 5 * 4 and len(chosen) == 2


def test_memory_bound_refuses_naming_subset():
    with pytest.raises(ValueError, match=r"Strategy 'batchbald' would hold .* GiB .* for 30 candidates, over "
                                         r"max_memory_gb=1e-06; pass the strategy option subset="):
        strategies.get("batchbald", max_memory_gb=1e-6).select(blob_ctx(nn.Sequential(nn.Linear(8, 3)), n=30), 2)


def test_dense_outputs_are_refused():
    x = torch.randn(2, 1, 4, 4)
    ctx = Context(model=nn.Sequential(nn.Dropout(0.5), nn.Conv2d(1, 3, 1)), task=Classification(3),
                  dataset=TinyData(x, torch.zeros(2), 3), labeled=torch.empty(0, dtype=torch.long),
                  unlabeled=torch.arange(2), labels=torch.empty(0, dtype=torch.long), generator=torch.Generator())
    with pytest.raises(ValueError, match=r"needs \[N, C\] class outputs; the model returned \[3, 4, 4\] per sample"):
        strategies.get("batchbald", passes=2).select(ctx, 1)


@pytest.mark.parametrize("options, message", [
    ({"passes": 1}, "'passes' parameter of strategy 'batchbald' must be an int >= 2. Got 1. The default is 20."),
    ({"p": 1.0}, r"'p' parameter of strategy 'batchbald' must be a float in \[0, 1\). Got 1.0."),
    ({"num_samples": 0}, "'num_samples' parameter of strategy 'batchbald' must be an int >= 1. Got 0."),
    ({"num_samples": 10}, r"'num_samples' parameter of strategy 'batchbald' must be an int >= passes \(20\). Got 10."),
    ({"subset": 0}, "'subset' parameter of strategy 'batchbald' must be an int >= 1 or None"),
    ({"max_memory_gb": 0}, "'max_memory_gb' parameter of strategy 'batchbald' must be a float > 0. Got 0."),
    ({"acquisition": "bald"}, "'acquisition' parameter of strategy 'batchbald' must be a known option"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        strategies.get("batchbald", **options)


@pytest.mark.parametrize("call, message", [
    (lambda lp: batchbald_select(lp, 5, generator=torch.Generator()),
     r"'k' parameter of batchbald_select must be an int in \[0, 4\]. Got 5."),
    (lambda lp: batchbald_select(lp, 2, num_samples=2, generator=torch.Generator()),
     r"'num_samples' parameter of batchbald_select must be an int >= 3. Got 2. .*K = 3 passes."),
    (lambda lp: batchbald_select(lp, 2, chunk=0, generator=torch.Generator()),
     "'chunk' parameter of batchbald_select must be an int >= 1 or None. Got 0."),
    (lambda lp: batchbald_select(lp[0], 1, generator=torch.Generator()),
     r"batchbald_select needs float log-probabilities \[N, K, C\]; got a torch.float32 tensor of shape \[3, 2\]."),
])
def test_bad_arguments_of_the_pure_function_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(random_log_probs(4, 3, 2, 0))


def test_an_empty_batch():
    picks, scores = batchbald_select(random_log_probs(4, 3, 2, 0), 0, generator=torch.Generator())
    assert picks.shape == (0,) and scores.shape == (0,)


@pytest.mark.gpu
def test_on_the_gpu_equals_the_cpu():
    log_probs = random_log_probs(300, 10, 5, 0)
    cpu = batchbald_select(log_probs, 6, num_samples=100, generator=torch.Generator().manual_seed(0))
    gpu = batchbald_select(log_probs.cuda(), 6, num_samples=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cpu[0], gpu[0]) and torch.allclose(cpu[1], gpu[1], rtol=0, atol=1e-9)
