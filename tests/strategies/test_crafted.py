"""Each strategy on a case whose answer follows from its definition.

The "model" is nn.Identity over features that ARE the logits, so every output is known.
"""

import pytest
import torch
from torch import nn

from tinydata import TinyData
from todal import strategies
from todal.flavor import flavor_for
from todal.strategies import Context, top_k
from todal.strategies.uncertainty import entropy_score, least_confidence_score, margin_score
from todal.tasks import Classification


class Scale(nn.Module):
    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def forward(self, x):
        return self.s * x


LOGITS = torch.tensor([
    [5.0, 0.0, 0.0],   # 0: confident
    [0.0, 0.0, 0.0],   # 1: uniform, the most uncertain
    [2.0, 2.0, 0.0],   # 2: two-way tie, margin 0
    [4.0, 1.0, 0.0],   # 3
    [1.0, 0.5, 0.0],   # 4
])


def ctx_for(model, logits=LOGITS, unlabeled=None, **kw) -> Context:
    ds = TinyData(logits, torch.zeros(len(logits)), logits.shape[1])
    unl = torch.arange(len(logits)) if unlabeled is None else unlabeled
    return Context(model=model, task=Classification(logits.shape[1]), dataset=ds, labeled=torch.empty(0, dtype=torch.long),
                   unlabeled=unl, labels=torch.empty(0, dtype=torch.long), generator=torch.Generator().manual_seed(0), **kw)


def test_entropy_picks_the_uniform_prediction():
    assert strategies.get("entropy").select(ctx_for(nn.Identity()), 1).tolist() == [1]


def test_margin_picks_the_tie():
    # rows 1 and 2 both have margin 0; without row 1 the tie (row 2) comes first, then row 4
    ctx = ctx_for(nn.Identity(), unlabeled=torch.tensor([0, 2, 3, 4]))
    assert strategies.get("margin").select(ctx, 2).tolist() == [2, 4]


def test_least_confidence_ranks_by_top_probability():
    assert strategies.get("least_confidence").select(ctx_for(nn.Identity()), 2).tolist() == [1, 2]


def test_pure_scores_by_hand():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert torch.allclose(entropy_score(p), torch.tensor([0.6931472, 0.0]))
    assert torch.allclose(margin_score(p), torch.tensor([0.0, -1.0]))
    assert torch.allclose(least_confidence_score(p), torch.tensor([0.5, 0.0]))


def test_cod_in_logit_space_picks_the_largest_output_change():
    # model: x, previous: 0.5·x  ->  COD = 0.5·||x||: rows 0 (5.0) and 3 (4.12) move most
    ctx = ctx_for(nn.Identity(), previous=lambda: Scale(0.5), flavor=flavor_for("paper"))
    assert strategies.get("cod", space="logits").select(ctx, 2).tolist() == [0, 3]


def test_cod_default_first_cycle_picks_the_lowest_then_the_highest():
    ctx = ctx_for(nn.Identity(), previous=lambda: Scale(0.5), cycle=0)  # Context's flavor: "default"
    assert strategies.get("cod", space="logits").select(ctx, 1).tolist() == [1]
    later = ctx_for(nn.Identity(), previous=lambda: Scale(0.5), cycle=1)
    assert strategies.get("cod", space="logits").select(later, 1).tolist() == [0]


def test_cod_official_first_cycle_picks_the_lowest():
    ctx = ctx_for(nn.Identity(), previous=lambda: Scale(0.5), cycle=0, flavor=flavor_for("official"))
    assert strategies.get("cod", space="logits").select(ctx, 1).tolist() == [1]  # zero change
    later = ctx_for(nn.Identity(), previous=lambda: Scale(0.5), cycle=1, flavor=flavor_for("official"))
    assert strategies.get("cod", space="logits").select(later, 1).tolist() == [0]


def test_cod_reuses_last_cycles_outputs_so_a_cycle_is_one_pass():
    calls = []

    def previous():
        calls.append(1)
        return Scale(0.0)

    cod = strategies.get("cod", space="logits")
    cod.select(ctx_for(Scale(0.5), previous=previous, cycle=0), 1)
    assert len(calls) == 1
    # cycle 1: previous outputs come from the cache (Scale(0.5) outputs), previous() is not called
    ctx = ctx_for(nn.Identity(), previous=previous, cycle=1, unlabeled=torch.tensor([0, 2, 3, 4]))
    assert cod.select(ctx, 1).tolist() == [0]
    assert len(calls) == 1
    expected = 0.5 * LOGITS[[0, 2, 3, 4]].norm(dim=1)
    assert torch.allclose(cod.score(ctx, torch.tensor([0, 2, 3, 4])), expected)


