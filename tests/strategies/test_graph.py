"""Sequential GCN (UncertainGCN, CoreGCN): the graph, the GCN, and the two selection rules."""

import math

import pytest
import torch
from torch import nn

from tinydata import TinyData
from todal import strategies
from todal.strategies import Context
from todal.strategies.graph import (GCN, CosineAdjacency, gcn_loss, normalized_adjacency, train_gcn,
                                    uncertain_gcn_score)
from todal.tasks import Classification


def test_adjacency_by_hand_on_three_points():
    # unit vectors e1, e2 and (e1 + e2)/sqrt2: cosines 0, 1/sqrt2, 1/sqrt2; columns sum to s, s, 2s
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    expected = torch.tensor([[1.0, 0.0, 0.5],
                             [0.0, 1.0, 0.5],
                             [1.0, 1.0, 1.0]])
    assert torch.allclose(normalized_adjacency(x), expected, atol=1e-6)


def test_low_rank_operator_equals_the_dense_adjacency(seed):
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(seed))
    y = torch.randn(40, 3, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.allclose(CosineAdjacency(x) @ y, normalized_adjacency(x) @ y, atol=1e-5)


def test_gcn_loss_by_hand():
    logits = torch.zeros(3)  # sigma = 1/2 everywhere
    labeled = torch.tensor([True, False, False])
    assert math.isclose(gcn_loss(logits, labeled, 1.2).item(), 2.2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(gcn_loss(logits, torch.zeros(3, dtype=torch.bool), 1.2).item(), 1.2 * math.log(2),
                        rel_tol=1e-6)


def two_clusters(n_lab: int = 20, n_unl: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lab = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.05 * torch.randn(n_lab, 4, generator=g)
    unl = torch.tensor([0.0, 1.0, 0.0, 0.0]) + 0.05 * torch.randn(n_unl, 4, generator=g)
    return torch.cat([lab, unl]).abs()


def test_gcn_separates_a_separable_labeled_unlabeled_graph(seed):
    labeled = torch.arange(60) < 20
    _, scores, hidden = train_gcn(two_clusters(seed=seed), labeled, seed=seed)
    assert scores[labeled].min() > 0.9 and scores[~labeled].max() < 0.1
    assert hidden.shape == (60, 128)


def test_gcn_training_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    a = train_gcn(two_clusters(), torch.arange(60) < 20, epochs=5, seed=7)[1]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, train_gcn(two_clusters(), torch.arange(60) < 20, epochs=5, seed=7)[1])


def test_gcn_module_shapes_and_authors_initialization():
    gcn = GCN(6, hidden=16)
    bound = 1 / math.sqrt(16)
    assert gcn.gc1.weight.abs().max() <= bound and gcn.gc1.bias.abs().max() <= bound
    logits, h = gcn(torch.randn(5, 6), torch.eye(5))
    assert logits.shape == (5,) and h.shape == (5, 16)


def test_uncertain_gcn_score_prefers_the_score_nearest_the_margin():
    s = torch.tensor([0.9, 0.12, 0.5, 0.0, 0.3])
    assert torch.allclose(uncertain_gcn_score(s, 0.1), -torch.tensor([0.8, 0.02, 0.4, 0.1, 0.2]))
    assert uncertain_gcn_score(s, 0.1).topk(2).indices.tolist() == [1, 3]


def clusters_ctx(unlabeled_feats: torch.Tensor, seed: int = 0, candidates=None) -> Context:
    x = torch.cat([two_clusters(20, 0, seed), unlabeled_feats])
    ds = TinyData(x, torch.zeros(len(x)), 3)
    labeled, unlabeled = torch.arange(20), torch.arange(20, len(x))
    return Context(model=nn.Sequential(nn.Linear(4, 3)), task=Classification(3), dataset=ds, labeled=labeled,
                   unlabeled=unlabeled, labels=ds.y[labeled], generator=torch.Generator().manual_seed(seed),
                   candidates=candidates)


def test_coregcn_on_task_features_picks_the_node_unlike_the_labeled_set():
    g = torch.Generator().manual_seed(0)
    near = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.05 * torch.randn(10, 4, generator=g).abs()
    far = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    ctx = clusters_ctx(torch.cat([near[:4], far, near[4:]]))
    chosen = strategies.get("coregcn", kcenter_features="task", epochs=2).select(ctx, 1)
    assert chosen.tolist() == [24]


def test_gcn_strategies_choose_only_from_the_drawn_subset():
    feats = torch.rand(30, 4, generator=torch.Generator().manual_seed(2))
    for name in ("uncertaingcn", "coregcn"):
        s = strategies.get(name, subset=6, epochs=3)
        chosen = s.select(clusters_ctx(feats), 4)
        subset = s.nodes_[:6]
        assert len(s.nodes_) == 26 and set(s.nodes_[6:].tolist()) == set(range(20))
        assert set(chosen.tolist()) <= set(subset.tolist())


def test_uncertaingcn_picks_the_subset_scores_nearest_the_margin():
    feats = torch.rand(15, 4, generator=torch.Generator().manual_seed(3))
    s = strategies.get("uncertaingcn", epochs=20, margin=0.4)
    ctx = clusters_ctx(feats)
    chosen = s.select(ctx, 3)
    x = ctx.dataset.x[s.nodes_]
    with torch.no_grad():
        adj = CosineAdjacency(x)
        scores = torch.sigmoid(s.gcn_(nn.functional.normalize(x, dim=1), adj)[0])[:15]
    expected = s.nodes_[:15][(scores - 0.4).abs().argsort()[:3]]
    assert chosen.tolist() == expected.tolist()


def test_gcn_state_dict_round_trip_restores_the_trained_gcn(tmp_path):
    s = strategies.get("coregcn", epochs=3)
    s.select(clusters_ctx(torch.rand(10, 4)), 2)
    torch.save(s.state_dict(), tmp_path / "s.pt")
    fresh = strategies.get("coregcn", epochs=3)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for a, b in zip(s.gcn_.state_dict().values(), fresh.gcn_.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(s.nodes_, fresh.nodes_)
    fresh.load_state_dict({})
    assert fresh.gcn_ is None and fresh.state_dict() == {}


@pytest.mark.parametrize("name, options, message", [
    ("uncertaingcn", {"margin": 1.5}, "'margin' parameter of strategy 'uncertaingcn' must be a float in \\[0, 1\\]"),
    ("uncertaingcn", {"subset": 0}, "'subset' parameter of strategy 'uncertaingcn' must be an int >= 1 or None"),
    ("coregcn", {"dropout": 1.0}, "'dropout' parameter of strategy 'coregcn' must be a float in \\[0, 1\\)"),
    ("coregcn", {"kcenter_features": "pixels"}, "'kcenter_features' parameter .* one of gcn, task"),
    ("coregcn", {"epochs": 0}, "'epochs' parameter of strategy 'coregcn' must be an int >= 1"),
    ("coregcn", {"lr": 0.0}, "'lr' parameter of strategy 'coregcn' must be a float > 0"),
    ("coregcn", {"lambda_loss": -1}, "'lambda_loss' parameter"),
    ("coregcn", {"hidden": 0}, "'hidden' parameter"),
    ("coregcn", {"margin": 0.1}, "'margin' parameter of strategy 'coregcn' must be a known option"),
])
def test_gcn_options_are_validated(name, options, message):
    with pytest.raises(ValueError, match=message):
        strategies.get(name, **options)
