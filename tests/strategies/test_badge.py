"""BADGE: gradient embeddings by their factors, k-means++ seeding, D² sampling."""

import pytest
import torch
from torch import nn

from tinydata import TinyData
from todal import strategies
from todal.strategies import Context
from todal.strategies.badge import gradient_factors, kmeans_pp, sq_distances_to
from todal.tasks import Classification


def explicit_embedding(a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The N x (C·D) matrix BADGE's code builds: row i = a_i ⊗ h_i."""
    return (a[:, :, None] * h[:, None, :]).flatten(1)


def factors(seed: int, n: int = 12, c: int = 3, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(n, c, generator=g).mul(2).softmax(1)
    return gradient_factors(probs), torch.randn(n, d, generator=g)


def test_gradient_factors_by_hand():
    a = gradient_factors(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    assert torch.allclose(a, torch.tensor([[-0.3, 0.2, 0.1], [0.1, 0.3, -0.4]]))


def test_distance_identity_equals_the_explicit_outer_product(seed):
    a, h = factors(seed)
    explicit = torch.cdist(explicit_embedding(a, h).double(), explicit_embedding(a, h).double()) ** 2
    for center in range(len(a)):
        assert torch.allclose(sq_distances_to(a, h, center), explicit[center], rtol=1e-5, atol=1e-6)
        assert torch.allclose(sq_distances_to(a.double(), h.double(), center), explicit[center], atol=1e-10)
    # chunking changes nothing
    assert torch.allclose(sq_distances_to(a, h, 3, chunk=5), sq_distances_to(a, h, 3), rtol=1e-6)


def test_first_center_is_the_largest_gradient_norm(seed):
    a, h = factors(seed)
    largest = int(explicit_embedding(a, h).norm(dim=1).argmax())
    assert int(kmeans_pp(a, h, 1, torch.Generator().manual_seed(seed))[0]) == largest


def test_d2_sampling_follows_the_squared_distance():
    # 4 points; the first center is fixed (largest norm), the second is drawn ∝ D² to it
    a, h = factors(3, n=4)
    first = int(kmeans_pp(a, h, 1, torch.Generator())[0])
    p = sq_distances_to(a, h, first)
    p = p / p.sum()
    counts = torch.zeros(4)
    for s in range(1000):
        counts[kmeans_pp(a, h, 2, torch.Generator().manual_seed(s))[1]] += 1
    assert counts[first] == 0
    assert torch.allclose(counts / 1000, p.float(), atol=0.05)


def test_duplicates_still_give_distinct_picks():
    a, h = factors(0, n=1)
    picks = kmeans_pp(a.repeat(5, 1), h.repeat(5, 1), 5, torch.Generator().manual_seed(0))
    assert sorted(picks.tolist()) == [0, 1, 2, 3, 4]


def ctx_for(model, x, **kw) -> Context:
    ds = TinyData(x, torch.zeros(len(x)), 3)
    return Context(model=model, task=Classification(3), dataset=ds, labeled=torch.empty(0, dtype=torch.long),
                   unlabeled=torch.arange(len(x)), labels=torch.empty(0, dtype=torch.long),
                   generator=torch.Generator().manual_seed(0), **kw)


def test_strategy_first_pick_is_the_largest_gradient_norm(seed):
    # one linear layer: h = x, p = softmax(Wx + b)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(20, 4) * 2
    with torch.no_grad():
        g = explicit_embedding(gradient_factors(model(x).softmax(1)), x)
    chosen = strategies.get("badge").select(ctx_for(model, x), 5)
    assert int(chosen[0]) == int(g.norm(dim=1).argmax())


def test_confident_duplicates_are_not_picked_twice_before_the_rest():
    # samples 0-2 identical and uncertain; 3-5 spread out: 3 picks take one of 0-2 and two others
    model = nn.Sequential(nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[0.3, 0.3]] * 3 + [[4.0, -1.0], [-1.0, 4.0], [-3.0, -3.0]])
    chosen = strategies.get("badge").select(ctx_for(model, x), 3).tolist()
    assert len(set(chosen) & {0, 1, 2}) <= 1


def test_dense_outputs_are_refused():
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 3)

        def forward(self, x):
            return self.head(x)[:, :, None, None].expand(-1, -1, 2, 2)

    with pytest.raises(ValueError, match=r"'badge' needs \[N, C\] class outputs"):
        strategies.get("badge").select(ctx_for(Dense(), torch.randn(4, 2)), 1)


def test_has_no_options():
    with pytest.raises(ValueError, match="'k' parameter of strategy 'badge' must be a known option"):
        strategies.get("badge", k=3)