def test_cod_cache_survives_state_dict_round_trip():
    cod = strategies.get("cod", space="logits")
    cod.select(ctx_for(Scale(0.5), previous=lambda: Scale(0.0), cycle=0), 1)
    fresh = strategies.get("cod", space="logits")
    fresh.load_state_dict(cod.state_dict())

    def no_previous():
        raise AssertionError("the cache should have been used")

    ctx = ctx_for(nn.Identity(), previous=no_previous, cycle=1)
    assert fresh.select(ctx, 1).tolist() == [0]


def test_cod_half_sq_ranks_like_l2_and_equals_half_its_square():
    ctx = ctx_for(nn.Identity(), previous=lambda: Scale(0.5))
    l2 = strategies.get("cod", measure="l2").score(ctx, torch.arange(5))
    hs = strategies.get("cod", measure="half_sq").score(ctx, torch.arange(5))
    assert torch.allclose(hs, 0.5 * l2 ** 2, atol=1e-7)


def test_emaod_compares_with_the_ema_teacher():
    ctx = ctx_for(nn.Identity(), ema_model=Scale(0.0))
    assert strategies.get("emaod", space="logits").select(ctx, 1).tolist() == [0]


def test_emaod_without_teacher_is_a_clear_error():
    with pytest.raises(ValueError, match="needs an EMA teacher"):
        strategies.get("emaod").select(ctx_for(nn.Identity()), 1)


def test_random_covers_the_pool_uniformly():
    counts = torch.zeros(5)
    for s in range(500):
        ctx = ctx_for(nn.Identity())
        ctx.generator = torch.Generator().manual_seed(s)
        counts[strategies.get("random").select(ctx, 1)] += 1
    assert counts.min() > 70  # 100 expected per sample


def test_top_k_is_stable_on_ties_and_puts_nan_last():
    s = torch.tensor([1.0, 3.0, 3.0, float("nan"), 2.0])
    assert top_k(s, 3).tolist() == [1, 2, 4]
    assert top_k(s, 2, largest=False).tolist() == [0, 4]


def test_scoring_subset_is_used_when_given():
    ctx = ctx_for(nn.Identity(), candidates=torch.tensor([3, 4]))
    assert strategies.get("entropy").select(ctx, 1).tolist() == [4]


def test_cod_cache_past_its_memory_bound_is_a_memory_mapped_file(tmp_path):
    """max_cache_gb=0: the outputs go to a .npy file beside the checkpoints; the scores are those of the
    in-memory cache, the checkpoint holds the file's path (not the outputs), and a reloaded strategy reads it."""
    def run(cod, cycle, model, previous):
        return cod.score(ctx_for(model, previous=previous, cycle=cycle, workdir=tmp_path), torch.arange(5))

    def no_previous():
        raise AssertionError("the cache should have been used")

    ram, disk = strategies.get("cod", space="logits"), strategies.get("cod", space="logits", max_cache_gb=0)
    for cod in (ram, disk):
        run(cod, 0, Scale(0.5), lambda: Scale(0.0))
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.npy"))
    assert files == ["cod-outputs-cycle0-rank0.npy"] and not list((tmp_path / "checkpoints").glob(".*tmp"))
    state = disk.state_dict()
    assert "outputs" not in state["cache"][0] and state["cache"][0]["file"].endswith("cycle0-rank0.npy")
    fresh = strategies.get("cod", space="logits", max_cache_gb=0)
    fresh.load_state_dict(state)
    expected = run(ram, 1, nn.Identity(), no_previous)
    assert torch.allclose(run(fresh, 1, nn.Identity(), no_previous), expected)
    assert torch.allclose(run(disk, 1, nn.Identity(), no_previous), expected)
    for c in (2, 3):  # only the previous cycle's file and this one's are kept
        run(disk, c, nn.Identity(), no_previous)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.npy")) == [
        "cod-outputs-cycle2-rank0.npy", "cod-outputs-cycle3-rank0.npy"]
